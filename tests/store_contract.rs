//! The shared store contract (`sse_proxy::store::contract`) run on the memory store. A networked
//! store's tests run the same cases against a real server.

use sse_proxy::store::contract::{self, Factory};
use sse_proxy::store::{MemoryStore, Store, StoreSettings};
use std::sync::Arc;

/// A memory store with no total bound beyond what the cases write.
async fn memory(settings: StoreSettings) -> Arc<dyn Store> {
    Arc::new(MemoryStore::new(settings, usize::MAX))
}

const MEMORY: &dyn Factory = &memory;

#[tokio::test(start_paused = true)]
async fn ids_gapless_and_frames_byte_identical() {
    contract::ids_gapless_and_frames_byte_identical(MEMORY).await;
}

#[tokio::test(start_paused = true)]
async fn reads_after_a_position() {
    contract::reads_after_a_position(MEMORY).await;
}

#[tokio::test(start_paused = true)]
async fn coalescing_bound_keeps_at_least_one_frame() {
    contract::coalescing_bound_keeps_at_least_one_frame(MEMORY).await;
}

#[tokio::test(start_paused = true)]
async fn pending_then_wakes_on_append() {
    contract::pending_then_wakes_on_append(MEMORY).await;
}

#[tokio::test(start_paused = true)]
async fn end_after_finish() {
    contract::end_after_finish(MEMORY).await;
}

#[tokio::test(start_paused = true)]
async fn finish_is_idempotent() {
    contract::finish_is_idempotent(MEMORY).await;
}

#[tokio::test(start_paused = true)]
async fn gone_for_evicted_and_forged_positions() {
    contract::gone_for_evicted_and_forged_positions(MEMORY).await;
}

#[tokio::test(start_paused = true)]
async fn trim_keeps_positions() {
    contract::trim_keeps_positions(MEMORY).await;
}

#[tokio::test(start_paused = true)]
async fn metadata_round_trip() {
    contract::metadata_round_trip(MEMORY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appenders_and_readers() {
    contract::concurrent_appenders_and_readers(MEMORY).await;
}

#[tokio::test(start_paused = true)]
async fn a_held_lease_refuses_a_lost_finish() {
    contract::a_held_lease_refuses_a_lost_finish(MEMORY).await;
}

#[tokio::test(start_paused = true)]
async fn lease_expiry_is_visible() {
    contract::lease_expiry_is_visible(MEMORY).await;
}

#[tokio::test(start_paused = true)]
async fn streams_expire() {
    contract::streams_expire(MEMORY).await;
}

#[tokio::test(start_paused = true)]
async fn remove_then_not_found() {
    contract::remove_then_not_found(MEMORY).await;
}

#[tokio::test(start_paused = true)]
async fn admission_counts_claims_and_releases_them() {
    contract::admission_counts_claims_and_releases_them(MEMORY).await;
}

#[tokio::test(start_paused = true)]
async fn lapsed_claims_free_their_place() {
    contract::lapsed_claims_free_their_place(MEMORY).await;
}

#[tokio::test(start_paused = true)]
async fn claims_list_their_streams_metadata() {
    contract::claims_list_their_streams_metadata(MEMORY).await;
}

#[tokio::test(start_paused = true)]
async fn lengths_keep_the_newest_per_route_and_model() {
    contract::lengths_keep_the_newest_per_route_and_model(MEMORY).await;
}

#[tokio::test(start_paused = true)]
async fn shared_secret_first_proposal_wins() {
    contract::shared_secret_first_proposal_wins(MEMORY).await;
}

#[tokio::test(start_paused = true)]
async fn followers_are_counted_until_they_leave_or_lapse() {
    contract::followers_are_counted_until_they_leave_or_lapse(MEMORY).await;
}
