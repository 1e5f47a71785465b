//! `GET /v1/events`: the dashboard's live feed, as server-sent events.
//!
//! Once a second [`Events::sample`] reads every colour's counters into the series
//! (five minutes, fixed size) and, while any page is open, builds one
//! `tick` event for all of them; each open stream is handed that same
//! text. So a hundred pages cost one series and one tick a second, not a
//! hundred. A stream begins with `hello` (who is looking, and the whole
//! series) and the newest tick, and ends when the daemon shuts down (a
//! page then reconnects, to the successor after an upgrade).

use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::Response;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::watch;

use super::reply::Reply;
use crate::api;
use crate::config::Role;
use crate::control::dashboard::series::Series;
use crate::control::ops::Control;

/// The series and the newest tick, shared by every open stream.
pub struct Events {
    series: Mutex<Series>,
    /// The newest `tick` event as sent (empty before the first).
    ticks: watch::Sender<Bytes>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            series: Mutex::default(),
            ticks: watch::channel(Bytes::new()).0,
        }
    }
}

impl Events {
    fn series(&self) -> std::sync::MutexGuard<'_, Series> {
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One reading of every colour and, while a page is open, one tick
    /// for all of them (once a second: [`super::Admin::feed`]).
    pub fn sample(&self, control: &Mutex<Control>) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let snap = lock(control).shared.snapshot.load_full();
        let points = {
            let mut series = self.series();
            series.sample(now, &snap);
            series.newest()
        };
        if self.ticks.receiver_count() == 0 {
            return;
        }
        let tick = lock(control).tick_view(points);
        self.ticks.send_replace(event("tick", &tick));
    }
}

fn lock(control: &Mutex<Control>) -> std::sync::MutexGuard<'_, Control> {
    control.lock().unwrap_or_else(|p| p.into_inner())
}

/// One server-sent event: its name and a line of JSON.
fn event(name: &str, data: &impl serde::Serialize) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

/// What one stream has still to send before it follows the ticks.
struct Stream {
    first: Vec<Bytes>,
    ticks: watch::Receiver<Bytes>,
    shutdown: watch::Receiver<bool>,
}

impl Stream {
    /// The next event: the ones it begins with, then each new tick, until
    /// shutdown.
    async fn next(mut self) -> Option<(Bytes, Stream)> {
        if !self.first.is_empty() {
            let e = self.first.remove(0);
            return Some((e, self));
        }
        let changed = tokio::select! {
            changed = self.ticks.changed() => changed.is_ok(),
            _ = self.shutdown.wait_for(|s| *s) => false,
        };
        if !changed {
            return None;
        }
        let e = self.ticks.borrow_and_update().clone();
        Some((e, self))
    }
}

/// `GET /v1/events` for a caller with token `actor` of `role`.
pub fn stream(events: &Events, control: &Mutex<Control>, actor: String, role: Role) -> Reply {
    let hello = api::Hello {
        actor,
        role: role.as_str().to_string(),
        series: events.series().all(),
    };
    let mut ticks = events.ticks.subscribe();
    let mut first = vec![event("hello", &hello)];
    let newest = ticks.borrow_and_update().clone();
    if !newest.is_empty() {
        first.push(newest);
    }
    let shutdown = lock(control).shared.shutdown.subscribe();
    let state = Stream {
        first,
        ticks,
        shutdown,
    };
    let frames = futures_util::stream::unfold(state, |s| async move {
        let (bytes, s) = s.next().await?;
        Some((Ok::<_, std::convert::Infallible>(Frame::data(bytes)), s))
    });
    let mut r = Response::new(StreamBody::new(frames).boxed_unsync());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // A proxy in front (nginx) would otherwise hold the events back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}
