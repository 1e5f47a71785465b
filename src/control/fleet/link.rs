//! The fleet thread: one connection to etcd at a time, which reads the
//! cluster's state and watches it, writes this instance's changes,
//! keeps its report and the judge's lease alive, and, when etcd goes
//! away, says so and tries again with a growing pause.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use tokio::sync::mpsc;

use super::docs::{self, EpochDoc, Report};
use super::{Fleet, Learned, Write};
use crate::control::state::{StateError, HISTORY_LIMIT};
use crate::control::Shared;
use crate::model::Color;

/// How long an instance's report and the judge's role outlive it.
const LEASE_TTL: i64 = 10;
/// The pause before the first retry, and the longest.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

type Error = String;

/// Start the fleet thread; what it learns goes to `learned`.
pub fn start(
    fleet: Arc<Fleet>,
    shared: Arc<Shared>,
    learned: mpsc::UnboundedSender<Learned>,
) -> std::io::Result<()> {
    let writes = fleet
        .take_writes()
        .ok_or_else(|| std::io::Error::other("the fleet thread was started already"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("cutover-fleet".into())
        .spawn(move || rt.block_on(run(fleet, shared, writes, learned)))?;
    Ok(())
}

/// Sessions until shutdown; between two, writes are refused at once.
async fn run(
    fleet: Arc<Fleet>,
    shared: Arc<Shared>,
    mut writes: mpsc::UnboundedReceiver<Write>,
    learned: mpsc::UnboundedSender<Learned>,
) {
    let mut stop = shared.shutdown.subscribe();
    let mut backoff = BACKOFF.0;
    loop {
        let started = Instant::now();
        let mut session = Session::new(&fleet, &shared, &learned);
        let ended = tokio::select! {
            e = session.serve(&mut writes) => e,
            _ = stop.wait_for(|s| *s) => {
                session.leave().await;
                return;
            }
        };
        lost(&fleet, &ended);
        if started.elapsed() > BACKOFF.1 {
            backoff = BACKOFF.0;
        }
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                Some(w) = writes.recv() => {
                    let _ = w.reply.send(Err(StateError::Unavailable(ended.clone())));
                }
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// etcd went away: say so everywhere it is looked at.
fn lost(fleet: &Fleet, why: &str) {
    let was = fleet.view.borrow().connected;
    fleet.judging.store(false, Relaxed);
    fleet.view.send_modify(|v| {
        v.connected = false;
        v.last_error = Some(why.to_string());
    });
    match was {
        true => {
            tracing::error!(error = %why, "lost the fleet's state store (etcd); serving the last state")
        }
        false => {
            tracing::warn!(error = %why, "cannot reach the fleet's state store (etcd); trying again")
        }
    }
}

/// One connection's life.
struct Session<'a> {
    fleet: &'a Fleet,
    shared: &'a Shared,
    learned: &'a mpsc::UnboundedSender<Learned>,
    client: Option<Client>,
    lease: i64,
    /// The fleet's epoch and its document's mod revision, as last read
    /// or written.
    epoch: u64,
    epoch_revision: i64,
    /// That document as etcd holds it, to fence off a write whose answer
    /// was lost.
    epoch_doc: Option<Vec<u8>>,
    /// The last epoch sent to the control plane.
    sent: Option<u64>,
    /// No state was read in this session yet: the first is taken whatever
    /// its epoch, since etcd is the truth (restored from a backup, its
    /// epoch may be lower than this instance's).
    first: bool,
    /// Who holds the judge's lease.
    judge: Option<String>,
    /// The last report written, to write only what changed.
    reported: Option<Report>,
}

impl<'a> Session<'a> {
    fn new(
        fleet: &'a Fleet,
        shared: &'a Shared,
        learned: &'a mpsc::UnboundedSender<Learned>,
    ) -> Session<'a> {
        Session {
            fleet,
            shared,
            learned,
            client: None,
            lease: 0,
            epoch: 0,
            epoch_revision: 0,
            epoch_doc: None,
            sent: None,
            first: true,
            judge: None,
            reported: None,
        }
    }

    /// Connect, read, watch; then serve writes, watch events, the lease
    /// and the report until something fails: what failed.
    async fn serve(&mut self, writes: &mut mpsc::UnboundedReceiver<Write>) -> Error {
        match self.serve_inner(writes).await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn serve_inner(
        &mut self,
        writes: &mut mpsc::UnboundedReceiver<Write>,
    ) -> Result<std::convert::Infallible, Error> {
        let client = connect(&self.fleet.settings).await?;
        self.client = Some(client.clone());
        let granted = self
            .timed(client.clone().lease_grant(LEASE_TTL, None))
            .await?;
        self.lease = granted.id();
        let (mut keeper, mut alive) = self
            .timed(client.clone().lease_keep_alive(self.lease))
            .await?;
        let revision = self.read().await?;
        let mut watch = self.watch(revision + 1).await?;
        tracing::info!(cluster = %self.fleet.settings.cluster, instance = %self.fleet.id, epoch = self.epoch, "connected to the fleet's state store (etcd)");
        let mut swapped = self.shared.swapped.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut keepalive = tokio::time::interval(Duration::from_secs((LEASE_TTL / 3) as u64));
        loop {
            tokio::select! {
                Some(w) = writes.recv() => self.write(w).await?,
                m = watch.message() => self.watched(m.map_err(|e| format!("etcd watch: {e}"))?).await?,
                _ = keepalive.tick() => {
                    self.timed(keeper.keep_alive()).await?;
                    match self.timed(alive.message()).await? {
                        Some(r) if r.ttl() > 0 => {}
                        _ => return Err("this instance's lease in etcd expired".into()),
                    }
                }
                _ = tick.tick() => {
                    self.campaign().await?;
                    self.report().await?;
                }
                _ = swapped.changed() => self.report().await?,
            }
        }
    }

    /// Shutdown: give up the lease, so that the report and the judge's
    /// role go now rather than when the lease runs out.
    async fn leave(&mut self) {
        if let (Some(mut c), true) = (self.client.clone(), self.lease != 0) {
            let _ = tokio::time::timeout(Duration::from_secs(1), c.lease_revoke(self.lease)).await;
        }
    }

    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, Error> {
        timed(self.fleet.settings.timeout, call).await
    }

    fn client(&self) -> Client {
        self.client.clone().expect("connected")
    }

    /// Read the whole prefix: the state (sent on when newer), every
    /// report and the judge. The revision read at.
    async fn read(&mut self) -> Result<i64, Error> {
        let prefix = self.fleet.keys.prefix.clone();
        let opts = GetOptions::new().with_prefix();
        let resp = self.timed(self.client().get(prefix, Some(opts))).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let read = docs::read(&self.fleet.keys, resp.kvs())?;
        self.judge = resp
            .kvs()
            .iter()
            .find(|kv| kv.key() == self.fleet.keys.judge().as_bytes())
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
        self.epoch_revision = read.epoch_revision;
        let epoch_key = self.fleet.keys.epoch();
        self.epoch_doc = resp
            .kvs()
            .iter()
            .find(|kv| kv.key() == epoch_key.as_bytes())
            .map(|kv| kv.value().to_vec());
        // A guard judges on every instance's counts, as a rollout does.
        let rolling = read.state.as_ref().is_some_and(|s| {
            s.rollouts.values().any(|r| r.phase.is_active())
                || crate::control::guard_watch::under_way(s, std::time::SystemTime::now())
        });
        self.fleet.rolling.store(rolling, Relaxed);
        self.epoch = read.state.as_ref().map_or(0, |s| s.epoch);
        let epoch = self.epoch;
        self.fleet.view.send_modify(|v| {
            v.connected = true;
            v.last_error = None;
            v.epoch = epoch;
            v.instances = read.instances;
        });
        match read.state {
            Some(state) if self.first || self.sent.is_none_or(|s| state.epoch > s) => {
                self.sent = Some(state.epoch);
                let first = std::mem::take(&mut self.first);
                let _ = self.learned.send(Learned::State {
                    state: Box::new(state),
                    first,
                    writes: self.fleet.stored.load(Relaxed),
                });
            }
            Some(_) => {}
            // Published by this instance (or another, when it loses the
            // race), then read again as the first state.
            None => {
                let _ = self.learned.send(Learned::Empty);
            }
        }
        Ok(revision)
    }

    async fn watch(&mut self, from: i64) -> Result<WatchStream, Error> {
        let opts = WatchOptions::new().with_prefix().with_start_revision(from);
        let prefix = self.fleet.keys.prefix.clone();
        self.timed(self.client().watch(prefix, Some(opts))).await
    }

    /// One watch response: a change of the state is read whole (and sent
    /// on); reports and the judge's key are taken as they come.
    async fn watched(&mut self, m: Option<etcd_client::WatchResponse>) -> Result<(), Error> {
        let m = m.ok_or("etcd ended the watch")?;
        if m.canceled() {
            // Compacted past what this instance had seen: the next
            // session reads everything again.
            return Err(format!(
                "etcd cancelled the watch ({}; compacted at {})",
                m.cancel_reason(),
                m.compact_revision()
            ));
        }
        let keys = &self.fleet.keys;
        let mut state = false;
        for e in m.events() {
            let Some(kv) = e.kv() else { continue };
            state |= keys.is_state(kv.key());
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let put = e.event_type() == EventType::Put;
            if key == keys.judge() {
                self.judge = put.then(|| String::from_utf8_lossy(kv.value()).into_owned());
            } else if let Some(id) = key.strip_prefix(&keys.instances()) {
                let report = match put {
                    true => serde_json::from_slice::<Report>(kv.value()).ok(),
                    false => None,
                };
                let id = id.to_string();
                self.fleet.view.send_modify(|v| match report {
                    Some(r) => {
                        v.instances.insert(id, r);
                    }
                    None => {
                        v.instances.remove(&id);
                    }
                });
            }
        }
        if state {
            self.read().await?;
        }
        Ok(())
    }

    /// Write one change: compare-and-swap on the epoch document, so that
    /// a change made from a state the fleet has left is refused.
    async fn write(&mut self, w: Write) -> Result<(), Error> {
        if w.base.is_some_and(|b| b != self.epoch) {
            let _ = w
                .reply
                .send(Err(StateError::Conflict { epoch: self.epoch }));
            return Ok(());
        }
        let txn = self.transaction(&w)?;
        let answer = match timed(self.fleet.settings.timeout, self.client().txn(txn)).await {
            Ok(resp) if resp.succeeded() => {
                let revision = resp.header().map_or(0, |h| h.revision());
                let doc = EpochDoc {
                    epoch: w.epoch,
                    write_id: w.write_id.clone(),
                };
                self.written(w.epoch, revision, json(&doc).ok());
                Ok(())
            }
            Ok(_) => {
                // Lost a race: learn the state that won, then refuse.
                self.read().await?;
                Err(StateError::Conflict { epoch: self.epoch })
            }
            Err(e) => self.outcome(&w, e).await,
        };
        let failed = matches!(answer, Err(StateError::Unavailable(_)));
        let why = match &answer {
            Err(e) => Some(e.to_string()),
            Ok(()) => None,
        };
        let _ = w.reply.send(answer);
        match (failed, why) {
            (true, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// A write etcd did not answer may still be applied later (it may sit
    /// in etcd's queue). Fence it: rewrite the epoch document unchanged if
    /// it is still the one the write compared against — then the write's
    /// compare can never succeed — else look for the write's id.
    async fn outcome(&mut self, w: &Write, e: Error) -> Result<(), StateError> {
        let (key, doc) = (self.fleet.keys.epoch(), self.epoch_doc.clone());
        let Some(doc) = doc else {
            return Err(StateError::Unavailable(format!(
                "etcd did not confirm the first write of this cluster ({e}); it may still be applied"
            )));
        };
        let fence = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                self.epoch_revision,
            )])
            .and_then([TxnOp::put(key.clone(), doc, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.timed(self.client().txn(fence)).await.map_err(|again| {
            StateError::Unavailable(format!(
                "etcd did not confirm the write ({e}) nor answer a check of it ({again}): the change may still be applied; the status shows what is served once etcd answers"
            ))
        })?;
        if resp.succeeded() {
            self.epoch_revision = resp.header().map_or(0, |h| h.revision());
            return Err(StateError::Unavailable(format!(
                "etcd did not confirm the write in time ({e}); it is fenced off and will not be applied: nothing changed"
            )));
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        let ours = current.as_ref().and_then(|kv| {
            let d = serde_json::from_slice::<EpochDoc>(kv.value()).ok()?;
            (d.write_id == w.write_id).then(|| kv.mod_revision())
        });
        match ours {
            Some(revision) => {
                self.written(
                    w.epoch,
                    revision,
                    json(&EpochDoc {
                        epoch: w.epoch,
                        write_id: w.write_id.clone(),
                    })
                    .ok(),
                );
                Ok(())
            }
            None => {
                let _ = self.read().await;
                Err(StateError::Conflict { epoch: self.epoch })
            }
        }
    }

    fn written(&mut self, epoch: u64, revision: i64, doc: Option<Vec<u8>>) {
        self.fleet.stored.fetch_add(1, Relaxed);
        self.epoch = epoch;
        self.epoch_revision = revision;
        self.epoch_doc = doc;
        self.sent = Some(epoch);
        self.fleet.view.send_modify(|v| v.epoch = epoch);
    }

    /// The transaction of `w`: if the epoch document is still the one
    /// read, write it, the apps' documents and the history, and drop
    /// history older than the last [`HISTORY_LIMIT`] epochs.
    fn transaction(&self, w: &Write) -> Result<Txn, Error> {
        let keys = &self.fleet.keys;
        let mut ops = vec![TxnOp::put(
            keys.epoch(),
            json(&EpochDoc {
                epoch: w.epoch,
                write_id: w.write_id.clone(),
            })?,
            None,
        )];
        for (name, doc) in &w.apps {
            ops.push(TxnOp::put(keys.app(name), json(doc)?, None));
        }
        for (i, entry) in w.history.iter().enumerate() {
            // One change may record several apps under its epoch.
            let n = w.history[..i]
                .iter()
                .filter(|h| h.epoch == entry.epoch)
                .count();
            ops.push(TxnOp::put(
                keys.history_entry(entry.epoch, n),
                json(entry)?,
                None,
            ));
        }
        let oldest = w.epoch.saturating_sub(HISTORY_LIMIT as u64);
        if oldest > 0 {
            let range = DeleteOptions::new().with_range(keys.history_entry(oldest, 0));
            ops.push(TxnOp::delete(keys.history(), Some(range)));
        }
        Ok(Txn::new()
            .when([Compare::mod_revision(
                keys.epoch(),
                CompareOp::Equal,
                self.epoch_revision,
            )])
            .and_then(ops)
            .or_else([TxnOp::get(keys.epoch(), None)]))
    }

    /// Take the judge's role when nobody holds it.
    async fn campaign(&mut self) -> Result<(), Error> {
        let me = &self.fleet.id;
        if self.judge.is_none() {
            let key = self.fleet.keys.judge();
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key,
                    me.clone(),
                    Some(PutOptions::new().with_lease(self.lease)),
                )]);
            let resp = self.timed(self.client().txn(txn)).await?;
            if resp.succeeded() {
                tracing::info!(instance = %me, "this instance judges the fleet's rollouts");
                self.judge = Some(me.clone());
            }
        }
        self.fleet
            .judging
            .store(self.judge.as_ref() == Some(me), Relaxed);
        Ok(())
    }

    /// Write this instance's report if it changed (counts change with
    /// traffic, and are reported only while a rollout is under way).
    async fn report(&mut self) -> Result<(), Error> {
        let report = self.report_now();
        let served = report.epoch >= self.epoch;
        if served {
            self.fleet
                .view
                .send_modify(|v| v.in_step_at = Some(Instant::now()));
        }
        let same = self.reported.as_ref().is_some_and(|r| {
            Report {
                updated: report.updated.clone(),
                ..r.clone()
            } == report
        });
        if same {
            return Ok(());
        }
        let key = self.fleet.keys.instance(&self.fleet.id);
        let value = serde_json::to_vec(&report).map_err(|e| e.to_string())?;
        let opts = PutOptions::new().with_lease(self.lease);
        self.timed(self.client().put(key, value, Some(opts)))
            .await?;
        self.reported = Some(report);
        Ok(())
    }

    fn report_now(&self) -> Report {
        let snap = self.shared.snapshot.load();
        let counts = match self.fleet.rolling.load(Relaxed) {
            true => snap
                .apps
                .iter()
                .map(|a| {
                    let judged = Color::ALL.map(|c| a.pool(c).stats.judged());
                    (a.name.to_string(), judged)
                })
                .collect(),
            false => Default::default(),
        };
        Report {
            id: self.fleet.id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            admin: self.fleet.admin.clone(),
            epoch: snap.epoch,
            apps: snap
                .apps
                .iter()
                .map(|a| (a.name.to_string(), snap.epoch))
                .collect(),
            last_error: self.fleet.view.borrow().last_error.clone(),
            judge: self.fleet.judging.load(Relaxed),
            updated: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            counts,
        }
    }
}

/// Connect to etcd with the settings' endpoints, TLS and user.
async fn connect(s: &crate::config::EtcdSettings) -> Result<Client, Error> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(s.timeout)
        .with_timeout(s.timeout)
        .with_keep_alive(Duration::from_secs(2), s.timeout);
    if let Some((user, password)) = &s.user {
        opts = opts.with_user(user.clone(), password.expose().to_string());
    }
    if s.endpoints.iter().any(|e| e.starts_with("https://")) {
        opts = opts.with_tls(tls(s)?);
    }
    timed(s.timeout, Client::connect(&s.endpoints, Some(opts))).await
}

fn tls(s: &crate::config::EtcdSettings) -> Result<etcd_client::TlsOptions, Error> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("state: cannot read {}: {e}", p.display()))
    };
    let mut tls = etcd_client::TlsOptions::new();
    match &s.ca_file {
        Some(ca) => tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?)),
        None => tls = tls.with_native_roots(),
    }
    if let Some((cert, key)) = &s.client_cert {
        tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}

async fn timed<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("etcd: {e}")),
        Err(_) => Err(format!("etcd did not answer within {limit:?}")),
    }
}

/// A document as etcd keeps it.
fn json(v: &impl serde::Serialize) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|e| e.to_string())
}
