//! A real `redis-server` on a free loopback port, with nothing persisted; killed on drop.

use super::backend::require_all;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Debian package's binary (`.ci/run` installs it when missing).
const BINARY: &str = "redis-server";

/// A running Redis; killed on drop.
pub struct RedisServer {
    port: u16,
    child: Child,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `name` is an executable on `PATH`.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| Path::new(&dir).join(name).is_file()))
}

impl RedisServer {
    /// Starts a server, or returns `None` (with a printed SKIPPED line) when a person runs the tests
    /// by hand without `redis-server`. Under scripts/test.sh or CI a missing server is a failure.
    pub fn start() -> Option<RedisServer> {
        if !on_path(BINARY) {
            assert!(
                !require_all(),
                "redis-server is missing: .ci/run installs the Debian package redis-server"
            );
            eprintln!("SKIPPED (run by hand): no redis-server on PATH (apt-get install redis-server)");
            return None;
        }
        // A port the OS just handed out and that nobody holds; redis-server binds it right after.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = Command::new(BINARY)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = RedisServer { port, child };
        let deadline = Instant::now() + super::WAIT;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    /// Its `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}
