//! The `sse-proxy` command.

use clap::{Parser, Subcommand};
use sse_proxy::app::App;
use sse_proxy::config::{Config, ConfigError, UpstreamUrl};
use sse_proxy::demo;
use sse_proxy::metrics::Prometheus;
use sse_proxy::reload::{ReloadError, Reloader};
use sse_proxy::server::{self, Listener, ServerError};
use sse_proxy::settings::Settings;
use sse_proxy::telemetry::{self, LogFormat};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Exit code for a bad configuration or command line (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// An SSE-aware reverse proxy that re-frames LLM token streams.
#[derive(Parser)]
#[command(name = "sse-proxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file [default: proxy.toml].
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Main listener address (overrides server.listen).
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// Admin listener address (overrides server.admin_listen).
    #[arg(long, global = true)]
    admin_listen: Option<SocketAddr>,
    /// Threads serving the main listener (overrides server.workers).
    #[arg(long, global = true)]
    workers: Option<usize>,
    /// Backend URL (overrides upstream.url).
    #[arg(long, global = true)]
    upstream: Option<String>,
    /// Log format (colours only when stderr is a terminal and NO_COLOR is unset).
    #[arg(long, value_enum, default_value = "pretty", global = true)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and exit (0 when valid).
    Check,
    /// Run a synthetic LLM backend with the proxy and its demo page in front of it.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match cli.command {
        Some(Command::Check) => match load(&cli.overrides()) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} stream route(s))",
                    cli.config_path().display(),
                    Settings::build(&cfg).routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Some(Command::Demo) => run_demo(&cli),
        None => {
            let overrides = cli.overrides();
            match load(&overrides) {
                Ok(cfg) => run(cfg, overrides),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
    }
}

impl Cli {
    /// `--config`, or `proxy.toml`.
    fn config_path(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(|| PathBuf::from("proxy.toml"))
    }

    /// The config file and what the command line overrides in it.
    fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config_path(),
            listen: self.listen,
            admin_listen: self.admin_listen,
            upstream: self.upstream.clone(),
            workers: self.workers,
        }
    }
}

/// The config file and the command-line flags that override its values: read at start and at
/// every reload, so a reload keeps the overrides.
#[derive(Clone)]
struct Overrides {
    config: PathBuf,
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    upstream: Option<String>,
    workers: Option<usize>,
}

/// Reads and checks the config file and applies the command-line overrides (at start and at
/// every reload).
fn load(cli: &Overrides) -> Result<Config, ConfigError> {
    let mut cfg = Config::from_file(&cli.config)?;
    if let Some(a) = cli.listen {
        cfg.server.listen = a;
    }
    if let Some(a) = cli.admin_listen {
        cfg.server.admin_listen = a;
    }
    if let Some(u) = &cli.upstream {
        cfg.upstream.url = parse_upstream(u)?;
    }
    if let Some(n) = cli.workers {
        cfg.server.workers = Some(n);
        cfg.check_workers().map_err(|message| ConfigError::Invalid {
            file: "--workers".into(),
            line: 1,
            col: 1,
            message,
        })?;
    }
    if cli.listen.is_some() || cli.admin_listen.is_some() {
        cfg.check_listeners().map_err(|message| ConfigError::Invalid {
            file: if cli.listen.is_some() {
                "--listen"
            } else {
                "--admin-listen"
            }
            .into(),
            line: 1,
            col: 1,
            message,
        })?;
    }
    Ok(cfg)
}

fn parse_upstream(u: &str) -> Result<UpstreamUrl, ConfigError> {
    toml::Value::String(u.to_string())
        .try_into::<UpstreamUrl>()
        .map_err(|e| ConfigError::Invalid {
            file: "--upstream".into(),
            line: 1,
            col: 1,
            message: e.to_string(),
        })
}

/// The main runtime: signals, the admin listener, the store's background work and the shutdown
/// sequence. Client connections are served on the worker threads (`server.workers`).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// Runs the proxy with `cfg`, read from the file of `overrides` (read again on reload).
fn run(cfg: Config, overrides: Overrides) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(serve(cfg, Started::Config(overrides)))
}

/// How the proxy was started: from a config file, or as `sse-proxy demo`.
enum Started {
    Config(Overrides),
    Demo,
}

