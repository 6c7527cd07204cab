//! `proxy.toml`: typed configuration, parsed from a string and validated once.

mod source;
mod units;

pub use crate::identity::SourceSpec;
pub use crate::progress::ModelPrior;
pub use source::ModelSource;
pub use units::{parse_duration, parse_size, Dur, Size};

use crate::progress;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration error, located in its file when the location is known.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the configuration file ({source}); pass an existing TOML file with --config FILE")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a bad value.
    #[error("{file}:{line}:{col}: {message}")]
    Invalid {
        /// The file (or `<string>`).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners and shutdown.
    #[serde(default)]
    pub server: Server,
    /// The backend.
    pub upstream: Upstream,
    /// Routes whose answers are SSE token streams.
    #[serde(default, rename = "stream")]
    pub streams: Vec<StreamRoute>,
    /// How tokens are grouped.
    #[serde(default)]
    pub batching: Batching,
    /// Idle-connection comments.
    #[serde(default)]
    pub heartbeat: Heartbeat,
    /// Resumable logs.
    #[serde(default)]
    pub resume: Resume,
    /// Who owns a stream.
    #[serde(default)]
    pub identity: Identity,
    /// Admission limits.
    #[serde(default)]
    pub limits: Limits,
    /// Progress events.
    #[serde(default)]
    pub progress: Progress,
    /// The built-in demo page.
    #[serde(default)]
    pub demo: Demo,
    /// Front-end metrics endpoint.
    #[serde(default)]
    pub client_metrics: ClientMetrics,
    /// Where streams are kept for resumes on other replicas and after restarts.
    #[serde(default)]
    pub store: Store,
}

/// Most threads `server.workers` may ask for.
pub const MAX_WORKERS: usize = 1024;

/// `[server]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Main listener (proxy traffic).
    pub listen: SocketAddr,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`, `/streams`).
    pub admin_listen: SocketAddr,
    /// How long running streams may go on after SIGTERM/SIGINT.
    pub shutdown_grace: Dur,
    /// Time allowed for a client to send its request headers.
    pub header_read_timeout: Dur,
    /// Time allowed for a client to send a request body the proxy reads itself (stream routes, client metrics).
    pub body_read_timeout: Dur,
    /// A client connection with no request in flight for this long is closed (h2: GOAWAY).
    pub idle_timeout: Dur,
    /// Open client connections at most; more wait in the accept queue.
    pub max_connections: usize,
    /// Path prefix of the proxy's own routes (client, demo, cancel, client metrics).
    pub route_prefix: String,
    /// Threads serving the main listener, each with its own connections; unset: one per core.
    pub workers: Option<usize>,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            shutdown_grace: Dur(Duration::from_secs(30)),
            header_read_timeout: Dur(Duration::from_secs(10)),
            body_read_timeout: Dur(Duration::from_secs(30)),
            idle_timeout: Dur(Duration::from_secs(60)),
            max_connections: 10_000,
            route_prefix: "/_sse-proxy".into(),
            workers: None,
        }
    }
}

/// `[upstream]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Base URL of the backend, `http://host:port` (optionally with a path prefix).
    pub url: UpstreamUrl,
    /// TCP connect timeout (answered with 504).
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout: Dur,
    /// Time allowed for the backend's response headers (answered with 504).
    #[serde(default = "d_response_timeout")]
    pub response_timeout: Dur,
    /// A stream whose backend sends nothing for this long ends with `upstream_timeout`.
    #[serde(default = "d_idle_timeout")]
    pub idle_timeout: Dur,
    /// Largest single upstream event; larger ends the stream with `upstream_malformed`.
    #[serde(default = "d_max_event_bytes")]
    pub max_event_bytes: Size,
    /// Largest request body forwarded on a stream route (it is buffered so the stream can outlive the client).
    #[serde(default = "d_max_request_body")]
    pub max_request_body: Size,
}

fn d_connect_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn d_response_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}
fn d_idle_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}
fn d_max_event_bytes() -> Size {
    Size(1 << 20)
}
fn d_max_request_body() -> Size {
    Size(1 << 20)
}

