//! The access log: one line per request, written by a thread of its own.
//! Requests hand finished lines to a bounded queue and never wait: when
//! the queue is full the line is dropped and counted. The writer batches
//! what is queued into one write, and reopens its file on SIGUSR1 (for
//! logrotate, as nginx does) or when a reload names another destination.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use crate::config::AccessLog as Destination;

enum Msg {
    Line(String),
    /// Open the destination again (same path, a new file after rotation).
    Reopen,
    /// Write here from now on.
    To(Destination),
    /// Say when everything before this is written.
    Sync(std::sync::mpsc::Sender<()>),
}

pub struct AccessLog {
    tx: SyncSender<Msg>,
    /// Lines dropped because the queue was full.
    dropped: AtomicU64,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl AccessLog {
    /// Start the writer thread with room for `buffer` lines, writing to
    /// `to`. A file that cannot be opened is an error here, at start;
    /// later (reopen, reload) it is logged and lines are dropped until a
    /// reopen succeeds.
    pub fn start(to: &Destination, buffer: usize) -> io::Result<AccessLog> {
        let out = open(to)?;
        let (tx, rx) = sync_channel(buffer);
        let first = to.clone();
        std::thread::Builder::new()
            .name("cutover-access-log".into())
            .spawn(move || writer(rx, first, out))?;
        Ok(AccessLog {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    /// Queue a line (with its newline); never blocks.
    pub fn write(&self, line: String) {
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Wait (up to `limit`) until every line queued so far is written:
    /// at shutdown, so that the last requests are in the log.
    pub fn sync(&self, limit: Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.control(Msg::Sync(tx));
        let _ = rx.recv_timeout(limit);
    }

    /// SIGUSR1: reopen the file.
    pub fn reopen(&self) {
        self.control(Msg::Reopen);
    }

    /// A reload's destination (a no-op when it is the same).
    pub fn set_destination(&self, to: &Destination) {
        self.control(Msg::To(to.clone()));
    }

    /// Control messages wait for room (the writer is draining): they come
    /// from signals and reloads, never from a request.
    fn control(&self, msg: Msg) {
        let _ = self.tx.send(msg);
    }
}

enum Out {
    Off,
    Stdout,
    File(File),
}

/// The mode of a log file this creates (less the umask): the lines hold
/// client addresses, paths and user agents, so others may not read them;
/// the group may (a log shipper's). A file that exists keeps its mode.
const FILE_MODE: u32 = 0o640;

fn open(to: &Destination) -> io::Result<Out> {
    Ok(match to {
        Destination::Off => Out::Off,
        Destination::Stdout => Out::Stdout,
        Destination::File(path) => Out::File(
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(FILE_MODE)
                .open(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?,
        ),
    })
}

/// How long the writer lets lines gather between two writes. Waking it
/// for every line would cost each request a futex wake-up and a write
/// (about as much as the rest of the request); asleep, it is not waited
/// on, and a request only queues its line. nginx's `flush=` does the same.
const GATHER: Duration = Duration::from_millis(20);

fn writer(rx: Receiver<Msg>, mut to: Destination, mut out: Out) {
    let mut batch = Vec::with_capacity(64 * 1024);
    // Block for the first message, then take whatever came while the
    // last batch was written and the writer slept.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        loop {
            while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
                match msg {
                    Msg::Line(line) => {
                        batch.extend_from_slice(line.as_bytes());
                        if batch.len() >= 256 * 1024 {
                            write_out(&mut out, &mut batch);
                        }
                    }
                    Msg::Reopen => {
                        write_out(&mut out, &mut batch);
                        out = reopened(&to);
                    }
                    Msg::Sync(done) => {
                        write_out(&mut out, &mut batch);
                        let _ = done.send(());
                    }
                    Msg::To(dest) => {
                        if dest != to {
                            write_out(&mut out, &mut batch);
                            to = dest;
                            out = reopened(&to);
                        }
                    }
                }
            }
            if batch.is_empty() {
                break; // nothing came while asleep: block again
            }
            write_out(&mut out, &mut batch);
            std::thread::sleep(GATHER);
        }
    }
}

fn reopened(to: &Destination) -> Out {
    open(to).unwrap_or_else(|e| {
        tracing::error!(error = %e, "access log: cannot open; lines are lost until it can");
        Out::Off
    })
}

fn write_out(out: &mut Out, batch: &mut Vec<u8>) {
    if batch.is_empty() {
        return;
    }
    let r = match out {
        Out::Off => Ok(()),
        Out::Stdout => {
            let mut s = io::stdout().lock();
            s.write_all(batch).and_then(|()| s.flush())
        }
        Out::File(f) => f.write_all(batch),
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "access log: write failed");
    }
    batch.clear();
}

/// The second a thread last wrote, in both formats: a worker writes many
/// lines in one second, and the calendar arithmetic is most of a line's
/// cost if done for each.
struct Second {
    unix: u64,
    /// `2026-12-02T02:50:00`
    rfc3339: String,
    /// `02/Dec/2026:02:50:00 +0000`
    local: String,
}

thread_local! {
    static SECOND: std::cell::RefCell<Option<Second>> = const { std::cell::RefCell::new(None) };
}

fn with_second<R>(unix: u64, f: impl FnOnce(&Second) -> R) -> R {
    SECOND.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|s| s.unix != unix) {
            *cell = Some(second(unix));
        }
        f(cell.as_ref().expect("set above"))
    })
}

