//! A round-robin TCP balancer in front of several proxies, as a load balancer or a Kubernetes
//! Service would be: each accepted connection goes to the next backend, and a backend that refuses
//! the connection (stopped listening, killed) is skipped for the next one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The backends and the next one to try.
#[derive(Default)]
struct Pool {
    backends: Mutex<Vec<SocketAddr>>,
    next: AtomicUsize,
    /// Connections passed to each backend, by address.
    served: Mutex<Vec<(SocketAddr, usize)>>,
}

impl Pool {
    /// The backends in the order to try them for the next connection.
    fn rotation(&self) -> Vec<SocketAddr> {
        let all = self.backends.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if all.is_empty() {
            return all;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % all.len();
        all[start..].iter().chain(&all[..start]).copied().collect()
    }

    fn count(&self, addr: SocketAddr) {
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        match served.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, n)) => *n += 1,
            None => served.push((addr, 1)),
        }
    }
}

/// A balancer listening on a loopback port; stops on drop.
pub struct Balancer {
    /// Where clients connect.
    pub addr: SocketAddr,
    pool: Arc<Pool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Balancer {
    /// Starts a balancer in front of `backends`.
    pub async fn start(backends: &[SocketAddr]) -> Balancer {
        let pool = Arc::new(Pool::default());
        *pool.backends.lock().expect("lock") = backends.to_vec();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind balancer");
        let addr = listener.local_addr().expect("balancer addr");
        let accept = tokio::spawn(accept_loop(listener, pool.clone()));
        Balancer { addr, pool, accept }
    }

    /// Adds a backend (a replica started later).
    pub fn add(&self, backend: SocketAddr) {
        self.pool.backends.lock().expect("lock").push(backend);
    }

    /// Removes a backend: new connections no longer go to it (open ones stay).
    pub fn remove(&self, backend: SocketAddr) {
        self.pool.backends.lock().expect("lock").retain(|b| *b != backend);
    }

    /// How many connections went to `backend`.
    pub fn served(&self, backend: SocketAddr) -> usize {
        let served = self.pool.served.lock().expect("lock");
        served.iter().find(|(a, _)| *a == backend).map_or(0, |(_, n)| *n)
    }
}

async fn accept_loop(listener: TcpListener, pool: Arc<Pool>) {
    // Connections end with the balancer: dropping the set aborts them.
    let mut conns = JoinSet::new();
    while let Ok((client, _)) = listener.accept().await {
        let _ = client.set_nodelay(true);
        conns.spawn(forward(client, pool.clone()));
        while conns.try_join_next().is_some() {}
    }
}

/// Connects `client` to the first backend of the rotation that accepts, and copies both ways until
/// either side closes. With no backend accepting, the client's connection is closed.
async fn forward(mut client: TcpStream, pool: Arc<Pool>) {
    for backend in pool.rotation() {
        let Ok(mut upstream) = TcpStream::connect(backend).await else {
            continue;
        };
        let _ = upstream.set_nodelay(true);
        pool.count(backend);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        return;
    }
}