/// An `http://` URL, validated when read.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamUrl(pub http::Uri);

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let uri: http::Uri = s
            .parse()
            .map_err(|e| serde::de::Error::custom(format!("invalid URL {s:?}: {e}")))?;
        match (uri.scheme_str(), uri.authority()) {
            (Some("http"), Some(_)) if uri.query().is_none() => Ok(UpstreamUrl(uri)),
            _ => Err(serde::de::Error::custom(format!(
                "invalid upstream URL {s:?}: expected http://HOST:PORT[/PREFIX] without a query (TLS to the backend is not supported)"
            ))),
        }
    }
}

/// `[[stream]]`: a route whose responses are re-framed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamRoute {
    /// Exact path, or a prefix ending in `/*`.
    pub path: RoutePath,
    /// Upstream event type that carries one token.
    #[serde(default = "d_token_event")]
    pub token_event: String,
    /// JSON Pointer to the token text in the event data; the raw data when unset.
    #[serde(default)]
    pub token_path: Option<JsonPointer>,
    /// Upstream events that end the stream.
    #[serde(default = "d_terminal_events")]
    pub terminal_events: Vec<String>,
    /// Where the model name comes from.
    #[serde(default)]
    pub model_from: Option<ModelSource>,
    /// The dialect its streams are written in: `native` or `openai`.
    #[serde(default)]
    pub emit: crate::protocol::Dialect,
    /// The upstream's dialect; `sse` is driven by the token and terminal settings above.
    #[serde(default)]
    pub format: UpstreamFormat,
    /// `sse`: data values that end the stream (`["[DONE]"]`).
    #[serde(default)]
    pub terminal_data: Vec<String>,
    /// `sse`: token events whose text is empty are not tokens.
    #[serde(default)]
    pub skip_empty_tokens: bool,
    /// `sse`: upstream events that report the backend's own error and end the stream.
    #[serde(default = "d_error_events")]
    pub error_events: Vec<String>,
}

/// `[[stream]] format`: the upstream's dialect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamFormat {
    /// Generic SSE: `token_event`, `token_path`, `terminal_events`, `terminal_data`, `error_events`.
    #[default]
    Sse,
    /// OpenAI Chat Completions / legacy Completions SSE.
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic Messages SSE.
    Anthropic,
    /// Ollama's native NDJSON (`/api/chat`, `/api/generate`).
    Ollama,
}

fn d_error_events() -> Vec<String> {
    vec!["error".into()]
}

fn d_token_event() -> String {
    "message".into()
}
fn d_terminal_events() -> Vec<String> {
    vec!["done".into()]
}

/// A route path: `/exact` or `/prefix/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePath {
    /// Matches this path only.
    Exact(String),
    /// Matches this prefix followed by `/` and anything (the prefix itself too).
    Prefix(String),
}

impl RoutePath {
    /// Whether a request path is on this route.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            RoutePath::Exact(p) => p == path,
            RoutePath::Prefix(p) => {
                path == p || (path.starts_with(p.as_str()) && path.as_bytes().get(p.len()) == Some(&b'/'))
            }
        }
    }

    /// The route as written in the config (used as a label).
    pub fn as_label(&self) -> String {
        match self {
            RoutePath::Exact(p) => p.clone(),
            RoutePath::Prefix(p) => format!("{p}/*"),
        }
    }
}

impl<'de> Deserialize<'de> for RoutePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bad = |why: &str| {
            serde::de::Error::custom(format!(
                "invalid stream path {s:?}: {why}; expected an absolute path such as \"/api/stream\" or a prefix such as \"/api/stream/*\""
            ))
        };
        if !s.starts_with('/') {
            return Err(bad("it must start with '/'"));
        }
        if s.contains(['?', '#']) || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("no query, fragment or spaces allowed"));
        }
        if let Some(prefix) = s.strip_suffix("/*") {
            if prefix.contains('*') {
                return Err(bad("'*' is only allowed as the last segment"));
            }
            return Ok(RoutePath::Prefix(prefix.to_string()));
        }
        if s.contains('*') {
            return Err(bad("'*' is only allowed as the last segment"));
        }
        Ok(RoutePath::Exact(s))
    }
}

/// An RFC 6901 JSON Pointer (`""` or `/a/b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPointer(pub String);

impl<'de> Deserialize<'de> for JsonPointer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() || s.starts_with('/') {
            Ok(JsonPointer(s))
        } else {
            Err(serde::de::Error::custom(format!(
                "invalid JSON Pointer {s:?}: expected \"\" or a path starting with '/', such as \"/content\""
            )))
        }
    }
}

