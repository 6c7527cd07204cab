//! The runtime settings, built once from a validated [`Config`]: typed, resolved values
//! (durations, byte counts as `usize`, enums) grouped by who uses them. Nothing after this step
//! reads the config again.

use crate::config::{self, Config};
use crate::connection::CursorSettings;
use crate::progress::{self, Cadence};
use crate::protocol::Dialect;
use crate::reframe::{batcher, token, ReaderSettings, RouteSettings};
use crate::upstream::UpstreamSettings;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use crate::config::{ModelSource, OnMiss, RoutePath, SourceSpec};

/// Everything the proxy runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listeners, client-connection deadlines and shutdown.
    pub server: Server,
    /// The backend.
    pub upstream: UpstreamSettings,
    /// One route per `[[stream]]`, in config order (the first match wins).
    pub routes: Vec<Arc<Route>>,
    /// Settings of every stream's upstream reader.
    pub reader: ReaderSettings,
    /// Settings of every downstream connection's cursor.
    pub cursor: CursorSettings,
    /// Admission limits.
    pub limits: Limits,
    /// Resumable logs.
    pub resume: Resume,
    /// Where a stream's owner is read from; `None`: the stream id is the only capability.
    pub identity: Option<SourceSpec>,
    /// Progress events; `None` when disabled.
    pub progress: Option<ProgressSettings>,
    /// The client-metrics endpoint; `None` when disabled.
    pub client_metrics: Option<ClientMetrics>,
    /// Whether the demo page is served.
    pub demo: bool,
    /// Path prefix of the proxy's own routes, such as `/_sse-proxy`.
    pub route_prefix: String,
    /// The stream store (`[store]`).
    pub store: config::Store,
}

/// Listeners, client-connection deadlines and shutdown (`[server]`).
#[derive(Debug, Clone)]
pub struct Server {
    /// Main listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// How long running streams may go on after shutdown starts.
    pub shutdown_grace: Duration,
    /// Time allowed for a request head.
    pub header_read_timeout: Duration,
    /// Time allowed for a request body the proxy reads itself.
    pub body_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Client connections on the main listener at most.
    pub max_connections: usize,
    /// Threads serving the main listener (`server.workers`, or one per core).
    pub workers: usize,
}

/// A `[[stream]]` route: which requests are on it and everything a stream of it needs.
#[derive(Debug)]
pub struct Route {
    /// Which request paths are on the route.
    pub path: RoutePath,
    /// Where the model name comes from; `None`: `default`.
    pub model_from: Option<ModelSource>,
    /// What the stream's reader needs: label, format, token and terminal rules.
    pub reader: Arc<RouteSettings>,
    /// The dialect its streams are written in (`emit`).
    pub emit: Dialect,
    /// Answers whose content type does not fit the route's format (counts nowhere until
    /// [`Settings::count_into`]).
    pub format_mismatch: metrics::Counter,
}

impl Route {
    /// The route as configured, used as a label (`/api/stream/*`).
    pub fn label(&self) -> &Arc<str> {
        &self.reader.label
    }
}

/// Admission limits (`[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Running streams in total.
    pub max_streams: usize,
    /// Running streams per identity.
    pub max_streams_per_identity: usize,
    /// Connections following one stream at once.
    pub max_followers: usize,
    /// `Retry-After` sent with 429, in whole seconds (at least 1).
    pub retry_after_secs: u64,
}

/// Resumable logs (`[resume]`; `detach_grace` and `on_disconnect` are in [`ReaderSettings`]).
#[derive(Debug, Clone, Copy)]
pub struct Resume {
    /// The `retry:` sent to clients.
    pub client_retry: Duration,
    /// How long a finished stream stays resumable.
    pub retention: Duration,
    /// Bytes one log holds at most.
    pub max_stream_bytes: usize,
    /// Bytes all logs hold together at most.
    pub max_total_bytes: usize,
    /// What a resume of an unknown stream gets.
    pub on_miss: OnMiss,
}

/// Progress events (`[progress]`, when enabled).
#[derive(Debug, Clone)]
pub struct ProgressSettings {
    /// How often a stream sends one.
    pub cadence: Cadence,
    /// What the learner starts from, keeps, and where it saves.
    pub learner: progress::Options,
}

