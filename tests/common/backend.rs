//! The reference FastAPI backend (`examples/fastapi-backend`) as a real uvicorn process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running backend; killed on drop.
pub struct Backend {
    pub addr: SocketAddr,
    child: Child,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether every suite must run: scripts/test.sh sets `SSE_PROXY_REQUIRE_ALL=1`, CI sets `CI`.
pub fn require_all() -> bool {
    std::env::var("SSE_PROXY_REQUIRE_ALL").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// The Python that has the backend's requirements: `python` (from `$SSE_PROXY_PYTHON`) when given,
/// else `venv`. `Ok(None)` (skip) only when a person runs the tests by hand without the venv; under
/// scripts/test.sh or CI (`required`) and for a named Python that does not exist, an error.
pub fn locate_python(
    python: Option<PathBuf>,
    venv: PathBuf,
    required: bool,
    exists: impl Fn(&std::path::Path) -> bool,
) -> Result<Option<PathBuf>, String> {
    if let Some(p) = python {
        return if exists(&p) {
            Ok(Some(p))
        } else {
            Err(format!("SSE_PROXY_PYTHON={} does not exist", p.display()))
        };
    }
    if exists(&venv) {
        Ok(Some(venv))
    } else if required {
        Err(format!(
            "the reference backend's venv is missing ({}): scripts/test.sh creates it and exports SSE_PROXY_PYTHON",
            venv.display()
        ))
    } else {
        Ok(None)
    }
}

/// Starts the backend, or returns `None` (with a printed SKIPPED line) when a person runs the tests
/// by hand without its venv. Under scripts/test.sh or CI a missing venv is a failure, never a skip.
pub fn start() -> Option<Backend> {
    start_with_env(&[])
}

/// Starts the backend with extra environment variables.
pub fn start_with_env(env: &[(&str, &str)]) -> Option<Backend> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/fastapi-backend/.venv/bin/python");
    let python = std::env::var_os("SSE_PROXY_PYTHON").map(PathBuf::from);
    let py = match locate_python(python, venv, require_all(), |p| p.exists()) {
        Ok(Some(py)) => py,
        Ok(None) => {
            eprintln!("SKIPPED (run by hand): no examples/fastapi-backend/.venv; scripts/test.sh sets it up");
            return None;
        }
        Err(why) => panic!("{why}"),
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/fastapi-backend");
    let port_file = std::env::temp_dir().join(format!(
        "sse-proxy-backend-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let mut cmd = Command::new(py);
    cmd.arg(dir.join("run.py"))
        .arg("--port-file")
        .arg(&port_file)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // The fail_after tests make uvicorn print tracebacks on purpose; show them only when asked.
        .stderr(if std::env::var_os("SSE_PROXY_BACKEND_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Owned by a Backend from the start, so it is killed and reaped on every path.
    let mut backend = Backend {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        child: cmd.spawn().expect("start the reference backend"),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = std::fs::read_to_string(&port_file) {
            if let Ok(port) = s.trim().parse::<u16>() {
                let _ = std::fs::remove_file(&port_file);
                backend.addr.set_port(port);
                return Some(backend);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reference backend did not start within 30s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}
