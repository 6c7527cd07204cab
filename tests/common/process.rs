//! The real `sse-proxy` binary as a child process: started on port 0, signalled, its log kept.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary Cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_sse-proxy");

/// A temporary file holding some text, removed on drop.
pub struct TempFile(PathBuf);

impl TempFile {
    /// Writes `text` to a new file whose name ends with `name`.
    pub fn new(name: &str, text: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let file = format!("sse-proxy-test-{}-{nanos}-{name}", std::process::id());
        let path = std::env::temp_dir().join(file);
        std::fs::write(&path, text).expect("write temp file");
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
    }
}

impl ProxyProcess {
    /// Starts the binary with `args` and `RUST_LOG=info`, and waits for its listening line.
    /// Blocking: call it from `spawn_blocking` in async tests.
    pub fn start(args: &[&str]) -> ProxyProcess {
        let mut child = Command::new(BIN)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
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
            for _ in lines {}
        });
        let Ok(first) = rx.recv_timeout(super::WAIT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no listening line; stderr: {}", stderr.join().unwrap_or_default());
        };
        let v: serde_json::Value =
            serde_json::from_str(&first).unwrap_or_else(|e| panic!("not JSON ({e}): {first:?}"));
        let addr = v["listening"].as_str().expect("listening").parse().expect("addr");
        let admin = v["admin"].as_str().expect("admin").parse().expect("addr");
        ProxyProcess {
            child,
            addr,
            admin,
            stderr: Some(stderr),
        }
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(st.success());
    }

    /// Waits up to `within` for the process to exit. Blocking.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
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

    /// Everything the process wrote to stderr; waits for the pipe to close. Blocking: call it
    /// after the process exited.
    pub fn stderr(&mut self) -> String {
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}
