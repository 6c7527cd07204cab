//! Many concurrent streams whose clients keep cutting their connections and resuming: on one proxy,
//! and on two replicas on one Redis behind a round-robin balancer.

mod common;

use common::balancer::Balancer;
use common::process::{redis_config, ProxyProcess};
use common::redis_server::RedisServer;
use common::*;

const STREAMS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_streams_survive_random_cuts() {
    let up = chaos::upstream().await;
    let p = proxy(up.addr, |_| {}).await;
    chaos::run(p.addr, &up, STREAMS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_streams_survive_random_cuts_across_two_replicas_on_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let up = chaos::upstream().await;
    let cfg = redis_config(up.addr, &redis.url(), "5s", "5s");
    let a = ProxyProcess::start(&["--config", cfg.path()]).await;
    let b = ProxyProcess::start(&["--config", cfg.path()]).await;
    let lb = Balancer::start(&[a.addr, b.addr]).await;
    let cuts = chaos::run(lb.addr, &up, STREAMS).await;
    // Round robin: every client's resumes went to both replicas.
    assert!(lb.served(a.addr) > cuts / 4 && lb.served(b.addr) > cuts / 4);
}
