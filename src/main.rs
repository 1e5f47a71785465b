//! `cutover`: parse the command line, set up logging, run the subcommand.

use std::process::ExitCode;

use cutover::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

/// mimalloc: thread-local free lists suit the worker-per-thread design and
/// measured a few percent less CPU per request than glibc's malloc (see
/// benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Two mimalloc options, set before the first allocation (see below):
///
/// - purge delay 0: mimalloc keeps freed pages for 1 s by default and only
///   returns them to the OS when the thread next uses its heap. An idle
///   worker does not, so the buffers of connections that just parked stayed
///   resident. Purging at once measured ~3.1 KiB per idle connection instead
///   of 4.2–9.3, and no more CPU under load.
/// - lazy arena commit: an eagerly committed first arena cost ~7 MiB of
///   resident memory at rest (benches/README.md, "Memory").
///
/// An operator's own `MIMALLOC_*` environment settings win.
extern "C" fn tune_allocator() {
    // Option numbers from mimalloc.h (v2 and v3 agree); the sys crate does
    // not name these two.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    for (option, env) in [
        (PURGE_DELAY, c"MIMALLOC_PURGE_DELAY"),
        (ARENA_EAGER_COMMIT, c"MIMALLOC_ARENA_EAGER_COMMIT"),
    ] {
        // SAFETY: `getenv` reads the environment with a NUL-terminated name;
        // this runs before `main`, on the only thread, so nothing writes
        // the environment meanwhile. (`std::env::var_os` would allocate,
        // which is what this must come before.)
        let operator_set = unsafe { !libc::getenv(env.as_ptr()).is_null() };
        if !operator_set {
            // SAFETY: `mi_option_set` stores an integer in mimalloc's option
            // table; 0 is a documented value of both options, and mimalloc
            // reads them when it next needs them.
            unsafe { libmimalloc_sys::mi_option_set(option, 0) };
        }
    }
}

/// The arena option only counts if it is set before mimalloc reserves its
/// first arena, which happens at the first allocation — and the Rust
/// runtime allocates before `main`. An `.init_array` entry runs earlier:
/// after the C library is ready, before any Rust code allocates.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR_EARLY: extern "C" fn() = tune_allocator;

fn main() -> ExitCode {
    #[cfg(not(target_os = "linux"))]
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
