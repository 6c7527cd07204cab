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
