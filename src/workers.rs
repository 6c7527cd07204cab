//! The threads that serve the main listener. Each runs a single-threaded runtime with a listening
//! socket of its own on the shared address, so a client connection, the stream reader it starts,
//! the backend connection that reader reads and the log's delivery to its followers stay on one
//! thread: a token wakes no other thread on its way through. The shared state (streams, limits,
//! metrics, store) is shared across them; background work (admin listener, store upkeep, signals,
//! the shutdown sequence) runs on the process's main runtime.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{task_tracker::TaskTrackerToken, TaskTracker};

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// How long a worker's runtime may take to stop once the process is done with it.
const STOP: Duration = Duration::from_secs(1);

/// The index of the worker thread this runs on; 0 on any other thread.
pub(crate) fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Running worker threads.
pub(crate) struct Workers {
    /// Each worker holds a token until its listener has stopped and drained.
    served: TaskTracker,
    /// Each worker holds a token until its runtime has stopped.
    exited: TaskTracker,
    /// Tells the workers to stop their runtimes.
    exit: CancellationToken,
}

/// Starts a worker thread for each of `listeners`, serving it with `serve`; fails when a worker
/// cannot start its runtime (the ones started meanwhile stop once their `serve` returns).
pub(crate) async fn start<F, Fut>(listeners: Vec<std::net::TcpListener>, serve: F) -> io::Result<Workers>
where
    F: Fn(TcpListener) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let workers = Workers {
        served: TaskTracker::new(),
        exited: TaskTracker::new(),
        exit: CancellationToken::new(),
    };
    let mut ready = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.into_iter().enumerate() {
        let (tx, rx) = oneshot::channel();
        let (served, exited, exit) = (
            workers.served.token(),
            workers.exited.token(),
            workers.exit.clone(),
        );
        let serve = serve.clone();
        let thread = std::thread::Builder::new()
            .name(format!("sse-proxy-w{i}"))
            .spawn(move || {
                INDEX.with(|x| x.set(i));
                run(listener, serve, tx, served, exit);
                drop(exited);
            });
        if let Err(e) = thread {
            workers.exit.cancel();
            return Err(e);
        }
        ready.push(rx);
    }
    for rx in ready {
        let started = rx
            .await
            .unwrap_or_else(|_| Err(io::Error::other("a worker thread stopped while starting")));
        if let Err(e) = started {
            workers.exit.cancel();
            return Err(e);
        }
    }
    workers.served.close();
    workers.exited.close();
    Ok(workers)
}

/// A worker's life: its runtime, `serve` on its listener, then a wait for `exit`.
fn run<F, Fut>(
    listener: std::net::TcpListener,
    serve: F,
    ready: oneshot::Sender<io::Result<()>>,
    served: TaskTrackerToken,
    exit: CancellationToken,
) where
    F: Fn(TcpListener) -> Fut,
    Fut: Future<Output = ()>,
{
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        serve(listener).await;
    });
    drop(served);
    // The stream readers and store writes the worker's connections started keep running on
    // its runtime until the process is done with them.
    rt.block_on(exit.cancelled());
    rt.shutdown_timeout(STOP);
}

impl Workers {
    /// Waits until every worker's listener has stopped and drained.
    pub(crate) async fn served(&self) {
        self.served.wait().await;
    }

    /// Stops the workers' runtimes and waits for them.
    pub(crate) async fn exit(self) {
        self.exit.cancel();
        self.exited.wait().await;
    }
}
