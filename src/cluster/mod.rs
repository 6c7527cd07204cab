//! What the replicas on one stream store share besides the streams: places in the cluster-wide
//! limits (`admission`) and the learned answer lengths (`history`). With the memory store both stay
//! in this process and behave as a single proxy always did.

mod admission;
mod history;

pub use admission::{Admission, Admitted};
pub use history::SharedHistory;