/// `[batching]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Batching {
    /// Longest a token waits in a batch.
    pub max_delay: Dur,
    /// Tokens per batch at most.
    pub max_tokens: usize,
    /// Bytes of token text per batch at most.
    pub max_bytes: Size,
    /// Follow the token rate: a slow trickle goes out at once, a burst is grouped.
    pub adaptive: bool,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_delay: Dur(Duration::from_millis(100)),
            max_tokens: 32,
            max_bytes: Size(4096),
            adaptive: true,
        }
    }
}

/// `[heartbeat]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Heartbeat {
    /// Idle time after which `: heartbeat` is written.
    pub interval: Dur,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            interval: Dur(Duration::from_secs(15)),
        }
    }
}

/// What a resume with an unknown id does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMiss {
    /// Answer `410 Gone`.
    Gone,
    /// Forward the request upstream as a fresh stream.
    Restart,
}

/// What the last connection leaving a running stream does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDisconnect {
    /// Keep reading the upstream for `detach_grace`.
    Continue,
    /// Cancel the upstream at once.
    Cancel,
}

/// `[resume]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resume {
    /// The `retry:` sent to clients.
    pub client_retry: Dur,
    /// How long a stream with no connection keeps reading its upstream.
    pub detach_grace: Dur,
    /// How long a finished stream stays resumable.
    pub retention: Dur,
    /// Bytes one log holds at most (oldest events dropped first).
    pub max_stream_bytes: Size,
    /// Bytes all logs hold together at most (finished streams evicted first).
    pub max_total_bytes: Size,
    /// Unknown stream on resume: `gone` (410) or `restart`.
    pub on_miss: OnMiss,
    /// Last connection gone: `continue` (detach) or `cancel`.
    pub on_disconnect: OnDisconnect,
}

impl Default for Resume {
    fn default() -> Self {
        Self {
            client_retry: Dur(Duration::from_secs(1)),
            detach_grace: Dur(Duration::from_secs(60)),
            retention: Dur(Duration::from_secs(300)),
            max_stream_bytes: Size(2 << 20),
            max_total_bytes: Size(256 << 20),
            on_miss: OnMiss::Gone,
            on_disconnect: OnDisconnect::Continue,
        }
    }
}

/// Which stream store `[store] kind` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// This process's memory: one proxy, nothing survives a restart.
    Memory,
    /// Redis Streams at `url`, shared by every replica.
    Redis,
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    /// `memory` or `redis`.
    pub kind: StoreKind,
    /// The Redis URL (`redis://` or, over TLS, `rediss://`; `[[user]:password@]host:port/db`).
    pub url: String,
    /// A PEM file of the CAs a `rediss://` server's certificate is checked against, instead of the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every Redis key the proxy writes.
    pub key_prefix: String,
    /// How long a replica's claim on the streams it reads lasts without a refresh.
    pub lease: Dur,
    /// Redis unreachable at start: exit (`true`) or run on the memory store with a warning.
    pub required: bool,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            url: "redis://127.0.0.1:6379/0".into(),
            ca_file: None,
            key_prefix: "sse-proxy".into(),
            lease: Dur(Duration::from_secs(5)),
            required: true,
        }
    }
}

/// `[identity]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// `header:NAME` or `cookie:NAME`; unset: the stream id is the only capability.
    #[serde(default)]
    pub from: Option<SourceSpec>,
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Running upstream streams in total.
    pub max_streams: usize,
    /// Running upstream streams per identity.
    pub max_streams_per_identity: usize,
    /// Connections following one stream at once.
    pub max_followers: usize,
    /// Largest single write to one client (pending events are coalesced up to this).
    pub max_write_bytes: Size,
    /// `Retry-After` seconds sent with 429.
    pub retry_after: Dur,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_streams: 1000,
            max_streams_per_identity: 10,
            max_followers: 8,
            max_write_bytes: Size(64 << 10),
            retry_after: Dur(Duration::from_secs(5)),
        }
    }
}