/// The client-metrics endpoint (`[client_metrics]`, when enabled).
#[derive(Debug, Clone, Copy)]
pub struct ClientMetrics {
    /// Reports accepted per second, over all clients.
    pub per_second: u32,
}

impl Settings {
    /// The settings of a validated config.
    pub fn build(cfg: &Config) -> Settings {
        Settings {
            server: Server {
                listen: cfg.server.listen,
                admin_listen: cfg.server.admin_listen,
                shutdown_grace: cfg.server.shutdown_grace.0,
                header_read_timeout: cfg.server.header_read_timeout.0,
                body_read_timeout: cfg.server.body_read_timeout.0,
                idle_timeout: cfg.server.idle_timeout.0,
                max_connections: cfg.server.max_connections,
                workers: cfg.server.workers.unwrap_or_else(default_workers),
            },
            upstream: UpstreamSettings {
                url: cfg.upstream.url.0.clone(),
                connect_timeout: cfg.upstream.connect_timeout.0,
                response_timeout: cfg.upstream.response_timeout.0,
                max_request_body: cfg.upstream.max_request_body.bytes(),
            },
            routes: cfg.streams.iter().map(|r| Arc::new(route(r))).collect(),
            reader: ReaderSettings {
                batching: batcher::Limits {
                    max_delay: cfg.batching.max_delay.0,
                    max_tokens: cfg.batching.max_tokens,
                    max_bytes: cfg.batching.max_bytes.bytes(),
                    adaptive: cfg.batching.adaptive,
                },
                idle_timeout: cfg.upstream.idle_timeout.0,
                max_event_bytes: cfg.upstream.max_event_bytes.bytes(),
                detach_grace: cfg.resume.detach_grace.0,
                cancel_on_disconnect: cfg.resume.on_disconnect == config::OnDisconnect::Cancel,
                shutdown_grace: cfg.server.shutdown_grace.0,
            },
            cursor: CursorSettings {
                heartbeat: cfg.heartbeat.interval.0,
                max_write_bytes: cfg.limits.max_write_bytes.bytes(),
            },
            limits: Limits {
                max_streams: cfg.limits.max_streams,
                max_streams_per_identity: cfg.limits.max_streams_per_identity,
                max_followers: cfg.limits.max_followers,
                retry_after_secs: cfg.limits.retry_after.0.as_secs().max(1),
            },
            resume: Resume {
                client_retry: cfg.resume.client_retry.0,
                retention: cfg.resume.retention.0,
                max_stream_bytes: cfg.resume.max_stream_bytes.bytes(),
                max_total_bytes: cfg.resume.max_total_bytes.bytes(),
                on_miss: cfg.resume.on_miss,
            },
            identity: cfg.identity.from.clone(),
            progress: cfg.progress.enabled.then(|| progress_settings(&cfg.progress)),
            client_metrics: cfg.client_metrics.enabled.then_some(ClientMetrics {
                per_second: cfg.client_metrics.per_second,
            }),
            demo: cfg.demo.enabled,
            route_prefix: cfg.server.route_prefix.clone(),
            store: cfg.store.clone(),
        }
    }

    /// Registers the metrics labelled by route in `prometheus`.
    pub fn count_into(&mut self, prometheus: &crate::metrics::Prometheus) {
        for route in &mut self.routes {
            let counter = prometheus.route_counter(crate::metrics::FORMAT_MISMATCH, route.label());
            *route = Arc::new(Route {
                path: route.path.clone(),
                model_from: route.model_from.clone(),
                reader: route.reader.clone(),
                emit: route.emit,
                format_mismatch: counter,
            });
        }
    }

    /// The route a request path is on, if any.
    pub fn route(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.path.matches(path))
    }

    /// The dialect of the route labelled `label` (native when no route has that label any more).
    pub fn dialect_of(&self, label: &str) -> Dialect {
        self.routes
            .iter()
            .find(|r| &**r.label() == label)
            .map_or(Dialect::Native, |r| r.emit)
    }

    /// The rest of a path under [`Settings::route_prefix`] (`/client.js`), if it is under it.
    pub fn own_route<'p>(&self, path: &'p str) -> Option<&'p str> {
        path.strip_prefix(self.route_prefix.as_str())
            .filter(|rest| rest.starts_with('/'))
    }
}

