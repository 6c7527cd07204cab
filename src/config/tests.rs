use super::*;

const MINIMAL: &str = r#"
[upstream]
url = "http://127.0.0.1:8000"
"#;

fn err(text: &str) -> (usize, usize, String) {
    match Config::from_toml_str(text, "proxy.toml") {
        Err(ConfigError::Invalid {
            line,
            col,
            message,
            file,
        }) => {
            assert_eq!(file, "proxy.toml");
            (line, col, message)
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::from_toml_str(MINIMAL, "x").expect("valid");
    assert_eq!(c.heartbeat.interval.0, Duration::from_secs(15));
    assert_eq!(c.upstream.max_event_bytes.0, 1 << 20);
    assert_eq!(c.resume.client_retry.0, Duration::from_secs(1));
    assert!(c.streams.is_empty());
    assert_eq!(c.server.route_prefix, "/_sse-proxy");
    assert_eq!(c.server.idle_timeout.0, Duration::from_secs(60));
}

#[test]
fn shipped_example_is_valid() {
    let text = include_str!("../../proxy.toml");
    let c = Config::from_toml_str(text, "proxy.toml").expect("proxy.toml must be valid");
    assert!(!c.streams.is_empty());
}

#[test]
fn deployment_config_is_valid() {
    let text = include_str!("../../deploy/proxy.toml");
    let c = Config::from_toml_str(text, "deploy/proxy.toml").expect("deploy/proxy.toml must be valid");
    assert_eq!(c.server.listen.ip().to_string(), "0.0.0.0");
    // The Kubernetes ConfigMap carries the same file.
    let k8s = include_str!("../../deploy/kubernetes/standalone.yaml");
    let indented: String = text
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("    {l}\n")
            }
        })
        .collect();
    assert!(
        k8s.contains(&indented),
        "deploy/kubernetes/standalone.yaml's ConfigMap differs from deploy/proxy.toml"
    );
}

#[test]
fn unknown_key_is_located() {
    let (line, col, msg) = err("[upstream]\nurl = \"http://a:1\"\nbogus = 1\n");
    assert_eq!((line, col), (3, 1));
    assert!(msg.contains("unknown field `bogus`"), "{msg}");
    assert!(msg.contains("connect_timeout"), "lists allowed keys: {msg}");
}

#[test]
fn bad_duration_says_what_is_allowed() {
    let (line, col, msg) = err("[upstream]\nurl = \"http://a:1\"\n[heartbeat]\ninterval = \"15 seconds\"\n");
    assert_eq!((line, col), (4, 12));
    assert!(msg.contains("\"15s\""), "{msg}");
}

#[test]
fn absurd_durations_are_rejected() {
    let (line, _, msg) = err("[upstream]\nurl = \"http://a:1\"\nidle_timeout = \"99999999999h\"\n");
    assert_eq!(line, 3);
    assert!(msg.contains("at most 365 days"), "{msg}");
    let (line, _, msg) =
        err("[server]\nmax_connections = 9223372036854775807\n[upstream]\nurl = \"http://a:1\"\n");
    assert_eq!(line, 2);
    assert!(msg.contains("between 1 and 1000000"), "{msg}");
}

#[test]
fn workers_between_1_and_1024_else_an_error_at_the_key() {
    for bad in ["0", "1025"] {
        let (line, col, msg) = err(&format!(
            "[upstream]\nurl = \"http://a:1\"\n[server]\nworkers = {bad}\n"
        ));
        assert_eq!((line, col), (4, 1), "{msg}");
        assert!(msg.contains("server.workers must be between 1 and 1024"), "{msg}");
    }
    let (line, _, msg) = err("[server]\nworkers = -1\n[upstream]\nurl = \"http://a:1\"\n");
    assert_eq!(line, 2, "{msg}");
    let ok = Config::from_toml_str("[server]\nworkers = 3\n[upstream]\nurl = \"http://a:1\"\n", "t")
        .expect("valid");
    assert_eq!(ok.server.workers, Some(3));
    let default = Config::from_toml_str("[upstream]\nurl = \"http://a:1\"\n", "t").expect("valid");
    assert_eq!(default.server.workers, None);
}

#[test]
fn bad_size_and_url() {
    let (line, _, msg) = err("[upstream]\nurl = \"http://a:1\"\nmax_event_bytes = \"1MB\"\n");
    assert_eq!(line, 3);
    assert!(msg.contains("MiB"), "{msg}");
    let (line, _, msg) = err("[upstream]\nurl = \"https://a:1\"\n");
    assert_eq!(line, 2);
    assert!(msg.contains("http://HOST:PORT"), "{msg}");
}

