//! What the memory store keeps besides streams: claims on the limits, learned lengths, secrets.
//! No locking and no clock of its own: [`super::MemoryStore`] holds it under a lock and says when
//! it is.

use super::{Admission, AdmitLimits, Claim};
use crate::ids::StreamId;
use crate::stream::Rejected;
use std::collections::{HashMap, VecDeque};
use tokio::time::Instant;

/// Most (route, model) histories kept; the least recently written goes first.
const MAX_HISTORIES: usize = 256;

struct Held {
    claim: Claim,
    until: Instant,
}

struct History {
    lengths: VecDeque<u64>,
    written: u64,
}

/// Claims, histories and secrets.
#[derive(Default)]
pub(super) struct Cluster {
    claims: HashMap<StreamId, Held>,
    histories: HashMap<(String, String), History>,
    writes: u64,
    secrets: HashMap<&'static str, [u8; 16]>,
}

impl Cluster {
    /// Takes a place for `claim`, held until `until`, unless a limit is reached at `now`.
    pub(super) fn admit(
        &mut self,
        claim: Claim,
        limits: AdmitLimits,
        now: Instant,
        until: Instant,
    ) -> Admission {
        self.claims.retain(|_, h| h.until > now);
        if let Some(held) = self.claims.get_mut(&claim.id) {
            held.until = until;
            return Admission::Admitted;
        }
        if self.claims.len() >= limits.max_streams {
            return Admission::Full(Rejected::MaxStreams);
        }
        if let Some(owner) = claim.owner {
            let theirs = self
                .claims
                .values()
                .filter(|h| h.claim.owner == Some(owner))
                .count();
            if theirs >= limits.max_per_identity {
                return Admission::Full(Rejected::MaxStreamsPerIdentity);
            }
        }
        self.claims.insert(claim.id, Held { claim, until });
        Admission::Admitted
    }

    /// Holds `claim` until `until`, whether it was held or not.
    pub(super) fn refresh(&mut self, claim: Claim, until: Instant) {
        self.claims.insert(claim.id, Held { claim, until });
    }

    /// Gives the place of `id` back.
    pub(super) fn release(&mut self, id: StreamId) {
        self.claims.remove(&id);
    }

    /// The claims held at `now`: stream id and replica.
    pub(super) fn claims(&self, now: Instant) -> Vec<(StreamId, String)> {
        self.claims
            .values()
            .filter(|h| h.until > now)
            .map(|h| (h.claim.id, h.claim.replica.to_string()))
            .collect()
    }

    /// Adds `total` to the history of `key`, keeping the newest `keep`.
    pub(super) fn add_length(&mut self, key: (String, String), total: u64, keep: usize) {
        self.writes += 1;
        if !self.histories.contains_key(&key) && self.histories.len() >= MAX_HISTORIES {
            let oldest = self
                .histories
                .iter()
                .min_by_key(|(_, h)| h.written)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.histories.remove(&k);
            }
        }
        let h = self.histories.entry(key).or_insert_with(|| History {
            lengths: VecDeque::new(),
            written: 0,
        });
        h.written = self.writes;
        h.lengths.push_back(total);
        while h.lengths.len() > keep {
            h.lengths.pop_front();
        }
    }

    /// The newest `keep` lengths of `key`, oldest first.
    pub(super) fn lengths(&self, key: &(String, String), keep: usize) -> Vec<u64> {
        self.histories.get(key).map_or_else(Vec::new, |h| {
            let skip = h.lengths.len().saturating_sub(keep);
            h.lengths.iter().skip(skip).copied().collect()
        })
    }

    /// The secret under `name`, `proposed` if there was none.
    pub(super) fn secret(&mut self, name: &'static str, proposed: [u8; 16]) -> [u8; 16] {
        *self.secrets.entry(name).or_insert(proposed)
    }
}
