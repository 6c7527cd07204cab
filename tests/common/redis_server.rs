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
        let child = spawn(port);
        let server = RedisServer { port, child };
        server.wait_listening();
        Some(server)
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + super::WAIT;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (its data goes with it: nothing is persisted).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts an empty server again on the same port, once stopped.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(self.port);
        self.wait_listening();
    }

    /// Its `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// A `redis-server` on `port`, persisting nothing.
fn spawn(port: u16) -> Child {
    Command::new(BINARY)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server")
}
