//! The runtime state file: what operators changed at runtime —
//! live colour, split and rules per app — plus the epoch and the recent
//! history. Written atomically on every change: a temporary file in the
//! same directory, fsync, rename over the old file (an exchange, on Linux:
//! see [`write_atomically`]), fsync of the directory. A crash leaves
//! either the old file or the new one, never a mix.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::route::AppState;

/// History entries kept in the file and served by `GET /v1/history`.
pub const HISTORY_LIMIT: usize = 100;

/// The file's format version; a file of another version is refused.
const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    pub format: u32,
    /// Bumped by every change; the snapshot carries the same number.
    pub epoch: u64,
    /// Every app's runtime state. Entries of apps no longer in the config
    /// are kept (and ignored) so that re-adding the app restores them.
    pub apps: BTreeMap<String, AppState>,
    /// Oldest first, at most [`HISTORY_LIMIT`].
    pub history: History,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryEntry {
    /// RFC 3339, UTC.
    pub time: String,
    /// The epoch this change produced; one change may touch several apps.
    pub epoch: u64,
    /// Who: the name of the admin token the change was made with
    /// (`default` for `token_file`/`token_env`), `local` when no token is
    /// configured; `reload` (SIGHUP) and `start` for the daemon's own.
    /// Never what the client says it is.
    pub actor: String,
    /// Why, as the client gave it (`x-cutover-reason`, `--reason`):
    /// printable ASCII, at most 200 characters. Absent in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub app: String,
    /// `flip`, `shift`, `rules`, `rollback`, `reload`.
    pub kind: String,
    /// The change was forced past a health check.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
    pub before: AppState,
    pub after: AppState,
}

impl HistoryEntry {
    /// What the change changed, in words ([`super::changes::describe`]).
    pub fn changes(&self) -> Vec<String> {
        super::changes::describe(&self.before, &self.after)
    }
}

impl Default for StateFile {
    fn default() -> Self {
        StateFile {
            format: FORMAT,
            epoch: 0,
            apps: BTreeMap::new(),
            history: History::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: cannot read: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "state file {path}: corrupt: {message} (fix or remove it, or start with --reset-state)"
    )]
    Corrupt { path: PathBuf, message: String },
    #[error("state file {path}: cannot write: {source}")]
    Write { path: PathBuf, source: io::Error },
}

impl StateFile {
    /// Read the state file; `Ok(None)` when it does not exist yet.
    pub fn load(path: &Path) -> Result<Option<StateFile>, StateError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let corrupt = |message: String| StateError::Corrupt {
            path: path.to_path_buf(),
            message,
        };
        let state: StateFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if state.format != FORMAT {
            return Err(corrupt(format!(
                "format {} is not the supported format {FORMAT}",
                state.format
            )));
        }
        for (name, app) in &state.apps {
            if !(0.0..=100.0).contains(&app.standby_percent) {
                return Err(corrupt(format!(
                    "apps.{name}.standby_percent: {} is out of range",
                    app.standby_percent
                )));
            }
            if let Err(errors) = crate::config::compile_rules(&format!("apps.{name}"), &app.rules) {
                return Err(corrupt(errors.join("; ")));
            }
        }
        Ok(Some(state))
    }

    /// Write atomically: temp file, fsync, rename, fsync the directory.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        self.save_next(path, self.epoch, &self.apps, &[])
    }

    /// Write the state that `self` becomes with `apps`, `epoch` and the
    /// history entries `new` (oldest first), without changing `self`: a
    /// change is made in memory only once it is on disk, and nothing has
    /// to copy the whole history first.
    pub fn save_next(
        &self,
        path: &Path,
        epoch: u64,
        apps: &BTreeMap<String, AppState>,
        new: &[HistoryEntry],
    ) -> Result<(), StateError> {
        let new_lines: Vec<Box<[u8]>> = new.iter().map(line).collect();
        let total = self.history.len() + new.len();
        let lines = self
            .history
            .lines
            .iter()
            .chain(&new_lines)
            .skip(total.saturating_sub(HISTORY_LIMIT))
            .map(|l| &l[..]);
        let bytes = encode(epoch, apps, lines, total.min(HISTORY_LIMIT)).map_err(|e| {
            StateError::Write {
                path: path.to_path_buf(),
                source: io::Error::other(e),
            }
        })?;
        write_atomically(path, &bytes)
    }

    pub fn push_history(&mut self, entry: HistoryEntry) {
        self.history.push(entry);
    }
}

