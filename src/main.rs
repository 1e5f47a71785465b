//! `cutover`: parse the command line, set up logging, run the subcommand.

use std::process::ExitCode;

use cutover::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

/// mimalloc: thread-local free lists suit the worker-per-thread design and
/// measured a few percent less CPU per request than glibc's malloc (see
/// benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
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