impl Started {
    /// How to pick another address for `listener`: its flag, and its key where a config file was read.
    fn bind_hint(&self, listener: Listener) -> String {
        let flag = match listener {
            Listener::Main => "--listen",
            Listener::Admin => "--admin-listen",
        };
        match self {
            Started::Demo => format!(
                "hint: choose another address with {flag} ADDR (e.g. {flag} 127.0.0.1:0 for any free port)"
            ),
            Started::Config(o) => {
                let key = listener.config_key();
                format!(
                    "hint: choose another address with {flag} ADDR, or set {key} in {}",
                    o.config.display()
                )
            }
        }
    }
}

/// The process's metrics recorder, installed globally (so whatever a dependency records through
/// the `metrics` macros lands in `/metrics` too), with the proxy's metrics registered in it.
fn install_metrics() -> Result<Prometheus, String> {
    let recorder = sse_proxy::metrics::recorder().map_err(|e| e.to_string())?;
    let registered = Prometheus::register(recorder);
    metrics::set_global_recorder(registered.global())
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    Ok(registered)
}

async fn serve(cfg: Config, started: Started) -> ExitCode {
    let metrics = match install_metrics() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let bound = match server::bind(Settings::build(&cfg), shutdown.clone(), metrics).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            if let ServerError::Bind { listener, .. } = e {
                eprintln!("{}", started.bind_hint(listener));
            }
            return ExitCode::FAILURE;
        }
    };
    let bound = match started {
        Started::Config(ref o) => {
            let o = o.clone();
            bound.with_reload(cfg, Box::new(move || load(&o)))
        }
        Started::Demo => bound,
    };
    // Before the addresses are printed: a SIGHUP from then on reloads, and never ends the process.
    let hangups = reload_on_hangup(bound.reloader(), bound.app().clone());
    let (main, admin) = (bound.main_addr(), bound.admin_addr());
    let serving = match bound.start().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{}",
        serde_json::json!({ "listening": main.to_string(), "admin": admin.to_string() })
    );
    if let Started::Demo = started {
        demo_banner(main, admin);
    }
    tracing::info!(%main, %admin, "listening");
    tokio::spawn(signals(shutdown));
    if let Some(hangups) = hangups {
        tokio::spawn(hangups);
    }
    serving.serve().await;
    ExitCode::SUCCESS
}

/// First SIGTERM/SIGINT starts a graceful shutdown; a second one exits at once.
async fn signals(shutdown: CancellationToken) {
    wait_signal().await;
    tracing::info!("signal received: shutting down gracefully (send again to exit now)");
    shutdown.cancel();
    wait_signal().await;
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}

/// Every SIGHUP reloads the config file (what it changed or why it was refused is logged): the
/// task to run, listening already.
fn reload_on_hangup(
    reloader: Option<Arc<Reloader>>,
    app: Arc<App>,
) -> Option<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: reload with POST /reload on the admin listener");
                return None;
            }
        };
        Some(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP received: reloading the config file");
                match &reloader {
                    // The outcome is logged and counted by the reload itself.
                    Some(r) => {
                        let _ = r.reload().await;
                    }
                    None => sse_proxy::reload::refused(&app, &ReloadError::NoConfigFile),
                }
            }
        })
    }
    #[cfg(not(unix))]
    {
        let _ = (reloader, app);
        None::<std::future::Ready<()>>
    }
}

async fn wait_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn run_demo(cli: &Cli) -> ExitCode {
    if cli.config.is_some() || cli.upstream.is_some() {
        eprintln!("error: the demo runs its own backend and config; --config and --upstream do not apply to `sse-proxy demo`");
        return ExitCode::from(EXIT_CONFIG);
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listen = cli
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let admin = cli
        .admin_listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090)));
    rt.block_on(async move {
        let backend = match demo::start_backend(CancellationToken::new()).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: cannot start the demo backend: {e}");
                return ExitCode::FAILURE;
            }
        };
        match demo::config(backend, listen, admin) {
            Ok(cfg) => serve(cfg, Started::Demo).await,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        }
    })
}

/// The human-readable banner goes to stderr so stdout stays one machine-readable line.
fn demo_banner(main: SocketAddr, admin: SocketAddr) {
    eprintln!(
        "\nsse-proxy demo is running (a synthetic LLM backend behind the proxy):\n\
         \n  demo page   http://{main}/_sse-proxy/demo\
         \n  a stream    curl -N 'http://{main}/api/question/stream?question=hello&model=demo'\
         \n  streams     http://{admin}/streams\
         \n  metrics     http://{admin}/metrics\
         \n\nPress Ctrl-C to stop."
    );
}
