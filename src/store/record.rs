//! One stream in the memory store: its frames and metadata, with no locking and no clock of its own.

use super::{Batch, Meta, NewStream, Read, State, StoreError, Trim};
use crate::stream::Outcome;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// Bookkeeping overhead counted per held frame against the store's total budget.
pub(super) const ENTRY_OVERHEAD: usize = 32;

/// A stream's frames and metadata.
pub(super) struct Record {
    new: NewStream,
    frames: VecDeque<Bytes>,
    /// Seq of `frames[0]`.
    first: u64,
    bytes: usize,
    state: State,
    /// When its lease runs out (meaningless once finished).
    lease_until: Instant,
    finished_at: Option<Instant>,
    terminal: Option<Bytes>,
    /// Connections tailing it from the store, by token, with their lease deadline.
    followers: HashMap<u64, Instant>,
}

impl Record {
    /// A running stream with no frames whose lease runs until `lease_until`.
    pub(super) fn new(new: NewStream, lease_until: Instant) -> Self {
        Record {
            new,
            frames: VecDeque::new(),
            first: 1,
            bytes: 0,
            state: State::Running,
            lease_until,
            finished_at: None,
            terminal: None,
            followers: HashMap::new(),
        }
    }

    /// Seq the next frame gets.
    fn next(&self) -> u64 {
        self.first + self.frames.len() as u64
    }

    /// Seq of the last frame written (0 before the first).
    pub(super) fn last_seq(&self) -> u64 {
        self.next() - 1
    }

    /// Bytes of the frames held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// What the store's total budget is charged for this record.
    pub(super) fn charged(&self) -> usize {
        self.bytes + self.frames.len() * ENTRY_OVERHEAD
    }

    /// When it finished, if it has.
    pub(super) fn finished_at(&self) -> Option<Instant> {
        self.finished_at
    }

    /// Whether the store should forget it: finished, or its lease lapsed, `retention` ago or more.
    pub(super) fn expired(&self, now: Instant, retention: Duration) -> bool {
        // A crashed owner's stream is kept as long as a finished one, so a resume can still replay it.
        let since = self.finished_at.unwrap_or(self.lease_until);
        since.checked_add(retention).is_some_and(|at| now >= at)
    }

    /// Appends `batch` and drops the oldest frames down to `max_bytes` (keeping the newest).
    pub(super) fn append(&mut self, batch: Batch, max_bytes: usize) -> Result<(), StoreError> {
        if let State::Finished(outcome) = self.state {
            return Err(StoreError::Finished(outcome));
        }
        let expected = self.next();
        if batch.first != expected {
            return Err(StoreError::Conflict {
                expected,
                got: batch.first,
            });
        }
        for frame in batch.frames {
            self.bytes += frame.len();
            self.frames.push_back(frame);
        }
        self.drop_oldest(max_bytes, 1);
        Ok(())
    }

    /// Appends the last `batch` and marks the stream finished at `now`; a finished stream keeps its
    /// outcome, and a running one cannot be declared lost before its lease lapses. Returns the
    /// outcome it has.
    pub(super) fn finish(
        &mut self,
        outcome: Outcome,
        batch: Batch,
        max_bytes: usize,
        now: Instant,
    ) -> Result<Outcome, StoreError> {
        if let State::Finished(first) = self.state {
            return Ok(first);
        }
        if outcome == Outcome::Lost && now < self.lease_until {
            return Err(StoreError::LeaseHeld);
        }
        self.append(batch, max_bytes)?;
        self.state = State::Finished(outcome);
        self.finished_at = Some(now);
        self.terminal = self.frames.back().cloned();
        Ok(outcome)
    }

    /// Extends a running stream's lease to `until`.
    pub(super) fn refresh(&mut self, until: Instant) -> Result<(), StoreError> {
        match self.state {
            State::Running => {
                self.lease_until = until;
                Ok(())
            }
            State::Finished(outcome) => Err(StoreError::Finished(outcome)),
        }
    }

    /// Counts follower `token` until `until` unless `max` followers are counted at `now`.
    pub(super) fn follow(&mut self, token: u64, max: usize, now: Instant, until: Instant) -> bool {
        self.followers.retain(|_, at| *at > now);
        if !self.followers.contains_key(&token) && self.followers.len() >= max {
            return false;
        }
        self.followers.insert(token, until);
        true
    }

    /// Counts follower `token` until `until`, whether it was counted or not.
    pub(super) fn refresh_follow(&mut self, token: u64, until: Instant) {
        self.followers.insert(token, until);
    }

    /// Stops counting follower `token`.
    pub(super) fn unfollow(&mut self, token: u64) {
        self.followers.remove(&token);
    }

    /// Frames after `after`, coalesced up to `max_bytes` (at least one).
    pub(super) fn read(&self, after: u64, max_bytes: usize) -> Read {
        let next = self.next();
        // Once `after < next` holds, `after + 1` cannot overflow.
        if after >= next || after + 1 < self.first {
            // Past the end is a forged position; before the start was trimmed.
            return Read::Gone;
        }
        let start = (after + 1 - self.first) as usize;
        if start >= self.frames.len() {
            return match self.state {
                State::Running => Read::Pending,
                State::Finished(_) => Read::End,
            };
        }
        let (chunk, count) = crate::log::coalesce(&self.frames, start, self.frames.len(), max_bytes);
        Read::Data {
            chunk,
            last: after + count as u64,
        }
    }

    /// Whether a read after `after` would be `Pending`.
    pub(super) fn is_pending(&self, after: u64) -> bool {
        self.state == State::Running && after.checked_add(1) == Some(self.next())
    }

    /// Drops frames from the old end; returns the new first seq.
    pub(super) fn trim(&mut self, trim: Trim) -> u64 {
        match trim {
            Trim::MaxBytes(max) => self.drop_oldest(max, 0),
            Trim::Before(seq) => while self.first < seq && self.drop_front() {},
        }
        self.first
    }

    /// Drops the oldest frames while more than `max` bytes are held, keeping the newest `keep`.
    fn drop_oldest(&mut self, max: usize, keep: usize) {
        while self.bytes > max && self.frames.len() > keep && self.drop_front() {}
    }

    /// Drops the oldest frame; false when none is held.
    fn drop_front(&mut self) -> bool {
        match self.frames.pop_front() {
            Some(old) => {
                self.first += 1;
                self.bytes -= old.len();
                true
            }
            None => false,
        }
    }

    /// Its metadata as seen at `now`.
    pub(super) fn meta(&self, now: Instant) -> Meta {
        Meta {
            owner: self.new.owner,
            route: self.new.route.clone(),
            model: self.new.model.clone(),
            replica: self.new.replica.clone(),
            state: self.state,
            first_seq: self.first,
            last_seq: self.last_seq(),
            bytes: self.bytes,
            terminal: self.terminal.clone(),
            lease_expired: self.state == State::Running && now >= self.lease_until,
        }
    }
}
