//! The access log: one line per request, written by a thread of its own.
//! Requests hand finished lines to a bounded queue and never wait: when
//! the queue is full the line is dropped and counted. The writer batches
//! what is queued into one write, and reopens its file on SIGUSR1 (for
//! logrotate, as nginx does) or when a reload names another destination.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
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

fn open(to: &Destination) -> io::Result<Out> {
    Ok(match to {
        Destination::Off => Out::Off,
        Destination::Stdout => Out::Stdout,
        Destination::File(path) => Out::File(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?,
        ),
    })
}

fn writer(rx: Receiver<Msg>, mut to: Destination, mut out: Out) {
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Everything queued now goes out in one write.
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
        write_out(&mut out, &mut batch);
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

/// `2026-12-02T02:50:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// nginx's `$time_local` in UTC: `02/Dec/2026:02:50:00 +0000`.
pub fn time_local(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    // `YYYY-MM-DDTHH:MM:SSZ`
    let s = humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + t).to_string();
    let month = s[5..7].parse::<usize>().unwrap_or(1).clamp(1, 12);
    format!(
        "{}/{}/{}:{} +0000",
        &s[8..10],
        MONTHS[month - 1],
        &s[0..4],
        &s[11..19]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_both_formats() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_180_400_250);
        assert_eq!(rfc3339(t), "2026-12-02T03:00:00.250Z");
        assert_eq!(time_local(t), "02/Dec/2026:03:00:00 +0000");
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
        // The writer keeps up with some, not all, of 10,000 at once.
        assert!(dropped < 10_000);
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
