//! The command line: clap definitions and what each subcommand
//! does. `main.rs` only parses, sets up logging and calls [`Cli::execute`].

use std::fmt::Write as _;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::api;
use crate::client::{self, Endpoint, EndpointArgs};
use crate::config::{AppConfig, Config, HostPattern, PoolConfig, Sticky};
use crate::control::state_lock::StateLock;
use crate::model::{Color, NameValue, RateLimitSpec, RolloutPhase, RuleSpec, ServerState};

/// Exit code for bad usage or a bad config (sysexits `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "cutover",
    version,
    about = "Blue-green and canary reverse proxy"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (logs to stderr).
    Run {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Ignore the state file (even a corrupt one): start from the
        /// config's initial values.
        #[arg(long)]
        reset_state: bool,
    },
    /// Validate a config: print a summary, or every error with its key
    /// (exit 64). When the daemon's admin API answers, also say whether
    /// its runtime state differs from the file.
    Check {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        out: Output,
    },
    /// Run the proxy on the embedded demo config with two demo upstreams.
    Demo,
    /// List the instances of this instance's fleet: the epoch each
    /// serves, whether it is in sync, the last error.
    Fleet {
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        endpoint: ClientArgs,
    },
    /// Show apps, live colour, split, rules, servers with health.
    Status {
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        endpoint: ClientArgs,
    },
    /// Send all traffic of APP to its standby colour (`--all`: every app,
    /// atomically); with `--to`, to that colour.
    Flip {
        app: Option<String>,
        /// Flip every app, in one atomic step.
        #[arg(long, conflicts_with = "app")]
        all: bool,
        /// Make this colour live instead of toggling: an app already live
        /// there with no split is left as it is (idempotent, for scripts).
        #[arg(long, value_enum, value_name = "COLOR")]
        to: Option<ColorArg>,
        #[command(flatten)]
        guard: GuardFlags,
        #[command(flatten)]
        change: ChangeFlags,
        #[command(flatten)]
        endpoint: ClientArgs,
    },
    /// Send PERCENT (0-100) of APP's default traffic to its standby colour.
    Shift {
        /// `[APP] PERCENT`.
        #[arg(num_args = 1..=2, value_names = ["APP", "PERCENT"], required = true)]
        args: Vec<String>,
        #[command(flatten)]
        guard: GuardFlags,
        #[command(flatten)]
        change: ChangeFlags,
        #[command(flatten)]
        endpoint: ClientArgs,
    },
    /// Copy PERCENT (0-100) of APP's live-colour requests to its standby
    /// colour, compare the answers and discard the copies' (shadow traffic).
    Mirror {
        /// `[APP] PERCENT`.
        #[arg(num_args = 1..=2, value_names = ["APP", "PERCENT"], required = true)]
        args: Vec<String>,
        /// What the copies are compared by from now on, in place of the
        /// config's `compare`: `status`, `status,body`,
        /// `status,body,headers`.
        #[arg(long, value_name = "LIST", value_parser = compare_list)]
        compare: Option<CompareList>,
        #[command(flatten)]
        change: ChangeFlags,
        #[command(flatten)]
        endpoint: ClientArgs,
    },
    /// Restore the state before the last change (of APP, or the last change overall).
    Rollback {
        app: Option<String>,
        #[command(flatten)]
        change: ChangeFlags,
        #[command(flatten)]
        endpoint: ClientArgs,
    },
    /// List, add, change or remove canary rules: `rules [APP] [list | add
    /// --name N --to C ... | set NAME --percent P | remove NAME]`.
    Rules {
        /// `[APP] [list|add|set|remove] [NAME]`.
        args: Vec<String>,
        #[command(flatten)]
        rule: RuleArgs,
        #[command(flatten)]
        change: ChangeFlags,
        #[command(flatten)]
        endpoint: ClientArgs,
    },
    /// Take one server out of rotation (drain, maint) or back (ready), or
    /// change its weight, at runtime.
    Server {
        app: String,
        #[arg(value_enum)]
        color: ColorArg,
        /// The server's address, as in the config (`10.0.0.1:8080`).
        addr: String,
        #[arg(value_enum)]
        action: ServerAction,
        /// Replace the configured weight (1-1000) while set.
        #[arg(long)]
        weight: Option<u32>,
        #[command(flatten)]
        change: ChangeFlags,
        #[command(flatten)]
        endpoint: ClientArgs,
    },
    /// Roll APP's standby colour out step by step, judged each second
    /// against the live colour, rolled back by itself if it fails:
    /// `rollout [APP] [start|status|pause|resume|abort]`.
    ///
    /// `rollout status` exits 0 once the rollout succeeded; 2 once it
    /// failed (the judge rolled it back), was aborted or superseded by a
    /// manual change, or while it rolls back; 6 while it runs (paused
    /// included). With `--wait`, `start` and `status` follow it, printing
    /// each move, until it ends or pauses, and exit the same way.
    Rollout {
        /// `[APP] [start|status|pause|resume|abort]` (default: start).
        #[arg(num_args = 0..=2, value_names = ["APP", "ACTION"])]
        args: Vec<String>,
        #[command(flatten)]
        plan: PlanArgs,
        /// Start even though the standby colour has no healthy server
        /// (its preflight then waits for one, as long as a step).
        #[arg(long)]
        force: bool,
        /// Follow the rollout (start, status): print each move as it
        /// happens until it ends or pauses; exit by its outcome.
        #[arg(long)]
        wait: bool,
        /// Why: recorded in the history beside the token's name.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        endpoint: ClientArgs,
    },
    /// Re-read the daemon's config file (like SIGHUP).
    Reload {
        /// Replace runtime rules that differ from the file's with the
        /// file's (recorded in history with the rules they replace).
        #[arg(long)]
        take_rules_from_file: bool,
        /// Why: recorded in the history beside the token's name.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        endpoint: ClientArgs,
    },
    /// How the running state differs from the config file given with -c.
    /// Exit 0 when they match, 1 when they differ (or the daemon cannot
    /// be reached).
    Diff {
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        endpoint: ClientArgs,
    },
    /// The recent changes: time, who, before -> after.
    History {
        /// Show at most this many, newest last.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        endpoint: ClientArgs,
    },
    /// Replace the running daemon with a new binary without dropping a
    /// connection: it starts with the listening sockets, and the old one
    /// drains once the new one serves. The binary is the installed one:
    /// [admin] upgrade_binary, else the daemon's own path, read again.
    Upgrade {
        /// Start this binary instead: only on the daemon's own host (a
        /// loopback admin URL), and only if its config says
        /// allow_local_binary = true.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        endpoint: ClientArgs,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `cutover man | man -l -`.
    Man,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorArg {
    Blue,
    Green,
}

impl From<ColorArg> for Color {
    fn from(c: ColorArg) -> Color {
        match c {
            ColorArg::Blue => Color::Blue,
            ColorArg::Green => Color::Green,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServerAction {
    /// Back in rotation.
    Ready,
    /// No new requests; requests in flight finish.
    Drain,
    /// Drained and reported unhealthy.
    Maint,
}

/// How a client command prints its answer.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Output {
    /// Print the API's JSON answer instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The flags every state change takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ChangeFlags {
    /// Apply even if traffic would go to a pool with no healthy server.
    #[arg(long)]
    pub force: bool,
    /// Show the result without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse (exit 3) unless the state is still at this epoch.
    #[arg(long, value_name = "EPOCH")]
    pub if_match: Option<u64>,
    /// Print the API's JSON answer instead of text.
    #[arg(long)]
    pub json: bool,
    /// Why: recorded in the history beside the token's name (printable
    /// ASCII, at most 200 characters).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// In a fleet: answer once every instance serves the change, or
    /// after this long (at most 60s); exit 5 if some did not.
    #[arg(long, value_name = "DURATION", value_parser = wait_duration)]
    pub wait: Option<String>,
}

/// `--wait`: a duration as the admin API takes it.
fn wait_duration(s: &str) -> Result<String, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() && d <= std::time::Duration::from_secs(60) => Ok(s.to_string()),
        Ok(_) => Err("must be above 0s and at most 60s".into()),
        Err(e) => Err(format!("not a duration like 5s: {e}")),
    }
}

impl ChangeFlags {
    fn body(&self) -> api::ChangeBody {
        api::ChangeBody {
            force: self.force,
            dry_run: self.dry_run,
            percent: None,
            compare: None,
            to: None,
            guard: None,
        }
    }
}

/// How long a flip or shift is watched, and undone if it hurts.
#[derive(Debug, Clone, clap::Args)]
pub struct GuardFlags {
    /// Watch the change this long (else the app's `guard`, default 2m)
    /// and revert it if the colour that took the traffic is clearly worse.
    #[arg(long, value_name = "DURATION", value_parser = guard_duration)]
    pub guard: Option<String>,
    /// No guard: leave the change alone whatever follows.
    #[arg(long, conflicts_with = "guard")]
    pub no_guard: bool,
}

impl GuardFlags {
    /// The body's `guard`.
    fn body(&self) -> Option<String> {
        match self.no_guard {
            true => Some("off".into()),
            false => self.guard.clone(),
        }
    }
}

/// `--compare status,body`.
#[derive(Debug, Clone)]
pub struct CompareList(Vec<crate::model::Compared>);

fn compare_list(s: &str) -> Result<CompareList, String> {
    crate::model::Compared::parse_list(s).map(CompareList)
}

/// `--guard`: a duration as the admin API takes it.
fn guard_duration(s: &str) -> Result<String, String> {
    crate::model::guard_window(s).map(|_| s.to_string())
}

/// How the client subcommands reach the admin API.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Admin API URL, http:// or https:// (else $CUTOVER_ADMIN, else the config's [admin] listen, else http://127.0.0.1:9901).
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// CA certificates (PEM) to trust for an https:// admin URL (else the system's).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// File holding the admin token (else $CUTOVER_TOKEN, else the config's token).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The daemon's config file, to find the admin address and token.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The rule `rules add` creates.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RuleArgs {
    /// Rule name (add).
    #[arg(long)]
    pub name: Option<String>,
    /// Colour the rule sends to: blue or green (add).
    #[arg(long)]
    pub to: Option<String>,
    /// Share of matching users, 0-100 (add, default 100; set).
    #[arg(long)]
    pub percent: Option<f64>,
    /// User-agent regex (add).
    #[arg(long)]
    pub user_agent: Option<String>,
    /// Header condition NAME=VALUE (add).
    #[arg(long, value_name = "NAME=VALUE")]
    pub header: Option<String>,
    /// Cookie condition NAME=VALUE (add).
    #[arg(long, value_name = "NAME=VALUE")]
    pub cookie: Option<String>,
    /// Client network, repeatable (add).
    #[arg(long, value_name = "CIDR")]
    pub client_ip: Vec<String>,
    /// Path prefix condition (add).
    #[arg(long)]
    pub path_prefix: Option<String>,
    /// The rule has no condition on purpose: it takes every request (add).
    #[arg(long = "every-request", alias = "all")]
    pub every_request: bool,
    /// The rule's own rate limit on the requests it places: N/s, N/m or N/h (add).
    #[arg(long, value_name = "RATE")]
    pub rate_limit: Option<String>,
    /// Its burst, requests a key may make at once (add, with --rate-limit; default N).
    #[arg(long, value_name = "N", requires = "rate_limit")]
    pub rate_burst: Option<i64>,
    /// What it counts by: client_ip, header:NAME or cookie:NAME (add, with --rate-limit; default client_ip).
    #[arg(long, value_name = "KEY", requires = "rate_limit")]
    pub rate_key: Option<String>,
}

