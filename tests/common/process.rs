//! The real `sse-proxy` binary as a child process: run to completion, or started on port 0,
//! signalled, and its log kept.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary Cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_sse-proxy");

/// A temporary file, removed on drop.
pub struct TempFile(PathBuf);

impl TempFile {
    /// Writes `text` to a new file whose name ends with `name`.
    pub fn new(name: &str, text: &str) -> Self {
        Self::with_bytes(name, text.as_bytes())
    }

    /// Writes `bytes` (not necessarily UTF-8) to a new file whose name ends with `name`.
    pub fn with_bytes(name: &str, bytes: &[u8]) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let file = format!("sse-proxy-test-{}-{nanos}-{name}", std::process::id());
        let path = std::env::temp_dir().join(file);
        std::fs::write(&path, bytes).expect("write temp file");
        TempFile(path)
    }

    /// The path as a string.
    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf8 path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A config for the binary in front of `upstream`: both listeners on port 0, a 1 s shutdown grace,
/// `/stream` re-framed with the token at `/content`, then `extra` TOML.
pub fn stream_config(upstream: SocketAddr, extra: &str) -> TempFile {
    TempFile::new(
        "proxy.toml",
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "1s"

[upstream]
url = "http://{upstream}"

[[stream]]
path = "/stream"
token_path = "/content"
{extra}"#
        ),
    )
}

/// A config for a replica on the Redis at `redis`, in front of `upstream`: both listeners on port
/// 0, `shutdown_grace` and `[store] lease` as given, `/stream` and `/s/*` re-framed with the token at
/// `/content`.
pub fn redis_config(upstream: SocketAddr, redis: &str, grace: &str, lease: &str) -> TempFile {
    TempFile::new(
        "replica.toml",
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "{grace}"

[upstream]
url = "http://{upstream}"

[store]
kind = "redis"
url = "{redis}"
lease = "{lease}"

[[stream]]
path = "/stream"
token_path = "/content"

[[stream]]
path = "/s/*"
token_path = "/content"
"#
        ),
    )
}

/// Runs the binary with `args` to completion: (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run sse-proxy");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The lines of a JSON log, each parsed; panics on a line that is not JSON.
pub fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l:?}")))
        .collect()
}

/// A running proxy process; killed on drop.
pub struct ProxyProcess {
    child: Child,
    /// The main listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the proxy said about it (its warnings and errors).
        if std::thread::panicking() {
            if let Some(log) = self.stderr.take().and_then(|h| h.join().ok()) {
                let said: Vec<&str> = log.lines().filter(|l| !l.contains(" INFO ")).collect();
                eprintln!(
                    "--- sse-proxy {} (pid {}) warnings:\n{}",
                    self.addr,
                    self.child.id(),
                    said.join("\n")
                );
            }
        }
    }
}

impl ProxyProcess {
    /// Starts the binary with `args` and `RUST_LOG=info`, and waits for its
    /// `{"listening":..,"admin":..}` line.
    pub async fn start(args: &[&str]) -> ProxyProcess {
        Self::start_env(args, &[("NO_COLOR", Some("1"))]).await
    }

    /// [`ProxyProcess::start`] with `env` applied instead of `NO_COLOR=1`: `Some` sets a variable,
    /// `None` removes it.
    pub async fn start_env(args: &[&str], env: &[(&str, Option<&str>)]) -> ProxyProcess {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let env: Vec<(String, Option<String>)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect();
        tokio::task::spawn_blocking(move || Self::start_blocking(&args, &env))
            .await
            .expect("start")
    }

    fn start_blocking(args: &[String], env: &[(String, Option<String>)]) -> ProxyProcess {
        let mut cmd = Command::new(BIN);
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let mut child = cmd
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sse-proxy");
        let mut err_pipe = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            let _ = err_pipe.read_to_string(&mut all);
            all
        });
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep draining (the demo prints a banner) so the process never blocks on stdout.
            for _ in lines {}
        });
        let Ok(first) = rx.recv_timeout(super::WAIT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no listening line; stderr: {}", stderr.join().unwrap_or_default());
        };
        let v: serde_json::Value =
            serde_json::from_str(&first).unwrap_or_else(|e| panic!("not JSON ({e}): {first:?}"));
        let obj = v.as_object().expect("object");
        assert_eq!(obj.len(), 2, "{first}");
        let addr = v["listening"].as_str().expect("listening").parse().expect("addr");
        let admin = v["admin"].as_str().expect("admin").parse().expect("addr");
        ProxyProcess {
            child,
            addr,
            admin,
            stderr: Some(stderr),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Sends SIGHUP: the proxy reloads its config file.
    pub fn sighup(&self) {
        self.signal("-HUP");
    }

    /// Sends SIGKILL: the process ends at once, its sockets closed by the kernel.
    pub fn sigkill(&self) {
        self.signal("-KILL");
    }

    fn signal(&self, which: &str) {
        let st = Command::new("kill")
            .arg(which)
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(st.success());
    }

    /// Waits up to `WAIT` for the process to exit: its status (`None` if it had to be killed) and
    /// everything it wrote to stderr.
    pub async fn exit(mut self) -> (Option<ExitStatus>, String) {
        tokio::task::spawn_blocking(move || {
            let status = self.wait_exit(super::WAIT);
            if status.is_none() {
                // Killed, so that its stderr pipe closes and can be read to the end.
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
            let log = self
                .stderr
                .take()
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default();
            (status, log)
        })
        .await
        .expect("join")
    }

    /// [`ProxyProcess::exit`], asserting exit status 0 and no line logged at ERROR: the JSON log
    /// lines and the whole log.
    pub async fn clean_exit(self) -> (Vec<serde_json::Value>, String) {
        let (status, log) = self.exit().await;
        assert!(
            status.is_some_and(|s| s.success()),
            "exit status {status:?}; log:\n{log}"
        );
        let lines = json_lines(&log);
        let errors: Vec<_> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
        assert!(errors.is_empty(), "errors logged at shutdown: {errors:?}");
        (lines, log)
    }

    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
