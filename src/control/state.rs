//! cutover's durable state, and the only code that reads or writes it.
//!
//! What operators changed at runtime — each app's live colour, split,
//! rules and server settings ([`AppState`]), each app's latest rollout
//! ([`Rollout`]), the epoch every change bumps, and the recent history —
//! is one document, [`StateFile`]. [`State`] holds it in memory and
//! commits every change to its [`Store`] first: a change that cannot be
//! stored is refused (except a judge's rollback, see
//! [`State::commit_anyway`]), so memory never runs ahead of the store.
//!
//! Everything else is built from it or lives in memory only:
//! - the routing [`crate::route::Snapshot`] is *derived*: built from the
//!   config and this state, and rebuilt on every change;
//! - a rollout's observation windows, the judge's figures, request
//!   counters and health verdicts are *memory-only*: a restart starts them
//!   afresh (a rollout is judged again from its current step).
//!
//! Stores: [`FileStore`], the state file (`[state] file`), written
//! atomically — a temporary file in the same directory, fsync, rename
//! over the old file, fsync of the directory, so that a crash leaves the
//! old file or the new one, never a mix; and [`NoStore`] when no file is
//! configured, where nothing outlives the process.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::rollout::Rollout;
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
    /// Each app's latest rollout, under way or ended; written with the
    /// routing it drives, in the same atomic write.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rollouts: BTreeMap<String, Rollout>,
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
    /// A flip or shift watched by a guard: for how long (`2m`), see
    /// [`super::watch`]. Kept with the change so that whichever instance
    /// of a fleet judges can watch it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
    pub before: AppState,
    pub after: AppState,
}

impl HistoryEntry {
    /// What the change changed, in words ([`super::changes::describe`]).
    pub fn changes(&self) -> Vec<String> {
        super::changes::describe(&self.before, &self.after)
    }

    /// The entry as the admin API shows it, with what it changed in words
    /// (computed now).
    pub fn answer(&self) -> crate::api::HistoryEntry {
        crate::api::HistoryEntry {
            actor: self.actor.clone(),
            after: self.after.clone(),
            app: self.app.clone(),
            before: self.before.clone(),
            changes: self.changes(),
            epoch: self.epoch,
            forced: self.forced,
            guard: self.guard.clone(),
            kind: self.kind.clone(),
            reason: self.reason.clone(),
            time: self.time.clone(),
        }
    }
}

impl Default for StateFile {
    fn default() -> Self {
        StateFile {
            format: FORMAT,
            epoch: 0,
            apps: BTreeMap::new(),
            rollouts: BTreeMap::new(),
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
    /// The fleet's state moved on since this instance read it.
    #[error("the fleet's state moved on to epoch {epoch} while this change was made; nothing changed: look again and retry")]
    Conflict { epoch: u64 },
    /// The fleet's store cannot be reached: nothing changed.
    #[error("the fleet's state store (etcd) cannot be reached, so nothing changed: {0}")]
    Unavailable(String),
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
        StateFile::parse(&text)
            .map(Some)
            .map_err(|message| StateError::Corrupt {
                path: path.to_path_buf(),
                message,
            })
    }

    /// A state file's text, checked: its format, every split in range,
    /// every rule valid. `Err`: what is wrong.
    pub fn parse(text: &str) -> Result<StateFile, String> {
        let state: StateFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if state.format != FORMAT {
            return Err(format!(
                "format {} is not the supported format {FORMAT}",
                state.format
            ));
        }
        for (name, app) in &state.apps {
            if !(0.0..=100.0).contains(&app.standby_percent) {
                return Err(format!(
                    "apps.{name}.standby_percent: {} is out of range",
                    app.standby_percent
                ));
            }
            if let Err(errors) = crate::config::compile_rules(&format!("apps.{name}"), &app.rules) {
                return Err(errors.join("; "));
            }
        }
        for (name, rollout) in &state.rollouts {
            rollout
                .plan
                .check()
                .map_err(|e| format!("rollouts.{name}: {e}"))?;
            if rollout.step >= rollout.plan.steps.len() {
                return Err(format!(
                    "rollouts.{name}: step {} is past the plan",
                    rollout.step
                ));
            }
        }
        Ok(state)
    }

    /// Write atomically: temp file, fsync, rename, fsync the directory.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        self.save_next(path, self.epoch, &self.apps, &self.rollouts, &[])
    }