impl RuleArgs {
    /// The percent `rules set` takes, and nothing else of a rule.
    fn only_percent(&self) -> Result<f64, String> {
        let others = self.name.is_some()
            || self.to.is_some()
            || self.user_agent.is_some()
            || self.header.is_some()
            || self.cookie.is_some()
            || !self.client_ip.is_empty()
            || self.path_prefix.is_some()
            || self.every_request
            || self.rate_limit.is_some();
        match (self.percent, others) {
            (_, true) => Err(
                "rules set changes a rule's --percent only (remove and add it to change the rest)"
                    .into(),
            ),
            (None, false) => Err("rules set needs --percent P".into()),
            (Some(p), false) => Ok(p),
        }
    }

    /// The rule to add; `Err`: what is missing or malformed.
    fn spec(&self) -> Result<RuleSpec, String> {
        let (Some(name), Some(to)) = (self.name.clone(), self.to.clone()) else {
            return Err("rules add needs --name and --to".into());
        };
        let pair = |s: &Option<String>, what: &str| -> Result<Option<NameValue>, String> {
            let Some(s) = s else { return Ok(None) };
            match s.split_once('=') {
                Some((n, v)) => Ok(Some(NameValue {
                    name: n.into(),
                    value: v.into(),
                })),
                None => Err(format!("--{what} takes NAME=VALUE, got {s:?}")),
            }
        };
        Ok(RuleSpec {
            all: self.every_request.then_some(true),
            client_ip: (!self.client_ip.is_empty()).then(|| self.client_ip.clone()),
            cookie: pair(&self.cookie, "cookie")?,
            header: pair(&self.header, "header")?,
            name,
            path_prefix: self.path_prefix.clone(),
            percent: self.percent,
            // Checked by the daemon, which names the key it refuses.
            rate_limit: self.rate_limit.clone().map(|rate| RateLimitSpec {
                rate: Some(rate),
                burst: self.rate_burst,
                key: self.rate_key.clone(),
                max_keys: None,
            }),
            to,
            user_agent: self.user_agent.clone(),
        })
    }
}

