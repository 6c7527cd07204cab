//! The shared store contract (`sse_proxy::store::contract`) run on the Redis store, against a real
//! `redis-server` each case starts for itself.

mod common;

use common::redis_server::RedisServer;
use sse_proxy::store::contract;
use sse_proxy::store::{RedisStore, Store, StoreSettings};
use std::sync::Arc;

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
redis_case!(lease_expiry_is_visible);
redis_case!(streams_expire);
redis_case!(remove_then_not_found);