#[test]
fn bad_stream_route() {
    let base = "[upstream]\nurl = \"http://a:1\"\n";
    let (line, _, msg) = err(&format!("{base}[[stream]]\npath = \"api\"\n"));
    assert_eq!(line, 4);
    assert!(msg.contains("start with '/'"), "{msg}");
    let (_, _, msg) = err(&format!("{base}[[stream]]\npath = \"/a/*/b\"\n"));
    assert!(msg.contains("last segment"), "{msg}");
    let (line, _, msg) = err(&format!(
        "{base}[[stream]]\npath = \"/a\"\nmodel_from = \"body:model\"\n"
    ));
    assert_eq!(line, 5);
    assert!(msg.contains("query:NAME"), "{msg}");
    let (_, _, msg) = err(&format!(
        "{base}[[stream]]\npath = \"/a\"\nmodel_from = \"query:\"\n"
    ));
    assert!(msg.contains("empty"), "{msg}");
    for (spec, want) in [("llama3", "llama3"), ("llama3:8b", "llama3:8b"), ("fixed:m", "m")] {
        let text = format!("{base}[[stream]]\npath = \"/a\"\nmodel_from = \"{spec}\"\n");
        let c = Config::from_toml_str(&text, "x").expect("valid");
        assert_eq!(c.streams[0].model_from, Some(ModelSource::Fixed(want.into())));
    }
    let (line, _, msg) = err(&format!(
        "{base}[[stream]]\npath = \"/a\"\n[[stream]]\npath = \"/a\"\n"
    ));
    assert!(msg.contains("duplicate"), "{msg}");
    assert_eq!(line, 4);
}

#[test]
fn cross_field_checks_are_located() {
    let (line, col, msg) = err("[upstream]\nurl = \"http://a:1\"\n[batching]\nmax_tokens = 0\n");
    assert_eq!((line, col), (4, 1));
    assert!(msg.contains("at least 1"), "{msg}");
    let (_, _, msg) = err("[upstream]\nurl = \"http://a:1\"\nmax_event_bytes = \"1MiB\"\n[resume]\nmax_stream_bytes = \"1MiB\"\n");
    assert!(msg.contains("twice"), "{msg}");
}

#[test]
fn wrong_type_and_bad_toml() {
    let (line, _, msg) = err("[upstream]\nurl = \"http://a:1\"\n[batching]\nadaptive = \"yes\"\n");
    assert_eq!(line, 4);
    assert!(msg.contains("bool"), "{msg}");
    let (line, _, _) = err("[upstream\nurl = 1\n");
    assert_eq!(line, 1);
    let (_, _, msg) = err("");
    assert!(msg.contains("upstream"), "{msg}");
}

#[test]
fn identity_and_model_sources() {
    let c = Config::from_toml_str(
        "[upstream]\nurl = \"http://a:1/base\"\n[identity]\nfrom = \"cookie:session\"\n[[stream]]\npath = \"/s/*\"\nmodel_from = \"body:/model\"\ntoken_path = \"/content\"\n",
        "x",
    )
    .expect("valid");
    assert_eq!(c.identity.from, Some(SourceSpec::Cookie("session".into())));
    assert_eq!(c.streams[0].model_from, Some(ModelSource::Body("/model".into())));
    assert!(c.stream_route("/s/1").is_some());
    assert!(c.stream_route("/s").is_some());
    assert!(c.stream_route("/sx").is_none());
    let (_, _, msg) = err("[upstream]\nurl = \"http://a:1\"\n[identity]\nfrom = \"query:x\"\n");
    assert!(msg.contains("cookie:NAME"), "{msg}");
}

