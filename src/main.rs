//! `cutover`: parse the command line, set up logging, run the subcommand.

use std::alloc::{GlobalAlloc, Layout};
use std::io::IsTerminal;
use std::process::ExitCode;

use cutover::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

/// mimalloc: thread-local free lists suit the worker-per-thread design
/// (measured against glibc's malloc: benches/README.md).
#[global_allocator]
static GLOBAL: Allocator = Allocator;

/// `mimalloc::MiMalloc` asks mimalloc for an *aligned* block on every call.
/// For blocks over 1 KiB whose size is not a power of two (a `HeaderMap`'s
/// entries, say) that takes mimalloc's over-allocating path, slower than
/// its plain one, three times per proxied request. Like
/// std's `System` allocator, this asks for a plain block whenever malloc's
/// own alignment guarantee covers the layout, and leaves the rest to
/// `MiMalloc`.
struct Allocator;

/// What mimalloc, like malloc, aligns every block of at least this size to
/// (`MI_MAX_ALIGN_SIZE`; smaller blocks to their size rounded to a word).
const MALLOC_ALIGN: usize = 16;

fn plain(align: usize, size: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

// SAFETY: every block comes from mimalloc and goes back to it: `mi_malloc`,
// `mi_zalloc` and `mi_realloc` return blocks aligned to `MALLOC_ALIGN`
// (or, below that size, to the size's own power of two), which `plain`
// checks covers the layout; `mi_free` (via `MiMalloc::dealloc`) takes
// blocks from any of mimalloc's allocation calls, aligned or not; and
// everything else is `MiMalloc`'s own implementation.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            unsafe { libmimalloc_sys::mi_malloc(layout.size()).cast() }
        } else {
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            unsafe { libmimalloc_sys::mi_zalloc(layout.size()).cast() }
        } else {
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            unsafe { libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast() }
        } else {
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

/// Two mimalloc options, set before the first allocation (see below):
///
/// - purge delay [`PURGE_DELAY_MS`]: freed pages go back to the OS after
///   this long. mimalloc's 1 s default kept the buffers of connections that
///   just parked resident, because it purges only when a thread next calls
///   into it and an idle worker does not; purging at once instead cost
///   page faults under load, as hyper's 8 KiB read buffers came and went
///   (figures: benches/README.md). A short delay with [`purge_thread`]
///   doing the purging gets both.
/// - lazy arena commit: an eagerly committed first arena stays resident
///   at rest, used or not.
///
/// And on Linux, no transparent huge pages for this process (as mimalloc's
/// `MIMALLOC_ALLOW_THP=0` does; `prctl` directly, because mimalloc may
/// read its options before this runs): where the host's THP setting is
/// `always`, each 2 MiB region of an arena the process touches at all
/// becomes resident whole. They saved no CPU a request measurable here,
/// and cost several MiB at rest (benches/README.md).
///
/// An operator's own `MIMALLOC_*` environment settings win.
extern "C" fn tune_allocator() {
    // Option numbers from mimalloc.h (v2 and v3 agree); the sys crate does
    // not name these two.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    for (option, env, value) in [
        (PURGE_DELAY, c"MIMALLOC_PURGE_DELAY", PURGE_DELAY_MS),
        (ARENA_EAGER_COMMIT, c"MIMALLOC_ARENA_EAGER_COMMIT", 0),
    ] {
        // SAFETY: `getenv` reads the environment with a NUL-terminated name;
        // this runs before `main`, on the only thread, so nothing writes
        // the environment meanwhile. (`std::env::var_os` would allocate,
        // which is what this must come before.)
        let operator_set = unsafe { !libc::getenv(env.as_ptr()).is_null() };
        if !operator_set {
            // SAFETY: `mi_option_set` stores an integer in mimalloc's option
            // table; both values are in the documented ranges, and mimalloc
            // reads the options when it next needs them.
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    }
    #[cfg(target_os = "linux")]
    // SAFETY: as above, `getenv` with a NUL-terminated name before `main`;
    // `PR_SET_THP_DISABLE` takes integer arguments and changes only how the
    // kernel backs this process's memory (its children inherit it).
    unsafe {
        if libc::getenv(c"MIMALLOC_ALLOW_THP".as_ptr()).is_null() {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

/// See [`tune_allocator`].
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// Purges what has waited [`PURGE_DELAY_MS`], every 250 ms, for the whole
/// process: mimalloc's arenas are shared by all threads, so this one
/// thread's call frees the pages idle workers left behind.
fn purge_thread() {
    let spawned = std::thread::Builder::new()
        .name("cutover-purge".into())
        .spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_millis(250));
            // SAFETY: `mi_collect` may be called from any thread at any
            // time; `false` asks for the ordinary, non-blocking collection.
            unsafe { libmimalloc_sys::mi_collect(false) };
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no allocator purge thread; idle memory is returned later");
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

/// The state file's lock the process this one replaces handed over
/// (`cutover upgrade`): a descriptor this process owns from here on.
/// Taken before anything else runs, and the variable removed, so that
/// nothing else can claim the descriptor.
fn handed_over_lock() -> Option<std::fs::File> {
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};
    let var = std::env::var(cutover::handover::STATE_LOCK_FD).ok();
    std::env::remove_var(cutover::handover::STATE_LOCK_FD);
    let fd: RawFd = var?.parse().ok().filter(|fd| *fd > 2)?;
    // An fd that is not open (the variable outlived its descriptor, say
    // in a shell started by a daemon) is not adopted.
    std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).ok()?;
    // SAFETY: the descriptor is open (checked just above), and nothing in
    // this process owns it: the parent mapped it here for us alone, named
    // it in the variable removed above, and no other code reads that
    // variable. From here the `File` is its only owner.
    Some(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn main() -> ExitCode {
    #[cfg(not(target_os = "linux"))]
    tune_allocator();
    let handed_over_lock = handed_over_lock();
    let cli = Cli::parse_or_exit();
    let filter = EnvFilter::try_from_env("CUTOVER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log file, a pipe or the
    // journal gets plain text.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    purge_thread();
    cli.execute(handed_over_lock)
}
