//! A first run of the real binary: logs readable wherever they go (no colour codes in a file or a
//! pipe, `NO_COLOR` honoured on a terminal), every `--log-format`, and a port that is taken naming the
//! flag and the config key that pick another.

mod common;

use common::process::{ProxyProcess, TempFile, BIN};
use common::*;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The start of every ANSI escape sequence (colours, bold, italics).
const ESC: &str = "\x1b[";

/// A config with both listeners and the upstream given.
fn config(listen: &str, admin: &str, upstream: SocketAddr) -> TempFile {
    TempFile::new(
        "proxy.toml",
        &format!(
            "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\nshutdown_grace = \"1s\"\n\n\
             [upstream]\nurl = \"http://{upstream}\"\n\n[[stream]]\npath = \"/stream\"\ntoken_path = \"/content\"\n"
        ),
    )
}

/// An address nothing listens on (the proxy does not connect to its upstream until a request).
fn nowhere() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9))
}

/// Starts the proxy with `args` and `env`, runs one stream through it, stops it with SIGTERM:
/// (the stream id, everything it logged).
async fn log_of_one_stream(args: &[&str], env: &[(&str, Option<&str>)]) -> (String, String) {
    let up = MockUpstream::start(|_, _| Reply::sse(answer(&["a".into(), "b".into()], Duration::ZERO))).await;
    let cfg = config("127.0.0.1:0", "127.0.0.1:0", up.addr);
    let mut all = vec!["--config", cfg.path()];
    all.extend_from_slice(args);
    let p = ProxyProcess::start_env(&all, env).await;
    let resp = get(&format!("http://{}/stream", p.addr), &[]).await;
    let id = resp.headers()["x-stream-id"].to_str().expect("ascii").to_string();
    assert_eq!(text_of(&Events::new(resp).all().await), "ab");
    p.sigterm();
    let (st, log) = p.exit().await;
    assert!(st.is_some_and(|s| s.success()), "{st:?}\n{log}");
    (id, log)
}

/// The one log line whose message is `message`.
fn line_of<'a>(log: &'a str, message: &str) -> &'a str {
    let found: Vec<&str> = log.lines().filter(|l| l.contains(message)).collect();
    assert_eq!(found.len(), 1, "one {message:?} line expected in:\n{log}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_to_a_pipe_have_no_colour_codes() {
    for format in [None, Some("pretty"), Some("compact")] {
        let args: Vec<&str> = format.map(|f| vec!["--log-format", f]).unwrap_or_default();
        // NO_COLOR removed: stderr being a pipe alone must turn colours off.
        let (_, log) = log_of_one_stream(&args, &[("NO_COLOR", None)]).await;
        assert!(log.contains("stream started"), "{format:?}: {log}");
        assert!(
            !log.contains(ESC),
            "{format:?}: colour codes in a log written to a pipe:\n{log:?}"
        );
    }
}

/// Colours off, so the formats' own text can be matched.
const NO_COLOR: &[(&str, Option<&str>)] = &[("NO_COLOR", Some("1"))];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_format_works() {
    // pretty (the default): the span and its fields before the message.
    for args in [&[][..], &["--log-format", "pretty"][..]] {
        let (id, log) = log_of_one_stream(args, NO_COLOR).await;
        let line = line_of(&log, "stream started");
        assert!(line.contains(" INFO "), "{line}");
        assert!(
            line.contains(&format!("stream{{stream_id={id}")),
            "{args:?}: {line}"
        );
        assert!(serde_json::from_str::<serde_json::Value>(line).is_err(), "{line}");
    }
    // compact: no span names, the span's fields after the message.
    let (id, log) = log_of_one_stream(&["--log-format", "compact"], NO_COLOR).await;
    let line = line_of(&log, "stream started");
    assert!(line.contains(" INFO "), "{line}");
    assert!(!line.contains("stream{"), "{line}");
    let (message, fields) = line.split_once("stream started").expect("message");
    assert!(!message.contains(&id), "{line}");
    assert!(fields.contains(&format!("stream_id={id}")), "{line}");
    // json: one object per line, the span's fields included.
    let (id, log) = log_of_one_stream(&["--log-format", "json"], NO_COLOR).await;
    let lines = common::process::json_lines(&log);
    let started: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "stream started")
        .collect();
    assert_eq!(started.len(), 1, "{log}");
    assert_eq!(started[0]["span"]["stream_id"], id.as_str(), "{log}");
    assert!(
        started[0]["level"] == "INFO" && started[0]["timestamp"].is_string(),
        "{log}"
    );
}

