//! Live reload of the config file (SIGHUP, or `POST /reload` on the admin listener).
//!
//! The file the proxy was started with is read, checked and built into settings by the same code
//! as at start (with the same command-line overrides); new requests and streams run with them,
//! while running streams keep the settings they started with. An invalid file is refused whole and
//! the running config goes on. What is bound or built once at start (the listeners, the connection
//! slots, the stream store and its bounds, the identity key, the learner's state) keeps its running
//! value: a file that changes it is applied otherwise and those keys are reported as needing a
//! restart.

use crate::app::App;
use crate::config::{Config, ConfigError};
use crate::metrics::{Prometheus, ReloadResult};
use crate::settings::Settings;
use crate::sync::lock;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Reads, checks and builds the config file the proxy was started with, overrides applied.
pub type Load = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Reloads the config of one running proxy.
pub struct Reloader {
    app: Arc<App>,
    prometheus: Prometheus,
    load: Load,
    /// The config running now, as read; the lock also keeps two reloads from interleaving.
    running: Mutex<Config>,
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file cannot be read or is invalid (`file:line:col: ...`, as at start).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The proxy runs a config of its own (`sse-proxy demo`, a test).
    #[error("this proxy was started without a config file (sse-proxy demo): there is nothing to reload")]
    NoConfigFile,
    /// The reload task failed before it finished.
    #[error("the reload did not finish: {0}")]
    Interrupted(String),
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// The config sections that changed for new requests and streams (`batching`, `stream`...).
    pub changed: Vec<&'static str>,
    /// Keys whose new value differs but cannot change while running: their running value is kept
    /// until a restart.
    pub restart_required: Vec<&'static str>,
}

impl Reloader {
    /// Reloads `app`, which runs `running` as read by `load`; route metrics register in `prometheus`.
    pub fn new(app: Arc<App>, prometheus: Prometheus, running: Config, load: Load) -> Self {
        Reloader {
            app,
            prometheus,
            load,
            running: Mutex::new(running),
        }
    }

    /// Reloads off the async workers (the file is read, a progress state file may be): what
    /// changed, or why the new config was refused (the running one goes on).
    pub async fn reload(self: &Arc<Self>) -> Result<Applied, ReloadError> {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.reload_now()).await {
            Ok(result) => result,
            Err(e) => {
                let e = ReloadError::Interrupted(e.to_string());
                refused(&self.app, &e);
                Err(e)
            }
        }
    }

    /// [`Reloader::reload`], on this thread.
    pub fn reload_now(&self) -> Result<Applied, ReloadError> {
        let mut running = lock(&self.running);
        let new = match (self.load)() {
            Ok(cfg) => cfg,
            Err(e) => {
                let e = ReloadError::from(e);
                refused(&self.app, &e);
                return Err(e);
            }
        };
        let plan = plan(&running, new);
        let mut settings = Settings::build(&plan.config);
        settings.count_into(&self.prometheus);
        self.app.apply(settings);
        *running = plan.config;
        let metrics = &self.app.metrics;
        metrics.config_reloads.increment(ReloadResult::Ok);
        metrics.config_last_reload_success.set(unix_now());
        let applied = plan.applied;
        tracing::info!(changed = ?applied.changed, "config reloaded: new requests and streams use it");
        if !applied.restart_required.is_empty() {
            tracing::warn!(
                keys = ?applied.restart_required,
                "config reload: these keys cannot change while running and keep their running value; restart the proxy to apply them"
            );
        }
        Ok(applied)
    }
}

