//! The command line (SPEC §2): clap definitions and what each subcommand
//! does. `main.rs` only parses, sets up logging and calls [`Cli::execute`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::client::{self, Endpoint, EndpointArgs};
use crate::config::{Config, HostPattern, Sticky};

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
    /// Validate a config: print a summary, or every error with its key.
    Check {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the proxy on the embedded demo config with two demo upstreams.
    Demo,
    /// Show apps, live colour, split, rules, servers with health.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        endpoint: ClientArgs,
    },
    /// Send all traffic of APP (or of every app, atomically) to its standby colour.
    Flip {
        app: Option<String>,
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
    /// List, add or remove canary rules: `rules [APP] [list | add --name N --to C ... | remove NAME]`.
    Rules {
        /// `[APP] [list|add|remove] [NAME]`.
        args: Vec<String>,
        #[command(flatten)]
        rule: RuleArgs,
        #[command(flatten)]
        endpoint: ClientArgs,
    },
    /// The recent changes: time, who, before -> after.
    History {
        /// Show at most this many, newest last.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        endpoint: ClientArgs,
    },
}

/// The flags every state change takes.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ChangeFlags {
    /// Apply even if traffic would go to a pool with no healthy server.
    #[arg(long)]
    pub force: bool,
    /// Show the result without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

impl ChangeFlags {
    fn body(self) -> serde_json::Value {
        serde_json::json!({ "force": self.force, "dry_run": self.dry_run })
    }
}

/// How the client subcommands reach the admin API.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Admin API URL (else $CUTOVER_ADMIN, else the config's [admin] listen, else http://127.0.0.1:9901).
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
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
    /// Share of matching users, 0-100 (add; default 100).
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

    pub fn execute(self) -> ExitCode {
        match self.command {
            Command::Run {
                config,
                reset_state,
            } => run(&config, reset_state),
            Command::Check { config } => check(&config),
            Command::Demo => demo(),
            other => client_command(other),
        }
    }
}

