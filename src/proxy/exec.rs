//! The executor hyper's background tasks (HTTP/2 streams) run on.

use std::future::Future;

/// Runs hyper's background tasks (HTTP/2 streams) on the worker's own
/// thread, so they may hold thread-local state.
#[derive(Clone, Copy, Debug)]
pub struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}