/// The file's text: compact JSON with one line per top-level field and
/// one line per history entry, so that it stays readable (and diffable)
/// while costing little to write on every change. [`StateFile::load`]
/// reads any layout, the pretty-printed one of earlier versions included.
///
/// The last line is padded with spaces to a whole number of [`BLOCK`]s
/// (JSON allows trailing whitespace). The file's length then changes only
/// when the state crosses a block, not by a byte or two at most changes:
/// the `fdatasync` of a change has no new length to write, and a state a
/// few bytes shorter does not cut the file, which would give up the room
/// reserved for it (see [`open_scratch`]; a state a block shorter does).
fn encode<'a>(
    epoch: u64,
    apps: &BTreeMap<String, AppState>,
    history: impl Iterator<Item = &'a [u8]>,
    entries: usize,
) -> serde_json::Result<Vec<u8>> {
    // A history line is about 200 bytes: one allocation, no regrowth.
    let mut out = Vec::with_capacity(256 + 128 * apps.len() + 256 * entries);
    out.extend_from_slice(
        format!("{{\"format\":{FORMAT},\"epoch\":{epoch},\n\"apps\":").as_bytes(),
    );
    serde_json::to_writer(&mut out, apps)?;
    out.extend_from_slice(b",\n\"history\":[");
    for (i, l) in history.enumerate() {
        out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
        out.extend_from_slice(l);
    }
    out.extend_from_slice(b"\n]}");
    let end = (out.len() + 1).next_multiple_of(BLOCK);
    out.resize(end - 1, b' ');
    out.push(b'\n');
    Ok(out)
}

/// The unit the state file is padded to: a page, and ext4's, XFS's and
/// most disks' block. The disk writes whole blocks anyway.
const BLOCK: usize = 4096;

/// A history entry as one line of JSON.
fn line(entry: &HistoryEntry) -> Box<[u8]> {
    // Strings, numbers, enums and finite floats (validated): serde_json
    // fails only on non-string map keys or a type's own error, neither of
    // which a history entry has.
    serde_json::to_vec(entry)
        .expect("a history entry always serializes")
        .into_boxed_slice()
}

/// The recent changes, oldest first, at most [`HISTORY_LIMIT`]; each is
/// kept with its line of JSON too, since entries never change once made:
/// writing the file after a change encodes only the new entries (a full
/// history re-encoded dominated a flip's cost).
#[derive(Debug, Clone, Default)]
pub struct History {
    entries: VecDeque<HistoryEntry>,
    lines: VecDeque<Box<[u8]>>,
}

impl History {
    pub fn push(&mut self, entry: HistoryEntry) {
        self.lines.push_back(line(&entry));
        self.entries.push_back(entry);
        if self.entries.len() > HISTORY_LIMIT {
            self.entries.pop_front();
            self.lines.pop_front();
        }
    }

    /// Oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &HistoryEntry> {
        self.entries.iter()
    }

    pub fn last(&self) -> Option<&HistoryEntry> {
        self.entries.back()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl PartialEq for History {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Serialize for History {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(&self.entries)
    }
}

impl<'de> Deserialize<'de> for History {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<HistoryEntry>::deserialize(d)?;
        let mut history = History::default();
        for e in entries {
            history.push(e);
        }
        Ok(history)
    }
}

