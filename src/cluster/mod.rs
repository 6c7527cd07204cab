//! What the replicas on one stream store share besides the streams: places in the cluster-wide
//! limits (`admission`), the count of followers tailing a stream from the store (`followers`), the
//! learned answer lengths (`history`) and the key of the owner hashes
//! (`identity_key`). With the memory store they stay in this process and behave as a single proxy
//! always did.

mod admission;
mod followers;
mod history;
pub mod identity_key;

pub use admission::{Admission, Admitted};
pub use followers::{follow, Following, NotFollowing};
pub use history::SharedHistory;

use std::future::Future;
use std::task::{Context, Waker};

/// Runs `give_back` (giving a counted place back to the store) from a `Drop`: at once when it is
/// done at once, as a store in memory is, so the place is free when the drop returns; otherwise on
/// the current runtime, if any (without one, the place's lease lapses instead).
fn give_back_on_drop(give_back: impl Future<Output = ()> + Send + 'static) {
    let mut give_back = Box::pin(give_back);
    let mut cx = Context::from_waker(Waker::noop());
    if give_back.as_mut().poll(&mut cx).is_pending() {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(give_back);
        }
    }
}