/// `[progress]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Progress {
    /// Send `event: progress`.
    pub enabled: bool,
    /// At most one progress event per this many tokens.
    pub every_tokens: usize,
    /// And no more often than this.
    pub min_interval: Dur,
    /// Where learned history is kept across restarts.
    pub state_file: Option<PathBuf>,
    /// Answers remembered per route and model.
    pub max_history: usize,
    /// Priors per model.
    #[serde(rename = "model")]
    pub models: Vec<ModelPrior>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            enabled: true,
            every_tokens: progress::DEFAULT_EVERY_TOKENS,
            min_interval: Dur(progress::DEFAULT_MIN_INTERVAL),
            state_file: None,
            max_history: progress::DEFAULT_MAX_HISTORY,
            models: Vec::new(),
        }
    }
}

/// `[demo]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demo {
    /// Serve the demo page at `{route_prefix}/demo`.
    #[serde(default)]
    pub enabled: bool,
}

/// `[client_metrics]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientMetrics {
    /// Accept `POST {route_prefix}/client-metrics`.
    pub enabled: bool,
    /// Reports accepted per second, over all clients.
    pub per_second: u32,
}

impl Default for ClientMetrics {
    fn default() -> Self {
        Self {
            enabled: true,
            per_second: 50,
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml_bytes(&bytes, &path.display().to_string())
    }

    /// Parses and validates a file's bytes; text that is not UTF-8 is located at its first bad byte.
    pub fn from_toml_bytes(bytes: &[u8], file: &str) -> Result<Config, ConfigError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Config::from_toml_str(text, file),
            Err(e) => {
                let (line, col) = std::str::from_utf8(&bytes[..e.valid_up_to()])
                    .map_or((1, 1), |valid| line_col(valid, valid.len()));
                Err(ConfigError::Invalid {
                    file: file.to_string(),
                    line,
                    col,
                    message: format!(
                        "the file is not valid UTF-8 (byte offset {}); save it as UTF-8",
                        e.valid_up_to()
                    ),
                })
            }
        }
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn from_toml_str(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            let at = e
                .span()
                .and_then(|s| text.get(s.start..))
                .and_then(|t| t.chars().next());
            ConfigError::Invalid {
                file: file.to_string(),
                line,
                col,
                message: explain(e.message(), at),
            }
        })?;
        cfg.validate().map_err(|(at, message)| {
            let (line, col) = at.locate(text).unwrap_or((1, 1));
            ConfigError::Invalid {
                file: file.to_string(),
                line,
                col,
                message,
            }
        })
    }

    /// The route a request path is on, if any.
    pub fn stream_route(&self, path: &str) -> Option<(usize, &StreamRoute)> {
        self.streams
            .iter()
            .enumerate()
            .find(|(_, r)| r.path.matches(path))
    }

    /// Whether a stream's log (`resume.max_stream_bytes`) holds two of the largest events
    /// (`upstream.max_event_bytes`), so that one event always fits.
    pub fn one_event_fits_a_log(&self) -> bool {
        self.resume.max_stream_bytes.0 >= self.upstream.max_event_bytes.0.saturating_mul(2)
    }

    /// `server.listen` and `server.admin_listen` cannot be bound together: same port (not 0) on
    /// the same address, or on a wildcard address that covers the other.
    pub fn check_listeners(&self) -> Result<(), String> {
        let (a, b) = (self.server.listen, self.server.admin_listen);
        let overlap = a.port() == b.port()
            && a.port() != 0
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified());
        if overlap {
            Err(format!(
                "server.listen ({a}) and server.admin_listen ({b}) cannot share a port: give the admin listener its own"
            ))
        } else {
            Ok(())
        }
    }

    /// Checks `server.workers` (also after `--workers` replaced it).
    pub fn check_workers(&self) -> Result<(), String> {
        match self.server.workers {
            Some(n) if !(1..=MAX_WORKERS).contains(&n) => Err(format!(
                "server.workers must be between 1 and {MAX_WORKERS} (leave it out for one per core)"
            )),
            _ => Ok(()),
        }
    }

    /// Cross-field checks; the error says where to point and what is allowed.
    fn validate(self) -> Result<Config, (At, String)> {
        let positive = |v: bool, key: &'static str, what: &str| {
            if v {
                Ok(())
            } else {
                Err((At::Key(key), what.to_string()))
            }
        };
        let nonzero = |d: Dur, key: &'static str| {
            positive(
                !d.0.is_zero(),
                key,
                &format!("{key} must be above 0, such as \"10s\""),
            )
        };
        positive(
            !self.batching.max_delay.0.is_zero() || self.batching.max_tokens == 1,
            "batching.max_delay",
            "batching.max_delay must be above 0 (or set max_tokens = 1 to disable batching)",
        )?;
        positive(
            self.batching.max_tokens >= 1,
            "batching.max_tokens",
            "batching.max_tokens must be at least 1",
        )?;
        positive(
            self.batching.max_bytes.0 >= 1,
            "batching.max_bytes",
            "batching.max_bytes must be at least 1 byte",
        )?;
        positive(
            self.heartbeat.interval.0 >= Duration::from_millis(10),
            "heartbeat.interval",
            "heartbeat.interval must be at least 10ms",
        )?;
        nonzero(self.server.header_read_timeout, "server.header_read_timeout")?;
        nonzero(self.server.body_read_timeout, "server.body_read_timeout")?;
        nonzero(self.server.idle_timeout, "server.idle_timeout")?;
        nonzero(self.upstream.connect_timeout, "upstream.connect_timeout")?;
        nonzero(self.upstream.response_timeout, "upstream.response_timeout")?;
        nonzero(self.upstream.idle_timeout, "upstream.idle_timeout")?;
        nonzero(self.resume.retention, "resume.retention")?;
        positive(
            self.store.lease.0 >= Duration::from_millis(100),
            "store.lease",
            "store.lease must be at least 100ms, such as \"5s\"",
        )?;
        positive(
            self.store.url.starts_with("redis://") || self.store.url.starts_with("rediss://"),
            "store.url",
            "store.url must be a redis:// or rediss:// (TLS) URL, such as \"redis://127.0.0.1:6379/0\"",
        )?;
        positive(
            self.store.ca_file.is_none() || self.store.url.starts_with("rediss://"),
            "store.ca_file",
            "store.ca_file needs a rediss:// store.url (it is the CA of Redis's TLS certificate)",
        )?;
        positive(
            !self.store.key_prefix.is_empty() && !self.store.key_prefix.contains(['{', '}']),
            "store.key_prefix",
            "store.key_prefix must be a non-empty name without { or }, such as \"sse-proxy\"",
        )?;
        self.check_listeners().map_err(|m| {
            (
                At::First(vec![At::Key("server.admin_listen"), At::Key("server.listen")]),
                m,
            )
        })?;
        positive(
            self.upstream.max_event_bytes.0 >= 64,
            "upstream.max_event_bytes",
            "upstream.max_event_bytes must be at least 64 bytes",
        )?;
        positive(
            self.one_event_fits_a_log(),
            "resume.max_stream_bytes",
            "resume.max_stream_bytes must be at least twice upstream.max_event_bytes, so one event always fits",
        )?;
        positive(
            self.resume.max_total_bytes.0 >= self.resume.max_stream_bytes.0,
            "resume.max_total_bytes",
            "resume.max_total_bytes must be at least resume.max_stream_bytes",
        )?;
        positive(
            self.limits.max_streams >= 1,
            "limits.max_streams",
            "limits.max_streams must be at least 1",
        )?;
        positive(
            self.limits.max_streams_per_identity >= 1,
            "limits.max_streams_per_identity",
            "limits.max_streams_per_identity must be at least 1",
        )?;
        positive(
            self.limits.max_followers >= 1,
            "limits.max_followers",
            "limits.max_followers must be at least 1",
        )?;
        positive(
            self.limits.max_write_bytes.0 >= 1024,
            "limits.max_write_bytes",
            "limits.max_write_bytes must be at least 1KiB",
        )?;
        if let Err(message) = self.check_workers() {
            return Err((At::Key("server.workers"), message));
        }
        positive(
            (1..=1_000_000).contains(&self.server.max_connections),
            "server.max_connections",
            "server.max_connections must be between 1 and 1000000",
        )?;
        positive(
            self.progress.every_tokens >= 1,
            "progress.every_tokens",
            "progress.every_tokens must be at least 1",
        )?;
        positive(
            self.progress.max_history >= 1,
            "progress.max_history",
            "progress.max_history must be at least 1",
        )?;
        let p = &self.server.route_prefix;
        positive(
            p.starts_with('/') && p.len() > 1 && !p.ends_with('/') && !p.contains(['?', '#', '*']),
            "server.route_prefix",
            "server.route_prefix must be an absolute path without a trailing '/', such as \"/_sse-proxy\"",
        )?;
        for m in &self.progress.models {
            if m.expected_tokens == 0 {
                return Err((
                    At::Value(m.name.clone()),
                    format!("progress.model {:?}: expected_tokens must be at least 1", m.name),
                ));
            }
            if let Some(r) = m.tokens_per_second {
                if !(r.is_finite() && r > 0.0) {
                    return Err((
                        At::Value(m.name.clone()),
                        format!("progress.model {:?}: tokens_per_second must be above 0", m.name),
                    ));
                }
            }
        }
        for (i, r) in self.streams.iter().enumerate() {
            let label = r.path.as_label();
            if self.streams[..i].iter().any(|o| o.path == r.path) {
                return Err((
                    At::Value(label.clone()),
                    format!("duplicate [[stream]] path {label:?}"),
                ));
            }
            if r.terminal_events.iter().any(|t| t == &r.token_event) {
                return Err((
                    At::Value(label.clone()),
                    format!(
                        "[[stream]] {label:?}: token_event {:?} cannot also be a terminal event",
                        r.token_event
                    ),
                ));
            }
            if label.starts_with(&format!("{p}/")) || label == *p {
                return Err((
                    At::Value(label.clone()),
                    format!("[[stream]] {label:?} is inside server.route_prefix {p:?}"),
                ));
            }
        }
        Ok(self)
    }
}