#[test]
fn zero_timeouts_and_retention_are_rejected_where_written() {
    let up = "[upstream]\nurl = \"http://a:1\"\n";
    let cases = [
        (
            format!("{up}response_timeout = \"0s\"\n"),
            (3, 1),
            "upstream.response_timeout",
        ),
        (
            format!("{up}idle_timeout = \"0ms\"\n"),
            (3, 1),
            "upstream.idle_timeout",
        ),
        (
            format!("[server]\nheader_read_timeout = \"0s\"\n{up}"),
            (2, 1),
            "server.header_read_timeout",
        ),
        (
            format!("{up}[server]\nshutdown_grace = \"1s\"\n  body_read_timeout = \"0s\"\n"),
            (5, 3),
            "server.body_read_timeout",
        ),
        (
            format!("{up}[resume]\nretention = \"0s\"\n"),
            (4, 1),
            "resume.retention",
        ),
        // Both tables have an idle_timeout: each error points into its own table.
        (
            format!("[server]\nidle_timeout = \"5s\"\n{up}idle_timeout = \"0s\"\n"),
            (5, 1),
            "upstream.idle_timeout",
        ),
        (
            format!("{up}idle_timeout = \"5s\"\n[server]\nidle_timeout = \"0s\"\n"),
            (5, 1),
            "server.idle_timeout",
        ),
    ];
    for (text, at, key) in cases {
        let (line, col, msg) = err(&text);
        assert_eq!((line, col), at, "{key}: {msg}\n{text}");
        assert!(msg.contains(key) && msg.contains("above 0"), "{key}: {msg}");
    }
}

#[test]
fn a_key_is_located_in_its_own_table() {
    // `retention` also appears earlier as a value and in a comment; the error points at the key
    // under [resume].
    let text = "# retention = \"0s\" is refused\n[upstream]\nurl = \"http://a:1/retention\"\n[resume]\ndetach_grace = \"1s\"\nretention = \"0s\"\n";
    let (line, col, _) = err(text);
    assert_eq!((line, col), (6, 1));
    // A dotted key written at the top level.
    let (line, _, msg) = err("resume.retention = \"0s\"\n[upstream]\nurl = \"http://a:1\"\n");
    assert!(msg.contains("resume.retention"), "{msg}");
    assert_eq!(line, 1);
}

#[test]
fn listeners_must_differ() {
    let up = "[upstream]\nurl = \"http://a:1\"\n";
    let (line, col, msg) = err(&format!(
        "{up}[server]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:8080\"\n"
    ));
    assert_eq!((line, col), (5, 1));
    assert!(
        msg.contains("server.admin_listen") && msg.contains("127.0.0.1:8080"),
        "{msg}"
    );
    // A wildcard address covers every specific one on the same port.
    let (line, _, _) = err(&format!(
        "{up}[server]\nadmin_listen = \"0.0.0.0:9000\"\nlisten = \"127.0.0.1:9000\"\n"
    ));
    assert_eq!(line, 4);
    // Port 0 picks a free port for each.
    Config::from_toml_str(
        &format!("{up}[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n"),
        "x",
    )
    .expect("port 0 twice is valid");
    Config::from_toml_str(
        &format!("{up}[server]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.2:8080\"\n"),
        "x",
    )
    .expect("two addresses, one port");
}

