//! `[store] url = "rediss://…"`: proxies on a real `redis-server` that speaks only TLS and asks
//! for a password, trusting its private CA through `[store] ca_file`. A resume crosses replicas as
//! on plain Redis; a server certificate from another CA, or a CA file that is not one, stops a
//! proxy that requires the store with a clear error.

mod common;

use common::backend::require_all;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use sse_proxy::config::{Config, StoreKind};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "s3cret-pa55";

/// A CA: its certificate in PEM and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("CA certificate");
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sse-proxy-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A `redis-server` listening only with TLS on a free loopback port, its certificate (for
/// 127.0.0.1 and localhost) signed by `ca`, clients authenticating with [`PASSWORD`].
struct TlsRedis {
    port: u16,
    child: Child,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsRedis {
    fn start(ca: &Ca, dir: &Path) -> Option<TlsRedis> {
        let on_path = std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("redis-server").is_file()));
        if !on_path {
            assert!(!require_all(), "redis-server is missing: .ci/run installs it");
            eprintln!("SKIPPED (run by hand): no redis-server on PATH (apt-get install redis-server)");
            return None;
        }
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params");
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &ca.issuer).expect("server certificate");
        let (cert_file, key_file, ca_file) = (
            dir.join("redis.crt"),
            dir.join("redis.key"),
            dir.join("redis-ca.crt"),
        );
        std::fs::write(&cert_file, cert.pem()).expect("write certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        std::fs::write(&ca_file, &ca.pem).expect("write CA");
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let path = |p: &Path| p.display().to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--tls-cert-file",
                &path(&cert_file),
                "--tls-key-file",
                &path(&key_file),
            ])
            .args(["--tls-ca-cert-file", &path(&ca_file), "--tls-auth-clients", "no"])
            .args(["--requirepass", PASSWORD, "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = TlsRedis { port, child };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    /// Its `rediss://` URL with the password.
    fn url(&self) -> String {
        format!("rediss://:{PASSWORD}@127.0.0.1:{}/0", self.port)
    }
}

/// `cfg` on the TLS Redis at `url`, trusting the CA in `ca_file`.
fn on_tls_redis(cfg: &mut Config, url: &str, ca_file: &Path) {
    cfg.store.kind = StoreKind::Redis;
    cfg.store.url = url.to_owned();
    cfg.store.ca_file = Some(ca_file.to_owned());
    cfg.store.key_prefix = "sse-proxy-tls-test".into();
}

/// Why a proxy on `cfg` could not start.
async fn start_error(cfg: Config) -> String {
    let settings = sse_proxy::settings::Settings::build(&cfg);
    let metrics = sse_proxy::metrics::Prometheus::standalone().expect("metrics recorder");
    let shutdown = tokio_util::sync::CancellationToken::new();
    match sse_proxy::server::bind(settings, shutdown, metrics).await {
        Ok(_) => panic!("a proxy started without its required Redis"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_resume_crosses_replicas_on_a_tls_redis_with_a_password() {
    let dir = scratch("resume");
    let ca = ca("sse-proxy test CA");
    let Some(redis) = TlsRedis::start(&ca, &dir) else {
        return;
    };
    let ca_file = dir.join("trusted-ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("write CA");
    let tokens = tricky_tokens(120);
    let t = tokens.clone();
    let up = MockUpstream::start(move |_, _| Reply::sse(answer(&t, Duration::from_millis(5)))).await;
    let a = proxy(up.addr, |c| on_tls_redis(c, &redis.url(), &ca_file)).await;
    let b = proxy(up.addr, |c| on_tls_redis(c, &redis.url(), &ca_file)).await;

    assert_resume_crosses_replicas(&a, &b, &up, &tokens).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_certificate_from_another_ca_stops_a_proxy_that_requires_the_store() {
    let dir = scratch("wrong-ca");
    let Some(redis) = TlsRedis::start(&ca("the server's CA"), &dir) else {
        return;
    };
    let other = dir.join("other-ca.pem");
    std::fs::write(&other, ca("another CA").pem).expect("write CA");
    let mut cfg = base_config("127.0.0.1:9".parse().expect("addr"));
    on_tls_redis(&mut cfg, &redis.url(), &other);
    let err = start_error(cfg).await;
    assert!(err.contains("required and unavailable"), "{err}");
    assert!(
        err.contains("certificate"),
        "says the certificate is the trouble: {err}"
    );
    assert!(err.contains("rediss://***@127.0.0.1"), "{err}");
    assert!(!err.contains(PASSWORD), "the password is not printed: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_wrong_password_stops_a_proxy_that_requires_the_store() {
    let dir = scratch("wrong-password");
    let ca = ca("sse-proxy test CA");
    let Some(redis) = TlsRedis::start(&ca, &dir) else {
        return;
    };
    let ca_file = dir.join("trusted-ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("write CA");
    let mut cfg = base_config("127.0.0.1:9".parse().expect("addr"));
    let url = redis.url().replace(PASSWORD, "not-the-password");
    on_tls_redis(&mut cfg, &url, &ca_file);
    let err = start_error(cfg).await;
    assert!(err.contains("required and unavailable"), "{err}");
    assert!(
        err.to_lowercase().contains("authentication"),
        "says the password is the trouble: {err}"
    );
    assert!(
        !err.contains("not-the-password"),
        "the password is not printed: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_ca_file_that_holds_no_certificate_is_refused_at_start() {
    let dir = scratch("bad-ca-file");
    let mut cfg = base_config("127.0.0.1:9".parse().expect("addr"));
    let missing = dir.join("missing.pem");
    on_tls_redis(&mut cfg, "rediss://127.0.0.1:9/0", &missing);
    let err = start_error(cfg.clone()).await;
    assert!(
        err.contains("store.ca_file") && err.contains("cannot be read"),
        "{err}"
    );

    let not_pem = dir.join("not-a-cert.pem");
    std::fs::write(&not_pem, "hello\n").expect("write");
    cfg.store.ca_file = Some(not_pem);
    let err = start_error(cfg).await;
    assert!(
        err.contains("store.ca_file") && err.contains("no CERTIFICATE"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_ca_file_the_system_roots_are_used_or_those_of_ssl_cert_file() {
    use std::io::{BufRead, BufReader, Read};
    let dir = scratch("system-roots");
    let ca = ca("sse-proxy test CA");
    let Some(redis) = TlsRedis::start(&ca, &dir) else {
        return;
    };
    let ca_file = dir.join("system-ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("write CA");
    let config = process::stream_config(
        "127.0.0.1:9".parse().expect("addr"),
        &format!("\n[store]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url()),
    );
    let start = |ssl_cert_file: Option<&Path>| {
        let mut cmd = Command::new(process::BIN);
        cmd.args(["--config", config.path()])
            .env("RUST_LOG", "warn")
            .env_remove("SSL_CERT_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match ssl_cert_file {
            Some(f) => cmd.env("SSL_CERT_FILE", f),
            None => cmd.env_remove("SSL_CERT_FILE"),
        };
        let mut child = cmd.spawn().expect("start sse-proxy");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
        let _ = child.kill();
        let _ = child.wait();
        let mut stderr = String::new();
        let _ = child.stderr.take().expect("stderr").read_to_string(&mut stderr);
        (line, stderr)
    };
    let (line, stderr) = start(Some(&ca_file));
    assert!(
        line.contains("listening"),
        "started with SSL_CERT_FILE: {line:?} {stderr}"
    );
    let (line, stderr) = start(None);
    assert!(
        !line.contains("listening"),
        "the private CA is not among the system's roots"
    );
    assert!(stderr.contains("certificate"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
