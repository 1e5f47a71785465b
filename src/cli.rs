//! The command line (SPEC §2): clap definitions and what each subcommand
//! does. `main.rs` only parses, sets up logging and calls [`Cli::execute`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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
    },
    /// Validate a config: print a summary, or every error with its key.
    Check {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the proxy on the embedded demo config with two demo upstreams.
    Demo,
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
            Command::Run { config } => run(&config),
            Command::Check { config } => check(&config),
            Command::Demo => demo(),
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

fn run(path: &Path) -> ExitCode {
    let config = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    serve(config)
}

fn serve(config: Config) -> ExitCode {
    let listeners = match crate::Listeners::bind(&config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cutover: {e}");
            return ExitCode::from(1);
        }
    };
    match crate::run(config, listeners, shutdown_signal()) {
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
            print!("{}", summary(&config));
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{}: {} error(s):", path.display(), errors.len());
            for e in &errors {
                eprintln!("  {e}");
            }
            ExitCode::from(1)
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
    serve(config)
}