#[test]
fn a_file_that_is_not_utf8_is_located() {
    let mut bytes = b"[upstream]\nurl = \"http://a:1\"\n# caf".to_vec();
    bytes.push(0xE9); // Latin-1 'é'
    bytes.extend_from_slice(b"\n");
    match Config::from_toml_bytes(&bytes, "proxy.toml") {
        Err(ConfigError::Invalid {
            file,
            line,
            col,
            message,
        }) => {
            assert_eq!((file.as_str(), line, col), ("proxy.toml", 3, 6));
            assert!(message.contains("UTF-8"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let ok = Config::from_toml_bytes(MINIMAL.as_bytes(), "x").expect("valid");
    assert!(ok.streams.is_empty());
}

#[test]
fn control_character_in_a_comment_is_explained() {
    let (line, col, msg) = err("[upstream]\nurl = \"http://a:1\" # a\u{0}b\n");
    assert_eq!((line, col), (2, 23));
    assert!(
        msg.contains("U+0000") && msg.contains("control character"),
        "{msg:?}"
    );
    let (_, _, msg) = err("# \u{7f}\n[upstream]\nurl = \"http://a:1\"\n");
    assert!(msg.contains("U+007F"), "{msg:?}");
}

#[test]
fn cross_field_checks_are_located_in_crlf_files() {
    let (line, col, msg) = err("[upstream]\r\nurl = \"http://a:1\"\r\n[batching]\r\nmax_tokens = 0\r\n");
    assert_eq!((line, col), (4, 1));
    assert!(msg.contains("at least 1"), "{msg}");
    // Before the fix the offset landed inside the 'é' and panicked.
    let (line, col, _) = err("[upstream]\r\nurl = \"http://a:1\"\r\n[batching] # é\r\nmax_tokens = 0\r\n");
    assert_eq!((line, col), (4, 1));
}

#[test]
fn store_defaults_to_memory() {
    let c = Config::from_toml_str(MINIMAL, "x").expect("valid");
    assert_eq!(c.store.kind, StoreKind::Memory);
    assert_eq!(c.store.url, "redis://127.0.0.1:6379/0");
    assert_eq!(c.store.key_prefix, "sse-proxy");
    assert_eq!(c.store.lease.0, Duration::from_secs(5));
    assert!(c.store.required);
    assert_eq!(c.store.ca_file, None);
}

#[test]
fn store_redis_section_parses() {
    let text = format!(
        "{MINIMAL}[store]\nkind = \"redis\"\nurl = \"redis://:secret@cache:6380/2\"\nkey_prefix = \"chat\"\nlease = \"2s\"\nrequired = false\n"
    );
    let c = Config::from_toml_str(&text, "x").expect("valid");
    assert_eq!(c.store.kind, StoreKind::Redis);
    assert_eq!(c.store.url, "redis://:secret@cache:6380/2");
    assert_eq!(c.store.key_prefix, "chat");
    assert_eq!(c.store.lease.0, Duration::from_secs(2));
    assert!(!c.store.required);
}

#[test]
fn store_rediss_url_with_a_password_and_a_ca_file_parses() {
    let text = format!(
        "{MINIMAL}[store]\nkind = \"redis\"\nurl = \"rediss://app:secret@cache:6380/2\"\nca_file = \"/etc/redis/ca.pem\"\n"
    );
    let c = Config::from_toml_str(&text, "x").expect("valid");
    assert_eq!(c.store.url, "rediss://app:secret@cache:6380/2");
    assert_eq!(
        c.store.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/redis/ca.pem"))
    );
}

#[test]
fn store_section_errors_point_at_the_key() {
    // MINIMAL is 3 lines, then `[store]` on line 4.
    let (line, _, msg) = err(&format!("{MINIMAL}[store]\nkind = \"valkey\"\n"));
    assert_eq!(line, 5, "{msg}");
    assert!(msg.contains("memory") && msg.contains("redis"), "{msg}");
    let (line, _, msg) = err(&format!("{MINIMAL}[store]\nurl = \"http://cache:6379\"\n"));
    assert_eq!(line, 5, "{msg}");
    assert!(
        msg.contains("store.url must be a redis:// or rediss:// (TLS) URL"),
        "{msg}"
    );
    let (line, _, msg) = err(&format!(
        "{MINIMAL}[store]\nurl = \"redis://cache:6379\"\nca_file = \"/etc/ca.pem\"\n"
    ));
    assert_eq!(line, 6, "{msg}");
    assert!(msg.contains("store.ca_file needs a rediss:// store.url"), "{msg}");
    let (line, _, msg) = err(&format!("{MINIMAL}[store]\nlease = \"10ms\"\n"));
    assert_eq!(line, 5, "{msg}");
    assert!(msg.contains("store.lease must be at least 100ms"), "{msg}");
    let (line, _, msg) = err(&format!("{MINIMAL}[store]\nkey_prefix = \"a{{b}}\"\n"));
    assert_eq!(line, 5, "{msg}");
    assert!(msg.contains("store.key_prefix"), "{msg}");
    let (_, _, msg) = err(&format!("{MINIMAL}[store]\nurll = \"redis://a\"\n"));
    assert!(msg.contains("url"), "{msg}");
}

#[test]
fn stream_emit_dialect() {
    use crate::protocol::Dialect;
    let base = "[upstream]\nurl = \"http://a:1\"\n[[stream]]\npath = \"/a\"\n";
    let c = Config::from_toml_str(base, "x").expect("valid");
    assert_eq!(c.streams[0].emit, Dialect::Native);
    for (spec, want) in [("native", Dialect::Native), ("openai", Dialect::OpenAi)] {
        let c = Config::from_toml_str(&format!("{base}emit = \"{spec}\"\n"), "x").expect("valid");
        assert_eq!(c.streams[0].emit, want);
    }
    let (line, col, msg) = err(&format!("{base}emit = \"anthropic\"\n"));
    assert_eq!((line, col), (5, 8));
    assert!(msg.contains("native") && msg.contains("openai"), "{msg}");
}
