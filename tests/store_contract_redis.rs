//! The shared store contract (`sse_proxy::store::contract`) run on the Redis store, against a real
//! `redis-server` each case starts for itself.

mod common;

use bytes::Bytes;
use common::redis_server::RedisServer;
use sse_proxy::ids::StreamId;
use sse_proxy::store::contract;
use sse_proxy::store::{Batch, NewStream, RedisStore, Store, StoreError, StoreSettings, Wait};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Runs contract case `$case` on a Redis store backed by a server of its own.
macro_rules! redis_case {
    ($case:ident $(, $flavor:tt)?) => {
        #[tokio::test$($flavor)?]
        async fn $case() {
            let Some(server) = RedisServer::start() else {
                return;
            };
            let url = server.url();
            let factory = move |settings: StoreSettings| {
                let url = url.clone();
                async move {
                    let store = RedisStore::connect(&url, "sse-proxy-test", settings)
                        .await
                        .expect("connect to redis-server");
                    Arc::new(store) as Arc<dyn Store>
                }
            };
            contract::$case(&factory).await;
            drop(server);
        }
    };
}

redis_case!(ids_gapless_and_frames_byte_identical);
redis_case!(reads_after_a_position);
redis_case!(coalescing_bound_keeps_at_least_one_frame);
redis_case!(pending_then_wakes_on_append);
redis_case!(end_after_finish);
redis_case!(finish_is_idempotent);
redis_case!(gone_for_evicted_and_forged_positions);
redis_case!(trim_keeps_positions);
redis_case!(metadata_round_trip);
redis_case!(
    concurrent_appenders_and_readers,
    (flavor = "multi_thread", worker_threads = 4)
);
redis_case!(a_held_lease_refuses_a_lost_finish);
redis_case!(lease_expiry_is_visible);
redis_case!(streams_expire);
redis_case!(remove_then_not_found);
redis_case!(admission_counts_claims_and_releases_them);
redis_case!(lapsed_claims_free_their_place);
redis_case!(claims_list_their_streams_metadata);
redis_case!(lengths_keep_the_newest_per_route_and_model);
redis_case!(shared_secret_first_proposal_wins);
redis_case!(followers_are_counted_until_they_leave_or_lapse);

/// A count from `server`'s `INFO clients` (this query's own connection included).
async fn info_clients(server: &RedisServer, field: &str) -> usize {
    let client = redis::Client::open(server.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis-server");
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut conn)
        .await
        .expect("INFO clients");
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|n| n.trim().parse().ok())
        .expect("the field in INFO clients")
}

/// Many waiters on many streams share one reader connection, and each wakes on its own append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reads_share_one_connection() {
    const STREAMS: usize = 50;
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(
        RedisStore::connect(&server.url(), "sse-proxy-test", contract::settings())
            .await
            .expect("connect to redis-server"),
    );
    let mut ids = Vec::new();
    let mut waiters = Vec::new();
    for _ in 0..STREAMS {
        let id = StreamId::random();
        store.create(id, NewStream::for_tests()).await.expect("create");
        let store = store.clone();
        waiters.push(tokio::spawn(async move {
            let deadline = Instant::now() + common::WAIT;
            store.wait(id, 0, deadline).await
        }));
        ids.push(id);
    }
    // Once Redis holds a blocked reader, the waiters are waiting: the store's connections are its
    // command connection and its one reader, whatever the number of waiters.
    let deadline = Instant::now() + common::WAIT;
    while info_clients(&server, "blocked_clients").await == 0 {
        assert!(
            Instant::now() < deadline,
            "no blocking read within {:?}",
            common::WAIT
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        waiters.iter().all(|w| !w.is_finished()),
        "a waiter woke with nothing appended"
    );
    let clients = info_clients(&server, "connected_clients").await;
    assert!(clients <= 3, "{clients} connections for {STREAMS} waiters");
    for id in &ids {
        let frame = Bytes::from(format!("data: t\nid: {id}:1\n\n"));
        store
            .append(*id, Batch::new(1, vec![frame]))
            .await
            .expect("append");
    }
    for w in waiters {
        assert_eq!(w.await.expect("waiter"), Ok(Wait::Ready));
    }
}

/// A stopped Redis fails every operation within the store's timeout, waits included; once it is
/// back, the command connection and the shared reader connect again by themselves.
#[tokio::test]
async fn a_redis_that_goes_away_fails_operations_quickly_and_is_used_again_once_back() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(
        RedisStore::connect(&server.url(), "sse-proxy-test", contract::settings())
            .await
            .expect("connect to redis-server"),
    );
    store.ping().await.expect("ping");
    let id = StreamId::random();
    store.create(id, NewStream::for_tests()).await.expect("create");
    server.stop();
    for _ in 0..3 {
        let started = Instant::now();
        assert!(matches!(store.ping().await, Err(StoreError::Unavailable(_))));
        assert!(matches!(store.meta(id).await, Err(StoreError::Unavailable(_))));
        let deadline = Instant::now() + common::WAIT;
        assert!(matches!(
            store.wait(id, 0, deadline).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(started.elapsed() < common::WAIT, "failed, not hung");
    }
    server.restart();
    let deadline = Instant::now() + common::WAIT;
    while store.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the store never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Back empty: the stream is gone, a new one works, and a waiter is woken through the reader.
    assert_eq!(store.meta(id).await.err(), Some(StoreError::NotFound));
    let id = StreamId::random();
    store.create(id, NewStream::for_tests()).await.expect("create");
    let waiter = tokio::spawn({
        let store = store.clone();
        async move { store.wait(id, 0, Instant::now() + common::WAIT).await }
    });
    while info_clients(&server, "blocked_clients").await == 0 {
        assert!(Instant::now() < deadline, "no blocking read after the restart");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let frame = Bytes::from(format!("data: t\nid: {id}:1\n\n"));
    store
        .append(id, Batch::new(1, vec![frame]))
        .await
        .expect("append");
    assert_eq!(waiter.await.expect("waiter"), Ok(Wait::Ready));
}