/// A parse error message, with what is expected added where serde's own message says only what
/// is missing; `at` is the character the error points at.
fn explain(message: &str, at: Option<char>) -> String {
    // toml says nothing, or something misleading, about a control character (in a comment, say).
    match at {
        Some(c) if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => {
            return format!(
                "unexpected control character U+{:04X}: TOML allows no control character except tab, not even in a comment",
                u32::from(c)
            );
        }
        Some(c) if message.is_empty() => {
            return format!("unexpected character {c:?} (U+{:04X})", u32::from(c))
        }
        None if message.is_empty() => return "invalid TOML".to_string(),
        _ => {}
    }
    let hint = match message {
        "missing field `upstream`" => {
            "the [upstream] table is required, with at least url = \"http://HOST:PORT\""
        }
        "missing field `url`" => "[upstream] needs url = \"http://HOST:PORT[/PREFIX]\"",
        "missing field `path`" => {
            "each [[stream]] needs path = \"/exact/path\" or a prefix such as \"/api/stream/*\""
        }
        "missing field `name`" | "missing field `expected_tokens`" => {
            "each [[progress.model]] needs name = \"MODEL\" and expected_tokens = N"
        }
        _ => return message.to_string(),
    };
    format!("{message}: {hint}")
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

/// Where a validation error points, for errors that serde cannot place.
enum At {
    /// A key, written `table.key` (the table header, or the dotted key, in the file).
    Key(&'static str),
    /// A quoted string value.
    Value(String),
    /// The first of these that is written in the file.
    First(Vec<At>),
}

impl At {
    /// 1-based line and column in `text`, when found.
    fn locate(&self, text: &str) -> Option<(usize, usize)> {
        match self {
            At::Key(k) => locate_key(text, k),
            At::Value(v) => text.find(&format!("\"{v}\"")).map(|at| line_col(text, at)),
            At::First(all) => all.iter().find_map(|a| a.locate(text)),
        }
    }
}

/// Finds `key = ...` under `[table]` for `"table.key"` (or the dotted `table.key = ...` written
/// elsewhere); a key without a table is looked for anywhere.
fn locate_key(text: &str, dotted: &str) -> Option<(usize, usize)> {
    let (table, key) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut current = String::new();
    let mut pos = 0usize;
    for line in text.split_inclusive('\n') {
        let start = pos;
        pos += line.len();
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with('[') {
            current = trimmed
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            continue;
        }
        let Some((name, _)) = trimmed.split_once('=') else {
            continue;
        };
        let name = name.trim();
        let here = if table.is_empty() {
            name == key
        } else {
            (current == table && name == key)
                || (current.is_empty() && name == dotted)
                || format!("{current}.{name}") == dotted
        };
        if here && !trimmed.starts_with('#') {
            return Some(line_col(text, start + indent));
        }
    }
    None
}

#[cfg(test)]
mod tests;