/// Temp file in the same directory, fsync, rename over `path`, fsync the
/// directory: a crash leaves the old file or the new one, never a mix.
///
/// The temp file is kept between writes. On Linux the rename is an
/// exchange (`renameat2(RENAME_EXCHANGE)`): the new state takes `path`'s
/// name and the previous one takes the temp name, to be overwritten by
/// the next change. No file is created or deleted per change, which cuts
/// the kernel's work for the write substantially; where
/// the filesystem cannot exchange, or `path` does not exist yet, it is a
/// plain rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tmp_file_of(dir, path);
    let (mut f, had, created) = open_scratch(&tmp, bytes.len() as u64).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    // Cut only what is left of a longer file. An ftruncate to the length
    // the file already has still dirties its inode, which costs
    // `sync_data` a second synchronous write.
    if had > bytes.len() as u64 {
        f.set_len(bytes.len() as u64).map_err(err)?;
    }
    f.sync_data().map_err(err)?;
    drop(f);
    if !exchange(&tmp, path).map_err(err)? {
        fs::rename(&tmp, path).map_err(err)?;
    } else if created {
        // The previous state, made by someone else perhaps, now has the
        // temp name: private too from now on, not only from the next write.
        let _ = open_private(&tmp);
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

/// The temp file, to be overwritten with `len` bytes, and its length:
/// not truncated, so it keeps its blocks, and cut to the new length after
/// the write if it was longer. Unless it is not ours alone to overwrite —
/// a symbolic link, or a file with another name too (a hard link someone
/// made to an old state): then that name is removed and a new file made.
///
/// A file that must grow past the blocks it has starts again from empty,
/// with room reserved ([`reserve`]). Otherwise the state file and its temp
/// file, growing by turns, get their blocks by turns, one here and one
/// there, and every change's `fdatasync` is several scattered device
/// writes where one would do.
///
/// The state says how traffic is routed and who changed it: it is the
/// owner's alone. A file made here is mode 0600 (less, by the umask); one
/// found with more (an earlier version's, or one an operator made) is
/// set to 0600 as it is reused — unless it has other names too. The third
/// value: the file was made now.
fn open_scratch(tmp: &Path, len: u64) -> io::Result<(File, u64, bool)> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let opened = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp);
    let mut exists = true;
    match opened {
        Ok(f) => {
            let meta = f.metadata()?;
            if meta.nlink() == 1 {
                make_private(&f, &meta)?;
                // `blocks` counts 512-byte units, the reserved ones too.
                if meta.len() >= len || meta.blocks() * 512 >= len {
                    return Ok((f, meta.len(), false));
                }
                f.set_len(0)?;
                reserve(&f, len);
                return Ok((f, 0, false));
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => exists = false,
        Err(e) => return Err(e),
    }
    if exists {
        fs::remove_file(tmp)?;
    }
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE)
        .open(tmp)?;
    reserve(&f, len);
    Ok((f, 0, true))
}

/// The state file's and its temp file's mode.
const PRIVATE: u32 = 0o600;

/// `tmp`'s path, as [`write_atomically`] names it.
fn tmp_file_of(dir: &Path, path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    dir.join(name)
}

/// Set an open file of one name to [`PRIVATE`] if it allows more; the
/// common case, already private, costs nothing but the `fstat` made anyway.
fn make_private(f: &File, meta: &fs::Metadata) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if meta.mode() & 0o7777 & !PRIVATE != 0 {
        f.set_permissions(fs::Permissions::from_mode(PRIVATE))?;
    }
    Ok(())
}

/// [`make_private`] by name (never through a symbolic link, never a file
/// with other names).
fn open_private(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = f.metadata()?;
    if meta.nlink() == 1 {
        make_private(&f, &meta)?;
    }
    Ok(())
}

/// Reserve blocks for an empty file about to take `len` bytes, in one run
/// where the filesystem can: room for the state to double, in steps of
/// [`RESERVE`], without changing the file's length. Best effort: where
/// the filesystem cannot, the file gets its blocks as it is written.
fn reserve(f: &File, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{fallocate, FallocateFlags};
        let room = (2 * len).max(1).next_multiple_of(RESERVE);
        let _ = fallocate(f, FallocateFlags::KEEP_SIZE, 0, room);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, len);
}

/// The steps in which [`reserve`] sets room aside: a full history of a
/// few apps without rules is ~20 KiB.
const RESERVE: u64 = 64 * 1024;