/// Counts and logs a refused reload of `app`.
pub fn refused(app: &App, e: &ReloadError) {
    app.metrics.config_reloads.increment(ReloadResult::Error);
    tracing::error!(error = %e, "config reload refused; the running config goes on");
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A new config made runnable next to the running one.
#[derive(Debug)]
pub struct Plan {
    /// The new config, with the running value of every key that cannot change while running.
    pub config: Config,
    /// What applying it changes, and what it leaves for a restart.
    pub applied: Applied,
}

/// `new` with the keys that cannot change while running put back to their `running` value,
/// and what differs.
pub fn plan(running: &Config, mut new: Config) -> Plan {
    let mut restart_required = Vec::new();
    macro_rules! keep {
        ($key:literal, $($field:ident).+) => {
            if new.$($field).+ != running.$($field).+ {
                restart_required.push($key);
                new.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    // Bound at start.
    keep!("server.listen", server.listen);
    keep!("server.admin_listen", server.admin_listen);
    // One socket and one thread per worker.
    keep!("server.workers", server.workers);
    // The listeners' connection slots and deadlines, and the drain at shutdown, are set when
    // they start serving.
    keep!("server.max_connections", server.max_connections);
    keep!("server.header_read_timeout", server.header_read_timeout);
    keep!("server.idle_timeout", server.idle_timeout);
    keep!("server.shutdown_grace", server.shutdown_grace);
    // The stream store is connected at start and bounded like the logs.
    keep!("store", store);
    keep!("resume.retention", resume.retention);
    keep!("resume.max_stream_bytes", resume.max_stream_bytes);
    keep!("resume.max_total_bytes", resume.max_total_bytes);
    // Running streams' owners are hashed with the key fetched at start for this rule.
    keep!("identity", identity);
    // The learner holds them, with what it learned.
    keep!("progress.state_file", progress.state_file);
    keep!("progress.max_history", progress.max_history);
    keep!("progress.model", progress.models);
    // One event must still fit the kept log size (the same check as at start).
    if !new.one_event_fits_a_log() {
        restart_required.push("upstream.max_event_bytes");
        new.upstream.max_event_bytes = running.upstream.max_event_bytes;
    }
    let changed = changed_sections(running, &new);
    Plan {
        config: new,
        applied: Applied {
            changed,
            restart_required,
        },
    }
}

/// The top-level sections of `b` that differ from `a`, named as in the file.
fn changed_sections(a: &Config, b: &Config) -> Vec<&'static str> {
    let sections = [
        ("server", a.server != b.server),
        ("upstream", a.upstream != b.upstream),
        ("stream", a.streams != b.streams),
        ("batching", a.batching != b.batching),
        ("heartbeat", a.heartbeat != b.heartbeat),
        ("resume", a.resume != b.resume),
        ("identity", a.identity != b.identity),
        ("limits", a.limits != b.limits),
        ("progress", a.progress != b.progress),
        ("demo", a.demo != b.demo),
        ("client_metrics", a.client_metrics != b.client_metrics),
        ("store", a.store != b.store),
    ];
    sections
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[upstream]\nurl = \"http://127.0.0.1:9\"\n\n[[stream]]\npath = \"/stream\"\n";

    fn config(extra: &str) -> Config {
        Config::from_toml_str(&format!("{BASE}{extra}"), "<test>").expect("valid")
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let p = plan(&config(""), config(""));
        assert_eq!(
            p.applied,
            Applied {
                changed: vec![],
                restart_required: vec![]
            }
        );
    }

    #[test]
    fn sections_that_can_change_are_taken_as_they_are() {
        let new = "[batching]\nmax_tokens = 3\n[heartbeat]\ninterval = \"2s\"\n\
                   [limits]\nmax_streams = 7\n[progress]\nevery_tokens = 2\n\
                   [[stream]]\npath = \"/other/*\"\n";
        let p = plan(&config(""), config(new));
        assert_eq!(
            p.applied.changed,
            ["stream", "batching", "heartbeat", "limits", "progress"]
        );
        assert!(p.applied.restart_required.is_empty());
        assert_eq!(p.config.batching.max_tokens, 3);
        assert_eq!(p.config.limits.max_streams, 7);
        assert_eq!(p.config.streams.len(), 2);
    }

    #[test]
    fn keys_bound_at_start_keep_their_running_value_and_are_reported() {
        let new = "[server]\nlisten = \"127.0.0.1:18080\"\nadmin_listen = \"127.0.0.1:19090\"\n\
                   workers = 3\nroute_prefix = \"/p\"\n\
                   [store]\nkey_prefix = \"other\"\n\
                   [identity]\nfrom = \"header:authorization\"\n\
                   [resume]\nretention = \"1m\"\nclient_retry = \"2s\"\n";
        let running = config("");
        let p = plan(&running, config(new));
        assert_eq!(
            p.applied.restart_required,
            [
                "server.listen",
                "server.admin_listen",
                "server.workers",
                "store",
                "resume.retention",
                "identity"
            ]
        );
        assert_eq!(p.config.server.listen, running.server.listen);
        assert_eq!(p.config.server.admin_listen, running.server.admin_listen);
        assert_eq!(p.config.server.workers, running.server.workers);
        assert_eq!(p.config.store, running.store);
        assert_eq!(p.config.identity, running.identity);
        assert_eq!(p.config.resume.retention, running.resume.retention);
        // The rest of those sections is applied.
        assert_eq!(p.config.server.route_prefix, "/p");
        assert_eq!(p.applied.changed, ["server", "resume"]);
    }

    #[test]
    fn an_event_size_the_kept_log_size_cannot_hold_waits_for_a_restart() {
        let new = "[upstream]\nmax_event_bytes = \"2MiB\"\n[resume]\nmax_stream_bytes = \"4MiB\"\nmax_total_bytes = \"1GiB\"\n";
        let text = format!("{new}[[stream]]\npath = \"/stream\"\n")
            .replace("[upstream]\n", "[upstream]\nurl = \"http://127.0.0.1:9\"\n");
        let new = Config::from_toml_str(&text, "<test>").expect("valid on its own");
        let running = config("");
        let p = plan(&running, new);
        assert_eq!(
            p.applied.restart_required,
            [
                "resume.max_stream_bytes",
                "resume.max_total_bytes",
                "upstream.max_event_bytes"
            ]
        );
        assert_eq!(
            p.config.upstream.max_event_bytes,
            running.upstream.max_event_bytes
        );
        assert!(p.applied.changed.is_empty());
    }
}