/// One worker per core the process may use, as the OS reports it (1 when it does not say).
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn route(r: &config::StreamRoute) -> Route {
    Route {
        path: r.path.clone(),
        model_from: r.model_from.clone(),
        emit: r.emit,
        reader: Arc::new(RouteSettings {
            label: r.path.as_label().into(),
            token_event: r.token_event.clone(),
            token_path: r.token_path.as_ref().map(|p| token::Pointer::parse(&p.0)),
            terminal_events: r.terminal_events.clone(),
            format: r.format,
            terminal_data: r.terminal_data.clone(),
            skip_empty_tokens: r.skip_empty_tokens,
            error_events: r.error_events.clone(),
        }),
        format_mismatch: metrics::Counter::noop(),
    }
}

fn progress_settings(p: &config::Progress) -> ProgressSettings {
    ProgressSettings {
        cadence: Cadence {
            every_tokens: p.every_tokens,
            min_interval: p.min_interval.0,
        },
        learner: progress::Options {
            priors: p.models.clone(),
            state_file: p.state_file.clone(),
            max_history: p.max_history,
            max_keys: progress::DEFAULT_MAX_KEYS,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &str) -> Settings {
        let text = format!("[upstream]\nurl = \"http://127.0.0.1:9/base\"\n{extra}");
        Settings::build(&Config::from_toml_str(&text, "<test>").expect("valid"))
    }

    #[test]
    fn routes_match_in_config_order_with_their_own_settings() {
        let s = settings(
            r#"
[[stream]]
path = "/a/exact"
token_event = "token"
token_path = "/choices/0/text"
terminal_events = ["end", "stop"]
model_from = "header:x-model"
emit = "openai"

[[stream]]
path = "/a/*"
"#,
        );
        let exact = s.route("/a/exact").expect("exact route");
        assert_eq!(&**exact.label(), "/a/exact");
        assert_eq!(exact.reader.token_event, "token");
        assert_eq!(
            exact.reader.token_path,
            Some(token::Pointer::parse("/choices/0/text"))
        );
        assert_eq!(exact.reader.terminal_events, ["end", "stop"]);
        assert!(matches!(exact.model_from, Some(ModelSource::Header(_))));
        assert_eq!(exact.emit, Dialect::OpenAi);
        assert_eq!(s.dialect_of("/a/exact"), Dialect::OpenAi);
        let prefix = s.route("/a/other").expect("prefix route");
        assert_eq!(&**prefix.label(), "/a/*");
        assert_eq!(prefix.reader.token_event, "message");
        assert_eq!(prefix.reader.token_path, None);
        assert_eq!(prefix.emit, Dialect::Native);
        assert_eq!(s.dialect_of("/a/*"), Dialect::Native);
        assert_eq!(s.dialect_of("/gone"), Dialect::Native);
        assert!(s.route("/b").is_none());
    }

    #[test]
    fn values_are_resolved() {
        let s = settings(
            r#"
[limits]
retry_after = "1500ms"
[resume]
on_disconnect = "cancel"
max_stream_bytes = "4MiB"
[progress]
every_tokens = 3
min_interval = "1s"
[[progress.model]]
name = "m"
expected_tokens = 100
[client_metrics]
enabled = false
"#,
        );
        assert_eq!(s.limits.retry_after_secs, 1);
        assert!(s.reader.cancel_on_disconnect);
        assert_eq!(s.resume.max_stream_bytes, 4 << 20);
        let p = s.progress.as_ref().expect("progress on by default");
        assert_eq!(
            p.cadence,
            Cadence {
                every_tokens: 3,
                min_interval: Duration::from_secs(1)
            }
        );
        assert_eq!(p.learner.priors[0].expected_tokens, 100);
        assert!(s.client_metrics.is_none());
        assert_eq!(s.upstream.url, "http://127.0.0.1:9/base");
        assert_eq!(s.own_route("/_sse-proxy/client.js"), Some("/client.js"));
        assert_eq!(s.own_route("/_sse-proxyx"), None);
        assert!(settings("[progress]\nenabled = false").progress.is_none());
    }
}