/// Swap the names `a` and `b` atomically. `Ok(false)` when this system or
/// filesystem cannot, or `b` does not exist: the caller renames instead.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<bool> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    use rustix::io::Errno;
    match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP | Errno::PERM) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> io::Result<bool> {
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Color;

    fn app(live: Color, p: f64) -> AppState {
        AppState {
            live,
            standby_percent: p,
            rules: vec![],
            runtime_rules: false,
            servers: Default::default(),
        }
    }

    #[test]
    fn a_saved_state_loads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        assert_eq!(StateFile::load(&path).unwrap(), None);
        let mut s = StateFile {
            epoch: 3,
            ..Default::default()
        };
        s.apps.insert("shop".into(), app(Color::Green, 12.5));
        s.save(&path).unwrap();
        assert_eq!(StateFile::load(&path).unwrap(), Some(s));
        assert!(!dir.path().join("s.json.tmp").exists());
    }

    #[test]
    fn the_state_file_and_its_temp_file_are_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let tmp = dir.path().join("s.json.tmp");
        let mut s = StateFile::default();
        s.save(&path).unwrap();
        assert_eq!(mode(&path), 0o600, "a new state file");
        s.epoch = 1;
        s.save(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        if tmp.exists() {
            assert_eq!(mode(&tmp), 0o600, "a new temp file");
        }
        // Files an earlier version (or an operator) left readable to all.
        for p in [&path, &tmp] {
            fs::write(p, "{}").unwrap();
            fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
        }
        s.epoch = 2;
        s.save(&path).unwrap();
        assert_eq!(mode(&path), 0o600, "a reused temp file");
        assert_eq!(StateFile::load(&path).unwrap().unwrap().epoch, 2);
        if tmp.exists() {
            // The previous state file, under the temp name.
            s.epoch = 3;
            s.save(&path).unwrap();
            assert_eq!((mode(&path), mode(&tmp)), (0o600, 0o600));
        }
        // Only the temp file made anew: the old state it swaps with too.
        fs::remove_file(&tmp).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        s.epoch = 4;
        s.save(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        if tmp.exists() {
            assert_eq!(mode(&tmp), 0o600, "the previous state, swapped out");
        }
    }

    #[test]
    fn each_write_replaces_the_file_whole_and_the_temp_file_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let tmp = dir.path().join("s.json.tmp");
        // A longer leftover in the temp file (a crash mid-write) is cut off.
        fs::write(&tmp, "x".repeat(100_000)).unwrap();
        let mut s = StateFile::default();
        s.apps.insert("shop".into(), app(Color::Green, 12.5));
        for i in 0..30 {
            s.epoch = i;
            s.push_history(entry(i));
            s.save(&path).unwrap();
            assert_eq!(
                StateFile::load(&path).unwrap().as_ref(),
                Some(&s),
                "write {i}"
            );
        }
        if cfg!(target_os = "linux") {
            // The previous version is the next write's temp file.
            let previous = StateFile::load(&tmp).unwrap().unwrap();
            assert_eq!(previous.epoch, 28);
        }
        // A shorter state after longer ones loads as written.
        let short = StateFile::default();
        short.save(&path).unwrap();
        assert_eq!(StateFile::load(&path).unwrap(), Some(short));
    }

    #[test]
    fn a_hard_link_to_an_old_state_and_a_linked_temp_file_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let tmp = dir.path().join("s.json.tmp");
        let mut s = StateFile::default();
        let mut save = |epoch| {
            s.epoch = epoch;
            s.save(&path).unwrap();
            assert_eq!(StateFile::load(&path).unwrap().unwrap().epoch, epoch);
        };
        save(1);
        save(2);
        // An operator keeps the live state under another name.
        let backup = dir.path().join("backup.json");
        fs::hard_link(&path, &backup).unwrap();
        for epoch in 3..6 {
            save(epoch);
        }
        assert_eq!(StateFile::load(&backup).unwrap().unwrap().epoch, 2);
        // A temp file that is a symbolic link is replaced, not followed.
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        save(6);
        save(7);
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
    }

    #[test]
    fn a_corrupt_state_is_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        fs::write(&path, "{\"format\": 1, \"epoch\": ").unwrap();
        let e = StateFile::load(&path).unwrap_err().to_string();
        assert!(e.contains("s.json") && e.contains("corrupt"), "{e}");
        fs::write(&path, r#"{"format":1,"epoch":1,"apps":{"a":{"live":"red","standby_percent":0,"rules":[]}},"history":[]}"#).unwrap();
        assert!(StateFile::load(&path).is_err());
    }

    // `u64::is_multiple_of` is newer than the crate's rust-version (1.85).
    #[allow(clippy::manual_is_multiple_of)]
    fn entry(epoch: u64) -> HistoryEntry {
        HistoryEntry {
            time: "2026-11-26T12:00:00Z".into(),
            epoch,
            actor: "local".into(),
            reason: (epoch % 3 == 0).then(|| format!("reason {epoch}")),
            app: "a".into(),
            kind: "flip".into(),
            forced: epoch % 2 == 0,
            before: app(Color::Blue, 0.0),
            after: app(Color::Green, 2.5),
        }
    }

    #[test]
    fn history_keeps_the_last_hundred() {
        let mut s = StateFile::default();
        for i in 0..150 {
            s.push_history(entry(i));
        }
        assert_eq!(s.history.len(), HISTORY_LIMIT);
        assert_eq!(s.history.iter().next().unwrap().epoch, 50);
    }

    #[test]
    fn save_next_writes_what_the_state_becomes_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        for (had, added) in [
            (0, 1),
            (10, 3),
            (99, 1),
            (100, 2),
            (98, 5),
            (3, 150),
            (130, 1),
            (250, 3),
        ] {
            let mut s = StateFile {
                epoch: 7,
                ..Default::default()
            };
            s.apps.insert("a".into(), app(Color::Blue, 0.0));
            for i in 0..had {
                s.push_history(entry(i));
            }
            let before = s.clone();
            let new: Vec<HistoryEntry> = (1000..1000 + added).map(entry).collect();
            let mut apps = s.apps.clone();
            apps.insert("b".into(), app(Color::Green, 12.5));
            s.save_next(&path, 8, &apps, &new).unwrap();
            assert_eq!(s, before, "save_next must not change the state");

            let mut expected = s.clone();
            expected.epoch = 8;
            expected.apps = apps;
            for e in new {
                expected.push_history(e);
            }
            let loaded = StateFile::load(&path).unwrap().unwrap();
            assert_eq!(loaded, expected, "{had} entries + {added}");
            // What was loaded writes the same file again (its lines are
            // made on load), padded to whole blocks.
            let first = fs::read(&path).unwrap();
            assert_eq!(first.len() % BLOCK, 0, "{had} entries + {added}");
            loaded.save(&path).unwrap();
            assert_eq!(fs::read(&path).unwrap(), first);
            // One line per history entry, as the format promises.
            let text = fs::read_to_string(&path).unwrap();
            assert_eq!(text.lines().count(), 4 + expected.history.len(), "{text}");
        }
    }

    #[test]
    fn the_file_holds_exactly_the_bytes_written_whatever_the_temp_file_had() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        // Longer, equal, shorter and longer again than what the reused temp
        // file (the state before last) holds.
        for text in [
            "aaaaaaaaaa",
            "bbbbbbbbbb",
            "cccc",
            "dddddddddd",
            "eeeeeeeee",
            "",
            "ff",
        ] {
            write_atomically(&path, text.as_bytes()).unwrap();
            assert_eq!(fs::read_to_string(&path).unwrap(), text);
        }
    }

    /// Room reserved with `fallocate`, if the filesystem under the test's
    /// temp directory takes it (ext4, XFS, btrfs and tmpfs do).
    #[cfg(target_os = "linux")]
    fn reserves(dir: &Path) -> bool {
        let probe = File::create(dir.join("probe")).unwrap();
        let flags = rustix::fs::FallocateFlags::KEEP_SIZE;
        rustix::fs::fallocate(&probe, flags, 0, RESERVE).is_ok()
    }

    #[cfg(target_os = "linux")]
    fn room(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).unwrap().blocks() * 512
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_files_get_room_to_grow_and_keep_their_blocks() {
        let dir = tempfile::tempdir().unwrap();
        if !reserves(dir.path()) {
            eprintln!("skipped: this filesystem reserves no room");
            return;
        }
        let path = dir.path().join("s.json");
        let tmp = dir.path().join("s.json.tmp");
        // Both files get room for the state to double, and keep it while
        // the state grows within it.
        let mut s = StateFile::default();
        for i in 0..60 {
            s.push_history(entry(i));
            s.save(&path).unwrap();
            assert!(room(&path) >= RESERVE, "write {i}: {}", room(&path));
            if i > 0 {
                assert!(room(&tmp) >= RESERVE, "write {i}: {}", room(&tmp));
            }
        }
        assert_eq!(StateFile::load(&path).unwrap(), Some(s));
        // A leftover temp file with too few blocks for the state starts
        // again, with room.
        fs::write(&tmp, "x").unwrap();
        write_atomically(&path, &[b'a'; 20 * BLOCK]).unwrap();
        assert_eq!(fs::read(&path).unwrap(), [b'a'; 20 * BLOCK]);
        assert!(room(&path) >= 40 * BLOCK as u64, "{}", room(&path));
    }

    #[test]
    fn a_history_entry_without_a_reason_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let side = r#"{"live":"blue","standby_percent":0,"rules":[]}"#;
        let text = format!(
            r#"{{"format":1,"epoch":1,"apps":{{}},"history":[{{"time":"2026-01-01T00:00:00Z","epoch":1,"actor":"token:alice","app":"a","kind":"flip","before":{side},"after":{side}}}]}}"#
        );
        fs::write(&path, text).unwrap();
        let s = StateFile::load(&path).unwrap().unwrap();
        let e = s.history.last().unwrap();
        assert_eq!((e.actor.as_str(), &e.reason), ("token:alice", &None));
        // And is written back without one.
        s.save(&path).unwrap();
        assert!(!fs::read_to_string(&path).unwrap().contains("reason"));
    }

    #[test]
    fn a_pretty_printed_state_of_an_earlier_version_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let mut s = StateFile::default();
        s.apps.insert("shop".into(), app(Color::Green, 5.0));
        s.push_history(entry(1));
        fs::write(&path, serde_json::to_vec_pretty(&s).unwrap()).unwrap();
        assert_eq!(StateFile::load(&path).unwrap(), Some(s));
    }
}