/// Runs the proxy with its stderr on a terminal (a pty made by util-linux `script`), stops it
/// once it is listening, and returns what the terminal showed.
fn log_on_a_terminal(no_color: Option<&str>) -> String {
    let cfg = config("127.0.0.1:0", "127.0.0.1:0", nowhere());
    let out = TempFile::new("stdout", "");
    // stdout (the listening line) goes to a file; stderr (the log) to the terminal. The loop
    // waits up to 20 s for the listening line.
    let sh = r#""$BIN" --config "$CFG" >"$OUT" & p=$!
i=0; while ! grep -q listening "$OUT" && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
kill -TERM $p; wait $p"#;
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-f", "-e", "-c", sh, "/dev/null"])
        .env("BIN", BIN)
        .env("CFG", cfg.path())
        .env("OUT", out.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match no_color {
        Some(v) => cmd.env("NO_COLOR", v),
        None => cmd.env_remove("NO_COLOR"),
    };
    let mut child = cmd
        .spawn()
        .expect("util-linux `script` runs the proxy on a terminal (Debian: bsdutils)");
    let status = wait_exit(&mut child);
    let mut shown = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut shown)
        .expect("read");
    assert!(status.success(), "{status:?}: {shown}");
    assert!(shown.contains("listening"), "{shown:?}");
    shown
}

#[test]
fn a_terminal_gets_colours_unless_no_color_is_set() {
    assert!(
        log_on_a_terminal(None).contains(ESC),
        "a terminal should get colours"
    );
    assert!(
        log_on_a_terminal(Some("")).contains(ESC),
        "an empty NO_COLOR is unset"
    );
    let plain = log_on_a_terminal(Some("1"));
    assert!(!plain.contains(ESC), "NO_COLOR=1 on a terminal:\n{plain:?}");
}

/// Waits up to `WAIT` for `child` to exit; kills it and fails if it does not.
fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the binary with `args`, which must exit by itself: (exit code, stderr).
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sse-proxy");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = err_pipe.read_to_string(&mut all);
        all
    });
    let status = wait_exit(&mut child);
    (status.code(), reader.join().expect("stderr"))
}

/// A port some other program (Prometheus on 9090, say) already listens on.
fn taken_port() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    (l, addr)
}

#[test]
fn a_taken_admin_port_names_the_flag_and_the_key_that_change_it() {
    let (_held, taken) = taken_port();
    let cfg = config("127.0.0.1:0", &taken, nowhere());
    for args in [
        vec!["--config", cfg.path()],
        vec!["--config", cfg.path(), "--admin-listen", &taken],
    ] {
        let (code, err) = run_to_exit(&args);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(&taken), "{err}");
        assert!(err.contains("admin"), "{err}");
        assert!(err.contains("--admin-listen ADDR"), "{err}");
        assert!(err.contains("server.admin_listen"), "{err}");
        assert!(err.contains(cfg.path()), "the config file is named: {err}");
        assert!(
            !err.contains("--listen") && !err.contains("server.listen"),
            "{err}"
        );
    }
}

#[test]
fn a_taken_main_port_names_the_flag_and_the_key_that_change_it() {
    let (_held, taken) = taken_port();
    let cfg = config(&taken, "127.0.0.1:0", nowhere());
    let (code, err) = run_to_exit(&["--config", cfg.path()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&taken), "{err}");
    assert!(err.contains("--listen ADDR"), "{err}");
    assert!(err.contains("server.listen"), "{err}");
    assert!(!err.contains("admin"), "{err}");
}

#[test]
fn the_demo_on_a_taken_port_names_the_flag() {
    let (_held, taken) = taken_port();
    let (code, err) = run_to_exit(&["demo", "--listen", "127.0.0.1:0", "--admin-listen", &taken]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&taken), "{err}");
    assert!(err.contains("--admin-listen ADDR"), "{err}");
    // The demo has no config file to edit.
    assert!(!err.contains("server.admin_listen"), "{err}");
}