fn second(unix: u64) -> Second {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // `YYYY-MM-DDTHH:MM:SSZ`
    let mut s =
        humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(unix))
            .to_string();
    s.pop();
    let month = s[5..7].parse::<usize>().unwrap_or(1).clamp(1, 12);
    let local = format!(
        "{}/{}/{}:{} +0000",
        &s[8..10],
        MONTHS[month - 1],
        &s[0..4],
        &s[11..19]
    );
    Second {
        unix,
        rfc3339: s,
        local,
    }
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Appends `2026-12-02T02:50:00.123Z`.
pub fn push_rfc3339(out: &mut String, t: SystemTime) {
    let d = since_epoch(t);
    with_second(d.as_secs(), |s| out.push_str(&s.rfc3339));
    let ms = d.subsec_millis();
    out.push('.');
    out.push(char::from(b'0' + (ms / 100) as u8));
    out.push(char::from(b'0' + (ms / 10 % 10) as u8));
    out.push(char::from(b'0' + (ms % 10) as u8));
    out.push('Z');
}

/// Appends nginx's `$time_local` in UTC: `02/Dec/2026:02:50:00 +0000`.
pub fn push_time_local(out: &mut String, t: SystemTime) {
    with_second(since_epoch(t).as_secs(), |s| out.push_str(&s.local));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_both_formats() {
        let text = |t: SystemTime| {
            let (mut a, mut b) = (String::new(), String::new());
            push_rfc3339(&mut a, t);
            push_time_local(&mut b, t);
            (a, b)
        };
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_180_400_250);
        assert_eq!(
            text(t),
            (
                "2026-12-02T03:00:00.250Z".into(),
                "02/Dec/2026:03:00:00 +0000".into()
            )
        );
        // The same second again (from the cache), then the next.
        let t = t + Duration::from_millis(749);
        assert_eq!(text(t).0, "2026-12-02T03:00:00.999Z");
        let t = t + Duration::from_millis(1);
        assert_eq!(
            text(t),
            (
                "2026-12-02T03:00:01.000Z".into(),
                "02/Dec/2026:03:00:01 +0000".into()
            )
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_a_file_gets_every_line_written() {
        let dir = tempfile_dir();
        let path = dir.join("access.log");
        let log = AccessLog::start(&Destination::File(path.clone()), 16).unwrap();
        for i in 0..10_000 {
            log.write(format!("line {i}\n"));
        }
        let dropped = log.dropped();
        // The writer keeps up with some, not all, of 10,000 at once: it
        // takes at most 16 and then lets more gather for 20 ms.
        assert!(dropped > 0 && dropped < 10_000, "{dropped} dropped");
        // Rotation: the old file moves away, SIGUSR1 reopens the path.
        let wait = |p: &std::path::Path, n: usize| {
            for _ in 0..500 {
                let got = std::fs::read_to_string(p).unwrap_or_default();
                if got.lines().count() >= n {
                    return got;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("{} lines never reached {}", n, p.display());
        };
        let written = wait(&path, (10_000 - dropped) as usize);
        assert_eq!(written.lines().count() as u64, 10_000 - dropped);
        std::fs::rename(&path, dir.join("access.log.1")).unwrap();
        log.reopen();
        log.write("after\n".into());
        assert_eq!(wait(&path, 1), "after\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_log_file_is_created_readable_by_its_owner_and_group_only_also_on_reopen() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir();
        let path = dir.join("access.log");
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // What the kernel takes away from every mode a process asks for.
        let umask = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|m| u32::from_str_radix(m.trim(), 8).unwrap())
            .unwrap();
        let log = AccessLog::start(&Destination::File(path.clone()), 16).unwrap();
        assert_eq!(mode(&path), 0o640 & !umask);
        // Rotated away, reopened (SIGUSR1): the new file is made the same way.
        std::fs::rename(&path, dir.join("access.log.1")).unwrap();
        log.reopen();
        log.write("after\n".into());
        log.sync(Duration::from_secs(5));
        assert_eq!(mode(&path), 0o640 & !umask);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "cutover-access-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