/// A rollout's plan as `rollout start` takes it; each flag left out is
/// the daemon's default.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PlanArgs {
    /// Green's share of split traffic at each step; the last is 100 (the flip).
    #[arg(long, value_delimiter = ',', value_name = "PERCENTS")]
    steps: Option<Vec<f64>>,
    /// How long each step is observed at least (default 60s).
    #[arg(long, value_name = "DURATION")]
    every: Option<String>,
    /// Largest acceptable share of bad responses: 5xx, connect errors, timeouts (default 1%).
    #[arg(long, value_name = "PERCENT")]
    max_error_rate: Option<String>,
    /// A response whose head takes longer is slow (default: slowness not judged).
    #[arg(long, value_name = "DURATION")]
    max_slow: Option<String>,
    /// Largest acceptable share of slow responses (default 5%).
    #[arg(long, value_name = "PERCENT")]
    max_slow_rate: Option<String>,
    /// After the flip, watch the new live colour alone this long.
    #[arg(long, value_name = "DURATION")]
    bake: Option<String>,
    /// Promote a step that ran its time without enough requests to judge.
    #[arg(long)]
    allow_low_traffic: bool,
    /// Before the first step, compare shadow copies of live traffic this long.
    #[arg(long, value_name = "DURATION")]
    shadow: Option<String>,
    /// Largest acceptable share of shadow copies that differ (default 1%).
    #[arg(long, value_name = "PERCENT")]
    max_mismatch: Option<String>,
}

impl PlanArgs {
    /// The flags given, as `POST /v1/apps/{app}/rollout` takes them.
    fn body(self) -> serde_json::Map<String, serde_json::Value> {
        let mut body = serde_json::Map::new();
        let mut put = |k: &str, v: Option<serde_json::Value>| {
            if let Some(v) = v {
                body.insert(k.to_string(), v);
            }
        };
        put("steps", self.steps.map(|s| serde_json::json!(s)));
        put("every", self.every.map(Into::into));
        put("max_error_rate", self.max_error_rate.map(Into::into));
        put("max_slow", self.max_slow.map(Into::into));
        put("max_slow_rate", self.max_slow_rate.map(Into::into));
        put("bake", self.bake.map(Into::into));
        put("shadow", self.shadow.map(Into::into));
        put("max_mismatch", self.max_mismatch.map(Into::into));
        if self.allow_low_traffic {
            body.insert("allow_low_traffic".into(), true.into());
        }
        body
    }
}

impl Cli {
    /// Parse argv; bad usage exits 64 (help and version exit 0).
    pub fn parse_or_exit() -> Cli {
        match Cli::try_parse() {
            Ok(cli) => cli,
            Err(e) => {
                let code = if e.use_stderr() {
                    i32::from(EXIT_USAGE)
                } else {
                    0
                };
                let _ = e.print();
                std::process::exit(code);
            }
        }
    }

    /// Run the subcommand. `handed_over_lock`: the state file's lock the
    /// process this one replaces passed on (`cutover upgrade`), adopted by
    /// `run`.
    pub fn execute(self, handed_over_lock: Option<std::fs::File>) -> ExitCode {
        match self.command {
            Command::Run {
                config,
                reset_state,
            } => run(&config, reset_state, handed_over_lock),
            Command::Check { config, out } => check(&config, out.json),
            Command::Demo => demo(),
            Command::Completions { shell } => {
                let mut cmd = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut cmd, "cutover", &mut std::io::stdout());
                ExitCode::SUCCESS
            }
            Command::Man => {
                let cmd = <Cli as clap::CommandFactory>::command();
                match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("cutover: {e}");
                        ExitCode::from(EXIT_FAILED)
                    }
                }
            }
            other => client_command(other),
        }
    }
}

/// Exit codes of the client commands (and `check`/`run`, 0 and 64).
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_REFUSED: u8 = 2;
pub const EXIT_STALE: u8 = 3;
pub const EXIT_UNAUTHORIZED: u8 = 4;
/// A change made with `--wait` that some instance of the fleet did not
/// confirm in time.
pub const EXIT_UNCONFIRMED: u8 = 5;
/// `rollout status`: a rollout that did not succeed (failed, aborted,
/// superseded, or rolling back) exits as a refused change does: it did
/// not happen.
pub const EXIT_NOT_ROLLED_OUT: u8 = EXIT_REFUSED;
/// `rollout status`: a rollout still under way, paused included.
pub const EXIT_RUNNING: u8 = 6;

/// The exit code for a failed call: by the API's status when it answered.
fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<client::Refused>().map(|r| r.status) {
        Some(409) => EXIT_REFUSED,
        Some(412) => EXIT_STALE,
        Some(401 | 403) => EXIT_UNAUTHORIZED,
        _ => EXIT_FAILED,
    }
}

fn endpoint(args: &ClientArgs) -> Result<Endpoint, ExitCode> {
    Endpoint::resolve(&EndpointArgs {
        admin: args.admin.clone(),
        token_file: args.token_file.clone(),
        config: args.config.clone(),
        ca_file: args.ca_file.clone(),
    })
    .map_err(|e| {
        eprintln!("cutover: {e:#}");
        ExitCode::from(EXIT_USAGE)
    })
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("cutover: {msg}");
    ExitCode::from(EXIT_USAGE)
}

