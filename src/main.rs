//! `cutover`: parse the command line, set up logging, run the subcommand.

use std::process::ExitCode;

use cutover::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

/// mimalloc: thread-local free lists suit the worker-per-thread design and
/// measured a few percent less CPU per request than glibc's malloc (see
/// benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc keeps freed pages for 1 s by default and only returns them to
/// the OS when the thread next uses its heap — an idle worker does not, so
/// the buffers of connections that just parked stayed resident (4.2 to 9.3
/// KiB per idle connection in benches/README.md, run to run). Purging at
/// once brought that to ~3.1 KiB and measured less CPU under load, not
/// more. Lazy arena commit would save more, but only takes effect from the
/// environment (`MIMALLOC_ARENA_EAGER_COMMIT=0`) before the first
/// allocation; setting it here is for arenas made later. An operator's own
/// `MIMALLOC_*` environment settings win.
fn tune_allocator() {
    // Option numbers from mimalloc.h (v2 and v3 agree); the sys crate does
    // not name these two.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    for (option, env) in [
        (PURGE_DELAY, "MIMALLOC_PURGE_DELAY"),
        (ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT"),
    ] {
        if std::env::var_os(env).is_none() {
            // SAFETY: `mi_option_set` stores an integer in mimalloc's option
            // table (atomically); 0 is a documented value of both options,
            // and the allocator reads them afresh on every use.
            unsafe { libmimalloc_sys::mi_option_set(option, 0) };
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse_or_exit();
    let filter = EnvFilter::try_from_env("CUTOVER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    cli.execute()
}
