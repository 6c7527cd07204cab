/** Exponential backoff with full jitter. */

/** Backoff settings (milliseconds). */
export interface BackoffOptions {
  /** Base delay; defaults to the server's `retry:` value, else 1000. */
  baseMs?: number;
  /** Upper bound of any single delay (default 30000). */
  capMs?: number;
  /** Reconnection attempts in a row without a new event before the stream fails (default 8). */
  maxAttempts?: number;
}

/** Delay before retry number `attempt` (0-based): uniform in [0, min(cap, base * 2^attempt)]. */
export function backoffDelay(attempt: number, baseMs: number, capMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}