/// Print a call's result: 0 when done; else the message on stderr and
/// the exit code its refusal calls for.
fn finish(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cutover: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The answer as it came (`--json`), or `text` of it read as the [`api`]
/// type `T` it is.
fn shown<T: serde::de::DeserializeOwned>(
    json: bool,
    v: serde_json::Value,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<String> {
    if json {
        Ok(format!("{v:#}\n"))
    } else {
        Ok(text(&client::read(v)?))
    }
}

/// `[APP] PERCENT` of `shift` and `mirror`.
fn app_percent(command: &str, args: &[String]) -> Result<(Option<String>, f64), ExitCode> {
    let (app, pct) = match args {
        [p] => (None, p),
        [a, p] => (Some(a.clone()), p),
        _ => return Err(usage(format!("{command} takes [APP] PERCENT"))),
    };
    match pct.trim_end_matches('%').parse::<f64>() {
        Ok(percent) => Ok((app, percent)),
        Err(_) => Err(usage(format!(
            "PERCENT must be a number from 0 to 100, got {pct:?}"
        ))),
    }
}

/// A subcommand that calls the admin API: check what can be checked
/// here, find the endpoint, and run it.
fn client_command(cmd: Command) -> ExitCode {
    let wait = change_flags(&cmd).and_then(|c| c.wait.clone());
    let (args, reason) = match &cmd {
        Command::Flip {
            endpoint, change, ..
        }
        | Command::Shift {
            endpoint, change, ..
        }
        | Command::Mirror {
            endpoint, change, ..
        }
        | Command::Rollback {
            endpoint, change, ..
        }
        | Command::Rules {
            endpoint, change, ..
        }
        | Command::Server {
            endpoint, change, ..
        } => (endpoint, change.reason.clone()),
        Command::Fleet { endpoint, .. } => (endpoint, None),
        Command::Reload {
            endpoint, reason, ..
        }
        | Command::Rollout {
            endpoint, reason, ..
        } => (endpoint, reason.clone()),
        Command::Status { endpoint, .. }
        | Command::Diff { endpoint, .. }
        | Command::Upgrade { endpoint, .. }
        | Command::History { endpoint, .. } => (endpoint, None),
        Command::Run { .. }
        | Command::Check { .. }
        | Command::Demo
        | Command::Completions { .. }
        | Command::Man => return usage("not a client command"),
    };
    if let Some(r) = &reason {
        if let Err(m) = check_reason(r) {
            return usage(m);
        }
    }
    let mut ep = match endpoint(args) {
        Ok(ep) => ep,
        Err(c) => return c,
    };
    ep.reason = reason;
    ep.wait = wait;
    let code = run_client(&ep, cmd);
    match ep.unconfirmed.get() && code == ExitCode::SUCCESS {
        true => ExitCode::from(EXIT_UNCONFIRMED),
        false => code,
    }
}

/// The change flags of a subcommand that changes the state.
fn change_flags(cmd: &Command) -> Option<&ChangeFlags> {
    match cmd {
        Command::Flip { change, .. }
        | Command::Shift { change, .. }
        | Command::Mirror { change, .. }
        | Command::Rollback { change, .. }
        | Command::Rules { change, .. }
        | Command::Server { change, .. } => Some(change),
        _ => None,
    }
}

/// Each client subcommand, by its function.
fn run_client(ep: &Endpoint, cmd: Command) -> ExitCode {
    match cmd {
        Command::Fleet { out, .. } => finish(
            ep.ok("GET", "/v1/fleet", None, None)
                .and_then(|v| shown(out.json, v, client::fleet_table)),
        ),
        Command::Status { out, .. } => finish(
            ep.ok("GET", "/v1/status", None, None)
                .and_then(|v| shown(out.json, v, client::status_table)),
        ),
        Command::Flip {
            app,
            all,
            to,
            guard,
            change,
            ..
        } => flip(ep, app, all, to.map(Color::from), guard, change),
        Command::Rollback { app, change, .. } => {
            self::change(ep, "rollback", app, change.body(), change)
        }
        Command::Mirror {
            args,
            compare,
            change,
            ..
        } => {
            let compare = compare.map(|c| c.0);
            percent_change(ep, "mirror", "PUT", &args, (compare, None), change)
        }
        Command::Shift {
            args,
            guard,
            change,
            ..
        } => percent_change(ep, "shift", "POST", &args, (None, guard.body()), change),
        Command::Rules {
            args, rule, change, ..
        } => rules_command(ep, args, rule, change),
        Command::Rollout {
            args,
            plan,
            force,
            wait,
            out,
            ..
        } => rollout_command(ep, &args, plan, RolloutFlags { force, wait, out }),
        Command::Server {
            app,
            color,
            addr,
            action,
            weight,
            change,
            ..
        } => server_command(ep, &app, color, &addr, action, weight, change),
        Command::Reload {
            take_rules_from_file,
            out,
            ..
        } => reload(ep, take_rules_from_file, out),
        Command::Diff { out, endpoint } => diff(ep, endpoint.config.as_deref(), out),
        Command::Upgrade { binary, out, .. } => upgrade(ep, binary, out),
        Command::History { limit, out, .. } => finish(
            ep.ok("GET", &format!("/v1/history?limit={limit}"), None, None)
                .and_then(|v| shown(out.json, v, |h| client::history_table(h, limit))),
        ),
        Command::Run { .. }
        | Command::Check { .. }
        | Command::Demo
        | Command::Completions { .. }
        | Command::Man => usage("not a client command"),
    }
}

/// `flip [APP] [--all] [--to COLOR]`: every app only when asked for:
/// with several apps, a flip without one names none.
fn flip(
    ep: &Endpoint,
    app: Option<String>,
    all: bool,
    to: Option<Color>,
    guard: GuardFlags,
    flags: ChangeFlags,
) -> ExitCode {
    let app = match (app, all) {
        (Some(a), _) => Some(a),
        (None, true) => None,
        (None, false) => match client::pick_app(ep, None) {
            Ok(a) => Some(a),
            Err(m) => return usage(format!("{m}, or pass --all to flip every app")),
        },
    };
    let body = api::ChangeBody {
        to,
        guard: guard.body(),
        ..flags.body()
    };
    change(ep, "flip", app, body, flags)
}

/// How `rollout status` exits for a rollout in `state`: 0 it succeeded;
/// 2 it failed, was aborted or superseded, or is rolling back (it will
/// end failed or aborted); 6 it is still under way, paused included.
fn rollout_exit(state: RolloutPhase) -> u8 {
    match state {
        RolloutPhase::Succeeded => 0,
        RolloutPhase::RollingBack
        | RolloutPhase::Failed
        | RolloutPhase::Aborted
        | RolloutPhase::Superseded => EXIT_NOT_ROLLED_OUT,
        _ => EXIT_RUNNING,
    }
}

/// Where `rollout --wait` stops following: the rollout ended, or it is
/// paused (it waits for a person, and a script should not).
fn rollout_settled(state: RolloutPhase) -> bool {
    !state.is_active() || state == RolloutPhase::Paused
}

/// The flags of `rollout` beside its plan.
struct RolloutFlags {
    force: bool,
    wait: bool,
    out: Output,
}

/// `rollout [APP] [start|status|pause|resume|abort]`: the app and the action.
fn rollout_words(ep: &Endpoint, args: &[String]) -> Result<(String, &'static str), ExitCode> {
    const ACTIONS: [&str; 5] = ["start", "status", "pause", "resume", "abort"];
    let action = |a: &str| ACTIONS.into_iter().find(|x| *x == a);
    let (app, action) = match args {
        [] => (None, "start"),
        [a] => match action(a) {
            Some(x) => (None, x),
            None => (Some(a.clone()), "start"),
        },
        [a, b] => match action(b) {
            Some(x) => (Some(a.clone()), x),
            None => {
                return Err(usage(format!(
                    "rollout: {b:?} is not one of start, status, pause, resume, abort"
                )))
            }
        },
        _ => {
            return Err(usage(
                "rollout takes [APP] [start|status|pause|resume|abort]",
            ))
        }
    };
    let app = client::pick_app(ep, app).map_err(usage)?;
    Ok((app, action))
}

/// `rollout [APP] [start|status|pause|resume|abort] [--wait]`.
fn rollout_command(
    ep: &Endpoint,
    args: &[String],
    plan: PlanArgs,
    flags: RolloutFlags,
) -> ExitCode {
    let (app, action) = match rollout_words(ep, args) {
        Ok(w) => w,
        Err(code) => return code,
    };
    let mut body = plan.body();
    if action != "start" && (!body.is_empty() || flags.force) {
        return usage(format!(
            "rollout {action}: the plan's flags (--steps, --every, ...) and --force only go with start"
        ));
    }
    if flags.wait && !matches!(action, "start" | "status") {
        return usage(format!(
            "rollout {action}: --wait only goes with start and status"
        ));
    }
    if flags.force {
        body.insert("force".into(), true.into());
    }
    let (method, path, body) = match action {
        "start" => ("POST", format!("/v1/apps/{app}/rollout"), Some(body.into())),
        "status" => ("GET", format!("/v1/apps/{app}/rollout"), None),
        a => (
            "POST",
            format!("/v1/apps/{app}/rollout/{a}"),
            Some(serde_json::json!({})),
        ),
    };
    let answer = ep.ok(method, &path, body, None).and_then(|v| {
        let read: api::RolloutAnswer = client::read(v.clone())?;
        Ok((read, v))
    });
    let (read, v) = match answer {
        Ok(a) => a,
        Err(e) => return finish(Err(e)),
    };
    if flags.wait {
        return follow_rollout(ep, &app, read, v, flags.out.json);
    }
    let state = read.rollout.state;
    let code = finish(shown(flags.out.json, v, |a: &api::RolloutAnswer| {
        client::rollout_text(&a.rollout)
    }));
    // Only `status` reports the rollout's outcome by its exit code: an
    // abort that starts a rollback did what it was asked.
    if action == "status" && code == ExitCode::SUCCESS {
        ExitCode::from(rollout_exit(state))
    } else {
        code
    }
}

/// `rollout --wait`: print where the rollout is, then each move as it
/// happens (asking the daemon to answer once it moves), until it ends
/// or pauses; exit as `rollout status` would then. With `--json`, only
/// the last answer is printed.
fn follow_rollout(
    ep: &Endpoint,
    app: &str,
    mut read: api::RolloutAnswer,
    mut v: serde_json::Value,
    json: bool,
) -> ExitCode {
    let say = |text: &str| {
        if !json {
            print!("{text}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
    };
    say(&client::rollout_text(&read.rollout));
    let path = format!("/v1/apps/{app}/rollout?wait=30s");
    while !rollout_settled(read.rollout.state) {
        let seen = read.rollout.transitions.last().cloned();
        let next = ep.ok("GET", &path, None, None).and_then(|next| {
            let r: api::RolloutAnswer = client::read(next.clone())?;
            Ok((r, next))
        });
        (read, v) = match next {
            Ok(n) => n,
            Err(e) => return finish(Err(e)),
        };
        for t in client::transitions_after(seen.as_ref(), &read.rollout.transitions) {
            say(&client::transition_line(t));
        }
    }
    let r = &read.rollout;
    if json {
        println!("{v:#}");
    } else if r.state == RolloutPhase::Paused {
        say(&format!(
            "rollout of {} paused: {} (resume or abort it: cutover rollout {app} resume|abort)\n",
            r.target, r.reason
        ));
    } else {
        say(&format!(
            "rollout of {} {}: {}\n",
            r.target, r.state, r.reason
        ));
    }
    ExitCode::from(rollout_exit(r.state))
}

/// `server APP COLOR ADDR drain|maint|ready [--weight N]`.
fn server_command(
    ep: &Endpoint,
    app: &str,
    color: ColorArg,
    addr: &str,
    action: ServerAction,
    weight: Option<u32>,
    c: ChangeFlags,
) -> ExitCode {
    let body = api::ServerBody {
        state: Some(match action {
            ServerAction::Ready => ServerState::Ready,
            ServerAction::Drain => ServerState::Drain,
            ServerAction::Maint => ServerState::Maint,
        }),
        weight,
        color: Some(color.into()),
        force: c.force,
        dry_run: c.dry_run,
    };
    finish(
        ep.ok(
            "POST",
            &format!("/v1/apps/{app}/servers/{addr}"),
            Some(json_of(&body)),
            c.if_match,
        )
        .and_then(|v| shown(c.json, v, client::describe_change)),
    )
}

/// `reload [--take-rules-from-file]`: says which apps' file rules differ
/// from the running ones, which stand.
fn reload(ep: &Endpoint, take_rules_from_file: bool, out: Output) -> ExitCode {
    let body = json_of(&api::ReloadBody {
        take_rules_from_file,
    });
    finish(
        ep.ok("POST", "/v1/reload", Some(body), None)
            .and_then(|v| {
                shown(out.json, v, |s: &api::Status| {
                    let mut text = format!("reloaded (epoch {})\n", s.epoch);
                    for (name, _) in s.apps.iter().filter(|(_, a)| a.drift) {
                        text.push_str(&format!(
                            "{name}: the file's rules differ from the runtime rules, which stand (cutover diff; --take-rules-from-file applies the file's)\n"
                        ));
                    }
                    text
                })
            }),
    )
}

/// `diff -c FILE`: exit 0 when the running state matches the file, 1
/// when it differs (like diff(1)), so that a script can tell.
fn diff(ep: &Endpoint, path: Option<&Path>, out: Output) -> ExitCode {
    let Some(path) = path else {
        return usage("diff compares the running state with a config file: give it with -c FILE");
    };
    let config = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let status: api::Status = match ep.get("/v1/status") {
        Ok(s) => s,
        Err(e) => return finish(Err(e)),
    };
    let d = client::diff(&config, &status);
    if out.json {
        let apps: serde_json::Map<String, serde_json::Value> = d
            .iter()
            .map(|(a, l)| (a.clone(), serde_json::json!(l)))
            .collect();
        println!(
            "{:#}",
            serde_json::json!({ "differs": !d.is_empty(), "apps": apps })
        );
    } else {
        print!("{}", diff_text(path, &d));
    }
    if d.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// `upgrade [--binary PATH]`.
fn upgrade(ep: &Endpoint, binary: Option<PathBuf>, out: Output) -> ExitCode {
    let mut body = api::UpgradeBody::default();
    if let Some(b) = binary {
        // A path means something only on the daemon's host; the
        // daemon refuses it from anywhere else anyway.
        if !ep.is_loopback() {
            return usage(format!(
                "--binary: {} is not on this host; a remote upgrade starts the installed binary ([admin] upgrade_binary on the daemon's host)",
                ep.url()
            ));
        }
        // The daemon resolves it from its own directory: make it absolute.
        body.binary = Some(std::fs::canonicalize(&b).unwrap_or(b));
    }
    finish(
        ep.ok("POST", "/v1/upgrade", Some(json_of(&body)), None)
            .and_then(|v| {
                shown(out.json, v, |u: &api::Upgraded| {
                    format!(
                        "upgraded: pid {} serves now; pid {} drains and exits\n",
                        u.pid, u.old_pid
                    )
                })
            }),
    )
}

/// A request body as JSON.
fn json_of(body: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(body).unwrap_or_default()
}

/// `--reason`: what the daemon records as is (it would drop other bytes
/// and cut a longer one), so anything else is refused here, not mangled.
fn check_reason(r: &str) -> Result<(), String> {
    if let Some(c) = r.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!(
            "--reason: printable ASCII only (letters, digits, punctuation, spaces), got {c:?}"
        ));
    }
    if r.len() > 200 {
        return Err(format!("--reason: at most 200 characters, got {}", r.len()));
    }
    if r.trim().is_empty() {
        return Err("--reason: give some text".into());
    }
    Ok(())
}

fn diff_text(path: &Path, d: &[(String, Vec<String>)]) -> String {
    let mut s = String::new();
    if d.is_empty() {
        let _ = writeln!(s, "the running state matches {}", path.display());
    }
    for (app, lines) in d {
        for l in lines {
            let _ = writeln!(s, "{app}: {l}");
        }
    }
    s
}

/// `shift` or `mirror`: `[APP] PERCENT` (and the mirror's `--compare`),
/// sent to `/v1/apps/{app}/{verb}`.
fn percent_change(
    ep: &Endpoint,
    verb: &str,
    method: &str,
    args: &[String],
    (compare, guard): (Option<Vec<crate::model::Compared>>, Option<String>),
    c: ChangeFlags,
) -> ExitCode {
    let (app, percent) = match app_percent(verb, args) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let app = match client::pick_app(ep, app) {
        Ok(a) => a,
        Err(m) => return usage(m),
    };
    let body = api::ChangeBody {
        percent: Some(percent),
        compare,
        guard,
        ..c.body()
    };
    finish(
        ep.ok(
            method,
            &format!("/v1/apps/{app}/{verb}"),
            Some(json_of(&body)),
            c.if_match,
        )
        .and_then(|v| shown(c.json, v, client::describe_change)),
    )
}

/// `flip` or `rollback` of one app, or of every app / the last change.
fn change(
    ep: &Endpoint,
    verb: &str,
    app: Option<String>,
    body: api::ChangeBody,
    flags: ChangeFlags,
) -> ExitCode {
    let path = match &app {
        Some(a) => format!("/v1/apps/{a}/{verb}"),
        None => format!("/v1/{verb}"),
    };
    finish(
        ep.ok("POST", &path, Some(json_of(&body)), flags.if_match)
            .and_then(|v| shown(flags.json, v, client::describe_change)),
    )
}

/// `rules [APP] [list|add|set|remove] [NAME]`. Any other word where the
/// action goes is a usage error: nothing is listed in place of a typo.
fn rules_command(ep: &Endpoint, args: Vec<String>, rule: RuleArgs, flags: ChangeFlags) -> ExitCode {
    let (app, action, rest) = match rules_words(&args) {
        Ok(w) => w,
        Err(code) => return code,
    };
    let app = match client::pick_app(ep, app) {
        Ok(a) => a,
        Err(m) => return usage(m),
    };
    let path = format!("/v1/apps/{app}/rules");
    match action.as_str() {
        "list" if rest.is_empty() => finish(ep.ok("GET", &path, None, None).and_then(|v| {
            shown(flags.json, v, |r: &api::Rules| {
                client::rules_table(&r.rules)
            })
        })),
        "list" => usage("rules list takes no more words"),
        "remove" => match rest.as_slice() {
            [name] => remove_rule(ep, &app, name, &flags),
            _ => usage("rules remove takes the rule's NAME"),
        },
        "set" => match (rest.as_slice(), rule.only_percent()) {
            ([name], Ok(percent)) => set_rule(ep, &app, name, percent, &flags),
            ([_], Err(message)) => usage(message),
            _ => usage("rules set takes the rule's NAME and --percent P"),
        },
        _ if !rest.is_empty() => usage(format!(
            "rules add takes its rule as flags, not {:?}",
            rest.join(" ")
        )),
        _ => match rule.spec() {
            Ok(spec) => add_rule(ep, &app, spec, &flags),
            Err(message) => usage(message),
        },
    }
}

/// `[APP] [list|add|set|remove] [NAME]`: the app, the action, the words after.
type RulesWords = (Option<String>, String, Vec<String>);

fn rules_words(args: &[String]) -> Result<RulesWords, ExitCode> {
    const ACTIONS: [&str; 4] = ["list", "add", "set", "remove"];
    let is_action = |a: &str| ACTIONS.contains(&a);
    Ok(match args {
        [] => (None, "list".into(), vec![]),
        [a] if is_action(a) => (None, a.clone(), vec![]),
        [a, b, rest @ ..] if is_action(a) => {
            // `rules remove APP NAME` or `rules remove NAME` (and set).
            if (a == "remove" || a == "set") && !rest.is_empty() {
                (Some(b.clone()), a.clone(), rest.to_vec())
            } else {
                let mut r = vec![b.clone()];
                r.extend_from_slice(rest);
                (None, a.clone(), r)
            }
        }
        [app, a, rest @ ..] if is_action(a) => (Some(app.clone()), a.clone(), rest.to_vec()),
        [app] if !app.starts_with('-') => (Some(app.clone()), "list".into(), vec![]),
        [_, other, ..] | [other] => {
            return Err(usage(format!(
                "rules: unknown action {other:?}: use list, add, set or remove"
            )))
        }
    })
}

/// `?force=true&dry_run=true` as the flags say (the rules calls take
/// them in the query, their body being the rules).
fn change_query(flags: &ChangeFlags) -> String {
    let mut q = Vec::new();
    if flags.force {
        q.push("force=true");
    }
    if flags.dry_run {
        q.push("dry_run=true");
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// `rules [APP] remove NAME`.
fn remove_rule(ep: &Endpoint, app: &str, name: &str, flags: &ChangeFlags) -> ExitCode {
    let path = format!("/v1/apps/{app}/rules/{name}{}", change_query(flags));
    finish(ep.ok("DELETE", &path, None, flags.if_match).and_then(|v| {
        shown(flags.json, v, |s: &api::Status| {
            let dry = if s.dry_run == Some(true) {
                "dry run: would remove"
            } else {
                "removed"
            };
            format!("{dry} rule {name:?} from {app}\n")
        })
    }))
}

/// `rules [APP] set NAME --percent P`: the daemon changes that rule as
/// it stands when the change is applied, so nothing read here goes stale.
fn set_rule(ep: &Endpoint, app: &str, name: &str, percent: f64, flags: &ChangeFlags) -> ExitCode {
    let body = api::ChangeBody {
        percent: Some(percent),
        ..flags.body()
    };
    let path = format!("/v1/apps/{app}/rules/{name}");
    let result = ep.ok("PATCH", &path, Some(json_of(&body)), flags.if_match);
    finish(result.and_then(|v| rules_answer(flags, app, v)))
}

/// A rules change's answer: the app's rules as they now stand (or would).
fn rules_answer(flags: &ChangeFlags, app: &str, v: serde_json::Value) -> anyhow::Result<String> {
    shown(flags.json, v, |s: &api::Status| {
        let dry = if s.dry_run == Some(true) {
            "dry run, unchanged:\n"
        } else {
            ""
        };
        let rules = s.apps.get(app).map_or(&[][..], |a| &a.rules[..]);
        format!("{dry}{}", client::rules_table(rules))
    })
}

/// `rules [APP] add ...`: read, append, write back with If-Match, so a
/// concurrent change is refused (412) rather than lost.
fn add_rule(ep: &Endpoint, app: &str, spec: RuleSpec, flags: &ChangeFlags) -> ExitCode {
    let path = format!("/v1/apps/{app}/rules");
    let result = ep.get::<api::Rules>(&path).and_then(|mut current| {
        let epoch = flags.if_match.or(Some(current.epoch));
        current.rules.push(spec);
        let put = format!("{path}{}", change_query(flags));
        ep.ok("PUT", &put, Some(json_of(&current.rules)), epoch)
    });
    finish(result.and_then(|v| rules_answer(flags, app, v)))
}

fn load_or_report(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprintln!("{}: {} error(s):", path.display(), errors.len());
        for e in &errors {
            eprintln!("  {e}");
        }
        ExitCode::from(EXIT_USAGE)
    })
}

fn run(path: &Path, reset_state: bool, handed_over_lock: Option<std::fs::File>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            // Started by `cutover upgrade`: the old process says why.
            crate::handover::signal_failure(&format!("{}: {}", path.display(), errors.join("; ")));
            return load_or_report(path)
                .err()
                .unwrap_or(ExitCode::from(EXIT_USAGE));
        }
    };
    // A successor is started with this same command line.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let timeout = config.server.upgrade_timeout;
    // One daemon per state file, checked before anything is bound.
    let state_lock = match &config.state.file {
        None => None,
        Some(file) => match StateLock::acquire(file, handed_over_lock) {
            Ok(lock) => Some(std::sync::Arc::new(lock)),
            Err(e) => {
                crate::handover::signal_failure(&e.to_string());
                eprintln!("cutover: {e}");
                return ExitCode::from(EXIT_FAILED);
            }
        },
    };
    serve(
        config,
        crate::Options {
            reset_state,
            upgrade: Some((args, timeout)),
            state_lock,
        },
    )
}

fn serve(config: Config, options: crate::Options) -> ExitCode {
    let listeners = match crate::Listeners::bind(&config) {
        Ok(l) => l,
        Err(e) => {
            crate::handover::signal_failure(&e.to_string());
            eprintln!("cutover: {e}");
            return ExitCode::from(1);
        }
    };
    match crate::run_with(config, listeners, options, shutdown_signal()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::handover::signal_failure(&e.to_string());
            eprintln!("cutover: {e}");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn check(path: &Path, json: bool) -> ExitCode {
    let loaded = Config::load(path).map(crate::control::resolve::for_check);
    if json {
        // `{"ok", "errors", "warnings", "runtime_differs"}` for scripts.
        let (ok, errors, warnings, differs) = match &loaded {
            Ok(c) => (
                true,
                vec![],
                c.warnings.clone(),
                runtime_diff(path).map(|d| !d.is_empty()),
            ),
            Err(e) => (false, Vec::<String>::from(e.clone()), vec![], None),
        };
        println!(
            "{:#}",
            serde_json::json!({ "ok": ok, "errors": errors, "warnings": warnings, "runtime_differs": differs })
        );
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_USAGE)
        };
    }
    match loaded {
        Ok(config) => {
            for w in &config.warnings {
                eprintln!("warning: {w}");
            }
            print!("{}", summary(&config));
            println!("{}: ok", path.display());
            runtime_differences(path);
            ExitCode::SUCCESS
        }
        // A bad config is a usage error, for `check` as for `run`.
        Err(errors) => {
            eprintln!("{}: {} error(s):", path.display(), errors.len());
            for e in &errors {
                eprintln!("  {e}");
            }
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// How the runtime state of the daemon this config describes differs from
/// it, when that daemon answers within half a second.
fn runtime_diff(path: &Path) -> Option<Vec<(String, Vec<String>)>> {
    let ep = Endpoint::resolve(&EndpointArgs {
        config: Some(path.to_path_buf()),
        ..EndpointArgs::default()
    })
    .ok()?;
    let a = ep.authority.to_socket_addrs().ok()?.next()?;
    std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_millis(500)).ok()?;
    let config = Config::load(path).ok()?;
    let status: api::Status = ep.get("/v1/status").ok()?;
    Some(client::diff(&config, &status))
}

/// When the daemon this config describes answers on its admin API (within
/// half a second), say whether its runtime state differs from the file.
fn runtime_differences(path: &Path) {
    match runtime_diff(path) {
        None => println!("(no daemon of this config answers: runtime state not compared)"),
        Some(d) if d.is_empty() => println!("runtime state matches this file"),
        Some(d) => {
            println!("runtime state differs:");
            for (app, lines) in &d {
                for l in lines {
                    println!("  {app}: {l}");
                }
            }
        }
    }
}

/// A one-screen description of a valid config.
pub fn summary(c: &Config) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "listen {:?}  tls {:?}  workers {}  admin {}",
        c.server
            .listen
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>(),
        c.server
            .listen_tls
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>(),
        c.server.worker_count(),
        c.admin.listen
    );
    if let Ok((_, certs, _)) = crate::tls::CertStore::load(&c.tls) {
        for cert in certs {
            let expires = std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(cert.not_after.max(0) as u64);
            let _ = writeln!(
                s,
                "certificate {}: {}  (expires {})",
                cert.file,
                cert.names.join(", "),
                humantime::format_rfc3339_seconds(expires)
            );
        }
    }
    for app in &c.apps {
        summarize_app(&mut s, app);
    }
    s
}

/// The summary's lines for one app: hosts, pools, rules and mirroring.
fn summarize_app(s: &mut String, app: &AppConfig) {
    let hosts = if app.hosts.is_empty() {
        "(any host)".to_string()
    } else {
        app.hosts
            .iter()
            .map(HostPattern::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        s,
        "app {}: {} {}  live {}  standby {}%  sticky {}",
        app.name,
        hosts,
        app.path_prefix,
        app.live,
        app.standby_percent,
        match &app.sticky {
            Sticky::None => "none".to_string(),
            other => other.to_string(),
        }
    );
    for (color, pool) in ["blue", "green"].iter().zip(&app.pools) {
        let _ = writeln!(s, "  {color:<5} {}", pool_summary(pool));
    }
    for r in &app.rules {
        let _ = writeln!(
            s,
            "  rule {} -> {} ({}%)",
            r.name,
            r.to,
            r.percent.unwrap_or(100.0)
        );
    }
    let m = &app.mirror;
    if m.percent > 0.0 {
        let methods: Vec<&str> = m.methods.iter().map(http::Method::as_str).collect();
        let _ = writeln!(
            s,
            "  mirror {}% of live traffic to standby ({}; bodies up to {} bytes; compare {}; timeout {})",
            m.percent,
            methods.join(", "),
            m.max_body,
            crate::model::Compared::join(&m.compared()),
            humantime::format_duration(m.timeout)
        );
    }
}

/// One pool's servers (with weights other than 1) and its marks: health
/// checks, TLS, PROXY protocol.
fn pool_summary(pool: &PoolConfig) -> String {
    let servers: Vec<String> = pool
        .servers
        .iter()
        .map(|s| {
            if s.weight == 1 {
                s.addr.to_string()
            } else {
                format!("{} (weight {})", s.addr, s.weight)
            }
        })
        .collect();
    let mut marks = Vec::new();
    if pool.health.is_some() {
        marks.push("health checked".to_string());
    }
    match &pool.tls {
        Some(t) if t.insecure_skip_verify => marks.push("tls, not verified".into()),
        Some(_) => marks.push("tls".into()),
        None => {}
    }
    match pool.proxy_protocol {
        Some(crate::config::ProxyProtocol::V1) => marks.push("PROXY v1".into()),
        Some(crate::config::ProxyProtocol::V2) => marks.push("PROXY v2".into()),
        None => {}
    }
    let marks = if marks.is_empty() {
        String::new()
    } else {
        format!("  [{}]", marks.join(", "))
    };
    format!("{}{marks}", servers.join(", "))
}

fn demo() -> ExitCode {
    let config = match Config::from_toml(crate::demo::DEMO_CONFIG) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo config: {}", e.join("; "));
            return ExitCode::from(1);
        }
    };
    let blue = config.apps[0].pools[0].servers[0].addr;
    let green = config.apps[0].pools[1].servers[0].addr;
    if let Err(e) = crate::demo::start_upstreams(blue, green) {
        eprintln!("cutover demo: cannot start the demo upstreams on {blue} and {green}: {e}");
        return ExitCode::from(1);
    }
    let url = format!("http://{}/", config.server.listen[0]);
    println!("cutover demo: proxy on {url}  (blue upstream {blue}, green upstream {green})");
    println!();
    println!("  curl {url}                              -> blue");
    println!("  curl -H 'x-preview: green' {url}        -> green (rule \"testers\")");
    println!("  curl -A 'iPhone' -i {url}               -> half of mobile users get green, sticky by cookie");
    println!();
    println!("Ctrl-C stops it.");
    serve(config, crate::Options::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_status_exits_0_succeeded_2_not_rolled_out_6_under_way() {
        for phase in RolloutPhase::ALL {
            let expected = match phase {
                RolloutPhase::Succeeded => 0,
                RolloutPhase::Failed
                | RolloutPhase::Aborted
                | RolloutPhase::Superseded
                | RolloutPhase::RollingBack => 2,
                _ => 6,
            };
            assert_eq!(rollout_exit(phase), expected, "{phase}");
            let stops = !phase.is_active() || phase == RolloutPhase::Paused;
            assert_eq!(rollout_settled(phase), stops, "{phase}");
        }
    }
}
