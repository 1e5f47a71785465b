//! The admin plane's hold on the control state: one lock, taken by each
//! call for synchronous work only.

use std::sync::Mutex;

use crate::api;
use crate::control::ops::Control;

pub struct Admin {
    /// Serializes every change; held only for synchronous work (never
    /// across an await), off the request path.
    /// The tokens accepted are the config's (`[admin]`), so a reload
    /// that re-reads the token files applies them.
    pub control: Mutex<Control>,
    /// The dashboard's series and live feed (`GET /v1/events`).
    pub events: super::events::Events,
}

impl Admin {
    pub fn new(control: Control) -> Admin {
        Admin {
            control: Mutex::new(control),
            events: Default::default(),
        }
    }

    /// Re-read the config file ([`Control::reload_with`]), for
    /// `POST /v1/reload` and SIGHUP alike.
    pub fn reload(
        &self,
        take_rules_from_file: bool,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<api::Status, Vec<String>> {
        let mut ctl = self.lock();
        let result = ctl.reload_with(take_rules_from_file, actor, reason);
        if result.is_ok() {
            // The daemon's environment is the one it started with: a
            // token added since whose variable it lacks cannot be used.
            for t in ctl
                .config()
                .admin
                .tokens
                .iter()
                .filter(|t| t.secret.is_none())
            {
                tracing::error!(token = %t.name, key = %t.key, "this admin token has no secret (its environment variable is not set): it is refused until a restart with it set");
            }
        }
        result
    }

    /// The dashboard's feed, once a second until shutdown.
    pub async fn feed(
        self: std::sync::Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tick.tick() => self.events.sample(&self.control),
            }
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
