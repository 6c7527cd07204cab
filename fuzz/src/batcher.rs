//! The batcher driven the way the stream reader drives it (tokens, other events that flush, and
//! a timer at its deadline), with its promises checked after every step: no token lost, repeated
//! or reordered; at most `max_tokens` tokens and `max_bytes` bytes per batch (a single larger
//! token goes alone, empty tokens aside); the first token of a stream never waits; no token waits longer than
//! `max_delay`; a full batch is never held.

use sse_proxy::reframe::batcher::{Batch, Batcher, Limits};
use std::time::Duration;
use tokio::time::Instant;

/// One step of the reader.
#[derive(Debug)]
enum Step {
    /// A token event, `gap` after the previous step.
    Token { gap: Duration, text: String },
    /// Another event (progress, thinking, ...): the reader flushes the pending batch first.
    Other { gap: Duration },
}

/// Decodes limits from the first 4 bytes and then 2 bytes per step (see [`step`]).
pub fn check(data: &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let max_tokens = 1 + usize::from(head[1] % 40);
    let mut max_delay = Duration::from_millis(u64::from(head[0]) * 8);
    // As the config requires: a zero delay only when batching is off.
    if max_delay.is_zero() && max_tokens > 1 {
        max_delay = Duration::from_millis(1);
    }
    let limits = Limits {
        max_delay,
        max_tokens,
        max_bytes: 1 + usize::from(head[2]),
        adaptive: head[3] & 1 == 1,
    };
    let steps: Vec<Step> = rest
        .chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| step(i, pair[0], pair[1]))
        .collect();
    run(limits, &steps);
}

/// Gap: low 7 bits in ms, times 16 when the high bit is set. Kind: 0xFF is another event, else
/// a token of `kind % 48` bytes (starting with a 2-byte 'é' when bit 6 is set).
fn step(i: usize, gap: u8, kind: u8) -> Step {
    let scale = if gap & 0x80 != 0 { 16 } else { 1 };
    let gap = Duration::from_millis(u64::from(gap & 0x7f) * scale);
    if kind == 0xFF {
        return Step::Other { gap };
    }
    let len = usize::from(kind % 48);
    let mut text = String::with_capacity(len + 2);
    if kind & 0x40 != 0 {
        text.push('é');
    }
    // Different letters per token, so a reordering shows in the text.
    text.extend((0..len).map(|k| char::from(b'a' + ((i + k) % 26) as u8)));
    Step::Token { gap, text }
}

/// What went in, what came out.
struct Ledger {
    limits: Limits,
    /// Every token pushed, with its arrival.
    tokens: Vec<(String, Instant)>,
    /// How many of them have gone out in batches.
    sent: usize,
}

impl Ledger {
    /// A batch went out at `at`: it is the next tokens in order, within the limits, none late.
    fn sent(&mut self, batch: Batch, at: Instant) {
        let Limits {
            max_tokens,
            max_bytes,
            max_delay,
            ..
        } = self.limits;
        assert!(batch.tokens >= 1, "an empty batch: {batch:?}");
        assert!(
            batch.tokens <= max_tokens,
            "{batch:?} over max_tokens {max_tokens}"
        );
        let end = self.sent + batch.tokens;
        assert!(end <= self.tokens.len(), "{batch:?} holds tokens never pushed");
        let group = &self.tokens[self.sent..end];
        // Over max_bytes only with a single token too large by itself (and empty tokens, which
        // some backends send before the first word and which add no bytes).
        let non_empty = group.iter().filter(|(t, _)| !t.is_empty()).count();
        assert!(
            batch.text.len() <= max_bytes || non_empty == 1,
            "{batch:?} over max_bytes {max_bytes} with more than one token"
        );
        let text: String = group.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(batch.text, text, "tokens lost, repeated or reordered");
        for (token, arrived) in group {
            let waited = at.saturating_duration_since(*arrived);
            assert!(waited <= max_delay, "{token:?} waited {waited:?} > {max_delay:?}");
        }
        self.sent = end;
    }

    /// Checks the pending batch after a step at `now`.
    fn pending(&self, batcher: &Batcher, now: Instant) {
        let pending = &self.tokens[self.sent..];
        let Some((_, oldest)) = pending.first() else {
            assert_eq!(batcher.deadline(), None, "a deadline with nothing pending");
            return;
        };
        let deadline = batcher
            .deadline()
            .expect("a pending token has a deadline, or nothing would ever send it");
        assert!(
            deadline <= *oldest + self.limits.max_delay,
            "the deadline lets a token wait longer than max_delay"
        );
        let bytes: usize = pending.iter().map(|(t, _)| t.len()).sum();
        if pending.len() >= self.limits.max_tokens || bytes >= self.limits.max_bytes {
            assert!(
                deadline <= now,
                "a full batch ({} tokens, {bytes} bytes) is held until {:?} after now",
                pending.len(),
                deadline - now
            );
        }
    }
}

fn run(limits: Limits, steps: &[Step]) {
    let mut batcher = Batcher::new(limits);
    let mut ledger = Ledger {
        limits,
        tokens: Vec::new(),
        sent: 0,
    };
    let mut now = Instant::now();
    for step in steps {
        let gap = match step {
            Step::Token { gap, .. } | Step::Other { gap } => *gap,
        };
        now += gap;
        // The reader's timer fires at the deadline, before an event arriving at or after it.
        if let Some(deadline) = batcher.deadline().filter(|d| *d <= now) {
            if let Some(batch) = batcher.take() {
                ledger.sent(batch, deadline);
            }
        }
        match step {
            Step::Other { .. } => {
                if let Some(batch) = batcher.take() {
                    ledger.sent(batch, now);
                }
            }
            Step::Token { text, .. } => {
                ledger.tokens.push((text.clone(), now));
                let first = ledger.tokens.len() == 1;
                let out = batcher.push(text, now);
                if first {
                    assert_eq!(
                        out.as_ref().map(|b| (b.text.as_str(), b.tokens)),
                        Some((text.as_str(), 1)),
                        "the first token goes at once, alone"
                    );
                }
                if let Some(batch) = out {
                    ledger.sent(batch, now);
                }
            }
        }
        ledger.pending(&batcher, now);
    }
    // The end of the stream flushes what is left.
    if let Some(batch) = batcher.take() {
        ledger.sent(batch, now);
    }
    assert_eq!(ledger.sent, ledger.tokens.len(), "tokens lost at the end");
    assert_eq!(batcher.take(), None);
    assert_eq!(batcher.deadline(), None);
}