fn endpoint(args: &ClientArgs) -> Result<Endpoint, ExitCode> {
    Endpoint::resolve(&EndpointArgs {
        admin: args.admin.clone(),
        token_file: args.token_file.clone(),
        config: args.config.clone(),
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

/// Print a call's result: 0 when done, 1 when refused or unreachable.
fn finish(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cutover: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn client_command(cmd: Command) -> ExitCode {
    let args = match &cmd {
        Command::Status { endpoint, .. }
        | Command::Flip { endpoint, .. }
        | Command::Shift { endpoint, .. }
        | Command::Rollback { endpoint, .. }
        | Command::Rules { endpoint, .. }
        | Command::History { endpoint, .. } => endpoint,
        Command::Run { .. } | Command::Check { .. } | Command::Demo => {
            unreachable!("handled by execute")
        }
    };
    let ep = match endpoint(args) {
        Ok(ep) => ep,
        Err(c) => return c,
    };
    match cmd {
        Command::Status { json, .. } => finish(ep.ok("GET", "/v1/status", None, None).map(|v| {
            if json {
                format!("{v:#}\n")
            } else {
                client::status_table(&v)
            }
        })),
        Command::Flip { app, change: c, .. } => change(&ep, "flip", app, c),
        Command::Rollback { app, change: c, .. } => change(&ep, "rollback", app, c),
        Command::Shift {
            args, change: c, ..
        } => {
            let (app, pct) = match args.as_slice() {
                [p] => (None, p),
                [a, p] => (Some(a.clone()), p),
                _ => return usage("shift takes [APP] PERCENT"),
            };
            let Ok(percent) = pct.trim_end_matches('%').parse::<f64>() else {
                return usage(format!(
                    "PERCENT must be a number from 0 to 100, got {pct:?}"
                ));
            };
            let app = match client::pick_app(&ep, app) {
                Ok(a) => a,
                Err(m) => return usage(m),
            };
            let mut body = c.body();
            body["percent"] = serde_json::json!(percent);
            finish(
                ep.ok("POST", &format!("/v1/apps/{app}/shift"), Some(body), None)
                    .map(|v| client::describe_change(&v)),
            )
        }
        Command::Rules { args, rule, .. } => rules_command(&ep, args, rule),
        Command::History { limit, json, .. } => {
            finish(ep.ok("GET", "/v1/history", None, None).map(|v| {
                if json {
                    format!("{v:#}\n")
                } else {
                    client::history_table(&v, limit)
                }
            }))
        }
        Command::Run { .. } | Command::Check { .. } | Command::Demo => {
            unreachable!("handled by execute")
        }
    }
}

/// `flip` or `rollback` of one app, or of every app / the last change.
fn change(ep: &Endpoint, verb: &str, app: Option<String>, flags: ChangeFlags) -> ExitCode {
    let path = match &app {
        Some(a) => format!("/v1/apps/{a}/{verb}"),
        None => format!("/v1/{verb}"),
    };
    finish(
        ep.ok("POST", &path, Some(flags.body()), None)
            .map(|v| client::describe_change(&v)),
    )
}

/// `rules [APP] [list|add|remove] [NAME]`, in either order of APP and action.
fn rules_command(ep: &Endpoint, args: Vec<String>, rule: RuleArgs) -> ExitCode {
    const ACTIONS: [&str; 3] = ["list", "add", "remove"];
    let (mut app, mut action, mut rest) = (None, None, Vec::new());
    for a in args {
        if action.is_none() && ACTIONS.contains(&a.as_str()) {
            action = Some(a);
        } else if action.is_none() && app.is_none() {
            app = Some(a);
        } else {
            rest.push(a);
        }
    }
    let action = action.unwrap_or_else(|| "list".into());
    // `rules remove APP NAME`: the first extra word is the app.
    if action == "remove" && app.is_none() && rest.len() == 2 {
        app = Some(rest.remove(0));
    }
    let app = match client::pick_app(ep, app) {
        Ok(a) => a,
        Err(m) => return usage(m),
    };
    let path = format!("/v1/apps/{app}/rules");
    match action.as_str() {
        "list" => finish(
            ep.ok("GET", &path, None, None)
                .map(|v| client::rules_table(&v["rules"])),
        ),
        "remove" => {
            let [name] = rest.as_slice() else {
                return usage("rules remove takes the rule's NAME");
            };
            finish(
                ep.ok("DELETE", &format!("{path}/{name}"), None, None)
                    .map(|_| format!("removed rule {name:?} from {app}\n")),
            )
        }
        _ => {
            let (Some(name), Some(to)) = (rule.name.clone(), rule.to.clone()) else {
                return usage("rules add needs --name and --to");
            };
            let pair =
                |s: &Option<String>, what: &str| -> Result<Option<serde_json::Value>, ExitCode> {
                    match s {
                        None => Ok(None),
                        Some(s) => match s.split_once('=') {
                            Some((n, v)) => Ok(Some(serde_json::json!({ "name": n, "value": v }))),
                            None => Err(usage(format!("--{what} takes NAME=VALUE, got {s:?}"))),
                        },
                    }
                };
            let header = match pair(&rule.header, "header") {
                Ok(h) => h,
                Err(c) => return c,
            };
            let cookie = match pair(&rule.cookie, "cookie") {
                Ok(c) => c,
                Err(c) => return c,
            };
            let mut spec = serde_json::json!({ "name": name, "to": to });
            if let Some(p) = rule.percent {
                spec["percent"] = p.into();
            }
            if let Some(u) = rule.user_agent {
                spec["user_agent"] = u.into();
            }
            if let Some(h) = header {
                spec["header"] = h;
            }
            if let Some(c) = cookie {
                spec["cookie"] = c;
            }
            if !rule.client_ip.is_empty() {
                spec["client_ip"] = rule.client_ip.into();
            }
            if let Some(p) = rule.path_prefix {
                spec["path_prefix"] = p.into();
            }
            // Read, append, write back with If-Match: a concurrent change is
            // refused (412) rather than lost.
            let result = ep.ok("GET", &path, None, None).and_then(|current| {
                let epoch = current["epoch"].as_u64();
                let mut rules = current["rules"].as_array().cloned().unwrap_or_default();
                rules.push(spec);
                ep.ok("PUT", &path, Some(serde_json::Value::Array(rules)), epoch)
            });
            finish(result.map(|v| client::rules_table(&v["apps"][&app]["rules"])))
        }
    }
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

fn run(path: &Path, reset_state: bool) -> ExitCode {
    let config = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    serve(config, crate::Options { reset_state })
}

fn serve(config: Config, options: crate::Options) -> ExitCode {
    let listeners = match crate::Listeners::bind(&config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cutover: {e}");
            return ExitCode::from(1);
        }
    };
    match crate::run_with(config, listeners, options, shutdown_signal()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
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

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            for w in &config.warnings {
                eprintln!("warning: {w}");
            }
            print!("{}", summary(&config));
            println!("{}: ok", path.display());
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
            let _ = writeln!(
                s,
                "  {color:<5} {}{}",
                servers.join(", "),
                if pool.health.is_some() {
                    "  [health checked]"
                } else {
                    ""
                }
            );
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
    }
    s
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
