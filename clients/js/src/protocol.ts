/** Payload types and small helpers for the sse-proxy wire protocol (see PROTOCOL.md). */

/** Data of a default `message` event: a batch of concatenated tokens. */
export interface TokenBatch {
  content: string;
  batch_size: number;
}

/** Data of an `event: progress`. */
export interface ProgressData {
  tokens: number;
  elapsed_ms: number;
  tokens_per_second: number;
  estimated_total: number;
  percent: number;
  eta_ms: number;
  confidence: 'low' | 'medium' | 'high';
  trend: 'accelerating' | 'steady' | 'slowing';
  model: string;
}

/** Data of the terminal `event: done` (upstream fields pass through). */
export interface DoneData {
  total_tokens?: number;
  cancelled?: boolean;
  [key: string]: unknown;
}

/** Data of the terminal `event: error`. */
export interface StreamErrorData {
  code: string;
  message: string;
  recoverable: boolean;
}

/** Outcome reported to `/_sse-proxy/client-metrics`. */
export type Outcome = 'done' | 'cancelled' | 'error' | 'failed';

/** Body of `POST /_sse-proxy/client-metrics` (exactly the fields PROTOCOL.md allows). */
export interface ClientMetrics {
  ttft_ms: number | null;
  total_ms: number;
  reconnects: number;
  reconnect_successes: number;
  outcome: Outcome;
}

/** A parsed event id `<stream_id>:<seq>`. */
export interface EventId {
  streamId: string;
  seq: number;
}

/** Parses `<stream_id>:<seq>`; returns null for ids not in that form. */
export function parseEventId(id: string): EventId | null {
  const colon = id.lastIndexOf(':');
  if (colon <= 0) return null;
  const digits = id.slice(colon + 1);
  if (!/^[0-9]{1,15}$/.test(digits)) return null;
  return { streamId: id.slice(0, colon), seq: Number(digits) };
}

/** Parses JSON, returning the raw string when it is not valid JSON. */
export function parseJson(data: string): unknown {
  try {
    return JSON.parse(data);
  } catch {
    return data;
  }
}

/** Parses a `Retry-After` header (delta-seconds or HTTP date) into milliseconds; null if absent or invalid. */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | null {
  if (value === null) return null;
  const trimmed = value.trim();
  if (/^[0-9]+$/.test(trimmed)) return Number(trimmed) * 1000;
  const date = Date.parse(trimmed);
  return Number.isNaN(date) ? null : Math.max(0, date - now);
}

/** Resolves a proxy path (e.g. `/_sse-proxy/...`) against the stream URL: absolute URLs keep their origin, relative ones stay relative. */
export function proxyUrl(streamUrl: string, path: string): string {
  try {
    return new URL(path, new URL(streamUrl)).href;
  } catch {
    return path;
  }
}