    /// Write the state that `self` becomes with `apps`, `rollouts`, `epoch`
    /// and the history entries `new` (oldest first), without changing `self`: a
    /// change is made in memory only once it is on disk, and nothing has
    /// to copy the whole history first.
    pub fn save_next(
        &self,
        path: &Path,
        epoch: u64,
        apps: &BTreeMap<String, AppState>,
        rollouts: &BTreeMap<String, Rollout>,
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
        let bytes =
            encode(epoch, apps, rollouts, lines, total.min(HISTORY_LIMIT)).map_err(|e| {
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
fn encode<'a>(
    epoch: u64,
    apps: &BTreeMap<String, AppState>,
    rollouts: &BTreeMap<String, Rollout>,
    history: impl Iterator<Item = &'a [u8]>,
    entries: usize,
) -> serde_json::Result<Vec<u8>> {
    // A history line is about 200 bytes: one allocation, no regrowth.
    let mut out = Vec::with_capacity(256 + 128 * apps.len() + 256 * entries);
    out.extend_from_slice(
        format!("{{\"format\":{FORMAT},\"epoch\":{epoch},\n\"apps\":").as_bytes(),
    );
    serde_json::to_writer(&mut out, apps)?;
    if !rollouts.is_empty() {
        out.extend_from_slice(b",\n\"rollouts\":");
        serde_json::to_writer(&mut out, rollouts)?;
    }
    out.extend_from_slice(b",\n\"history\":[");
    for (i, l) in history.enumerate() {
        out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
        out.extend_from_slice(l);
    }
    out.extend_from_slice(b"\n]}\n");
    Ok(out)
}

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
    let mut f = match create_private(&tmp) {
        // Left by a write that crashed: its contents are not the state.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(&tmp).and_then(|()| create_private(&tmp))
        }
        r => r,
    }
    .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(err)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

/// A new file at `tmp`, mode 0600 (less, by the umask): the state says how
/// traffic is routed and who changed it, so it is the owner's alone, and
/// the rename gives the state file that mode too. `create_new` never
/// follows a symbolic link at `tmp`; `remove_file` removes the link itself.
fn create_private(tmp: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
}

/// `tmp`'s path, as [`write_atomically`] names it.
fn tmp_file_of(dir: &Path, path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    dir.join(name)
}

/// One change to the durable state: what it becomes. `rollouts`: `None`
/// when the change leaves them as they are.
pub struct Commit {
    pub epoch: u64,
    pub apps: BTreeMap<String, AppState>,
    pub rollouts: Option<BTreeMap<String, Rollout>>,
    /// New history entries, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// Where the durable state is kept between runs.
pub trait Store: Send {
    /// The stored state; `None` when nothing was stored yet.
    fn load(&self) -> Result<Option<StateFile>, StateError>;
    /// Store what `now` becomes with `next`, whole, or nothing.
    fn save(&self, now: &StateFile, next: &Commit) -> Result<(), StateError>;
    /// `state` came from elsewhere (the fleet) and is now the state:
    /// keep a copy if the store keeps one.
    fn adopted(&self, _state: &StateFile) {}
    /// Store `state` whole where nothing is stored yet (a fleet's first).
    fn publish(&self, _state: &StateFile) -> Result<(), StateError> {
        Ok(())
    }
    /// Others read this store too (a fleet): what it refused must not
    /// become this instance's state alone, even for a judge's rollback.
    fn shared(&self) -> bool {
        false
    }
}

/// The state file at a path.
pub struct FileStore(pub PathBuf);

impl Store for FileStore {
    fn load(&self) -> Result<Option<StateFile>, StateError> {
        StateFile::load(&self.0)
    }

    fn save(&self, now: &StateFile, next: &Commit) -> Result<(), StateError> {
        let rollouts = next.rollouts.as_ref().unwrap_or(&now.rollouts);
        now.save_next(&self.0, next.epoch, &next.apps, rollouts, &next.history)
    }
}

/// No store: the state lives as long as the process.
pub struct NoStore;

impl Store for NoStore {
    fn load(&self) -> Result<Option<StateFile>, StateError> {
        Ok(None)
    }

    fn save(&self, _: &StateFile, _: &Commit) -> Result<(), StateError> {
        Ok(())
    }
}

/// The durable state in memory, and its store. Read through `Deref`;
/// changed only by [`State::commit`].
pub struct State {
    file: StateFile,
    store: Box<dyn Store>,
}

impl State {
    /// The state `store` holds (`reset`: ignore it and start empty), as
    /// `start` completes it from the config: apps the store does not know
    /// yet, rules the config file owns that changed while cutover was
    /// stopped. That is stored with the next change.
    pub fn open(
        store: Box<dyn Store>,
        reset: bool,
        start: impl FnOnce(&mut StateFile),
    ) -> Result<State, StateError> {
        let mut file = match reset {
            true => StateFile::default(),
            false => store.load()?.unwrap_or_default(),
        };
        start(&mut file);
        Ok(State { file, store })
    }

    /// Store `next`, then make it the state. On `Err` nothing changed.
    pub fn commit(&mut self, next: Commit) -> Result<(), StateError> {
        self.store.save(&self.file, &next)?;
        self.take(next);
        Ok(())
    }

    /// [`State::commit`], but the state changes in memory even if the
    /// store refused it (the error is returned to be logged): for a
    /// judge's rollback, which a store that cannot be written must not
    /// hold back. The next commit that succeeds stores it. With a shared
    /// store (a fleet) it is [`State::commit`]: the fleet's state rules.
    pub fn commit_anyway(&mut self, next: Commit) -> Result<(), StateError> {
        if self.store.shared() {
            // The fleet's judge tries again in a second, on the fleet's
            // state; one instance rolled back alone would be a split brain.
            return self.commit(next);
        }
        let saved = self.store.save(&self.file, &next);
        self.take(next);
        saved
    }

    /// Make `state`, read from the fleet, the state: it is stored
    /// already, so the store only keeps its local copy.
    pub fn adopt(&mut self, state: StateFile) {
        self.store.adopted(&state);
        self.file = state;
    }

    /// Store the state whole where nothing is stored yet.
    pub fn publish(&self) -> Result<(), StateError> {
        self.store.publish(&self.file)
    }

    fn take(&mut self, next: Commit) {
        self.file.epoch = next.epoch;
        self.file.apps = next.apps;
        if let Some(r) = next.rollouts {
            self.file.rollouts = r;
        }
        for entry in next.history {
            self.file.history.push(entry);
        }
    }
}

impl std::ops::Deref for State {
    type Target = StateFile;

    fn deref(&self) -> &StateFile {
        &self.file
    }
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
            mirror_percent: None,
            mirror_compare: None,
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
    fn the_state_file_is_the_owners_alone() {
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
        // Files an earlier version (or an operator) left readable to all.
        for p in [&path, &tmp] {
            fs::write(p, "{}").unwrap();
            fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
        }
        s.epoch = 2;
        s.save(&path).unwrap();
        assert_eq!(mode(&path), 0o600, "a state file that was readable to all");
        assert_eq!(StateFile::load(&path).unwrap().unwrap().epoch, 2);
        assert!(!tmp.exists());
    }

    #[test]
    fn each_write_replaces_the_file_whole() {
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
            guard: None,
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
            s.save_next(&path, 8, &apps, &BTreeMap::new(), &new)
                .unwrap();
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
            // made on load).
            let first = fs::read(&path).unwrap();
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

    /// A store that keeps what it was given, or refuses everything.
    struct Kept(std::sync::Arc<std::sync::Mutex<Vec<u64>>>, bool);

    impl Store for Kept {
        fn load(&self) -> Result<Option<StateFile>, StateError> {
            Ok(None)
        }
        fn save(&self, _: &StateFile, next: &Commit) -> Result<(), StateError> {
            if self.1 {
                return Err(StateError::Write {
                    path: PathBuf::from("/nowhere"),
                    source: io::Error::other("refused"),
                });
            }
            self.0.lock().unwrap().push(next.epoch);
            Ok(())
        }
    }

    fn change(epoch: u64) -> Commit {
        Commit {
            epoch,
            apps: BTreeMap::new(),
            rollouts: None,
            history: vec![entry(epoch)],
        }
    }

    #[test]
    fn a_commit_is_stored_before_it_becomes_the_state() {
        let saved = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut state = State::open(Box::new(Kept(saved.clone(), false)), false, |_| {}).unwrap();
        state.commit(change(1)).unwrap();
        assert_eq!(*saved.lock().unwrap(), [1]);
        assert_eq!((state.epoch, state.history.len()), (1, 1));
    }

    #[test]
    fn a_commit_the_store_refuses_changes_nothing() {
        let saved = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut state = State::open(Box::new(Kept(saved, true)), false, |_| {}).unwrap();
        assert!(state.commit(change(1)).is_err());
        assert_eq!((state.epoch, state.history.len()), (0, 0));
        // A rollback that must not wait for the store changes memory anyway.
        assert!(state.commit_anyway(change(1)).is_err());
        assert_eq!((state.epoch, state.history.len()), (1, 1));
    }

    #[test]
    fn the_config_completes_the_stored_state_at_start() {
        let saved = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = Box::new(Kept(saved.clone(), false));
        let state = State::open(store, false, |f| f.epoch = 7).unwrap();
        assert_eq!(state.epoch, 7);
        assert!(
            saved.lock().unwrap().is_empty(),
            "nothing is stored at start"
        );
    }
}
