/** Fetch-based, resumable SSE client for sse-proxy streams. */

import { backoffDelay, type BackoffOptions } from './backoff.js';
import { SseDecoder, type SseEvent } from './parser.js';
import {
  parseEventId,
  parseJson,
  parseRetryAfter,
  proxyUrl,
  type ClientMetrics,
  type DoneData,
  type Outcome,
  type ProgressData,
  type StreamErrorData,
} from './protocol.js';

export type { BackoffOptions } from './backoff.js';
export type { SseEvent, SseParserHandlers } from './parser.js';
export type { ClientMetrics, DoneData, EventId, Outcome, ProgressData, StreamErrorData, TokenBatch } from './protocol.js';

/** Connection states; `closed` and `failed` are terminal. */
export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed' | 'failed';

/** Options of {@link SseClient}. */
export interface SseClientOptions {
  /** HTTP method (default GET). */
  method?: string;
  /** Extra request headers, e.g. Authorization; also sent with `stop()`'s cancel request. */
  headers?: Record<string, string>;
  /** Request body (POST), re-sent on every reconnect. */
  body?: string | null;
  /** Reconnect and resume after network errors, 5xx, drops and recoverable errors (default true). */
  reconnect?: boolean;
  /** Backoff settings for reconnection. */
  backoff?: BackoffOptions;
  /** Expected heartbeat interval of the proxy in ms (default 15000). */
  heartbeatIntervalMs?: number;
  /** Silence longer than multiplier × heartbeat interval aborts and reconnects (default 2). */
  watchdogMultiplier?: number;
  /** POST a summary to `/_sse-proxy/client-metrics` when the stream ends (default false). */
  reportMetrics?: boolean;
  /** The proxy's `server.route_prefix` (default `/_sse-proxy`), for cancel and metrics requests. */
  routePrefix?: string;
  /** fetch implementation (default the global one). */
  fetch?: typeof fetch;
}

/** Counters and timings of one stream. */
export interface SseStats {
  /** ms from start() to the first token, null before it. */
  ttftMs: number | null;
  /** ms from start() to the end (or to now while running). */
  totalMs: number;
  /** Reconnection attempts made. */
  reconnects: number;
  /** Reconnection attempts answered with 200 or 204. */
  reconnectSuccesses: number;
  /** Response body bytes received. */
  bytes: number;
  /** Events delivered (after de-duplication). */
  events: number;
  /** Tokens received (sum of batch sizes). */
  tokens: number;
  /** Already-seen events dropped after a resume. */
  duplicates: number;
  /** Sequence gaps seen. */
  gaps: number;
}

/** How a stream ended. */
export interface SseResult {
  state: 'closed' | 'failed';
  reason: string;
  outcome: Outcome;
  text: string;
  stats: SseStats;
}

/** A sequence gap: the event with seq `expected` was never delivered. */
export interface GapInfo {
  expected: number;
  got: number;
}

/** Events emitted by {@link SseClient} and their listener arguments. */
export interface SseClientEvents {
  state: [state: ConnectionState, reason: string | undefined];
  token: [text: string, batchSize: number];
  progress: [progress: ProgressData];
  metadata: [type: string, data: unknown];
  done: [data: DoneData];
  error: [data: StreamErrorData];
  gap: [gap: GapInfo];
  /** A recoverable `error` ended the stream: the request is asked again from scratch and `text` was reset. */
  restart: [reason: string];
  event: [event: SseEvent];
}

/** A listener for event `K`. */
export type SseListener<K extends keyof SseClientEvents> = (...args: SseClientEvents[K]) => void;

type EndStep = { kind: 'end'; state: 'closed' | 'failed'; reason: string; outcome: Outcome };
// `fresh`: ask again without Last-Event-ID (the old stream ended with a recoverable error).
type Step = EndStep | { kind: 'retry'; reason: string; delayMs?: number; fresh?: boolean };
// Storage type only: on() and emit() are typed per event name.
type AnyListener = (...args: any[]) => void;

const DEFAULT_BASE_MS = 1000;
const DEFAULT_CAP_MS = 30000;
const DEFAULT_MAX_ATTEMPTS = 8;

const end = (state: 'closed' | 'failed', reason: string, outcome: Outcome): EndStep => ({ kind: 'end', state, reason, outcome });
const retry = (reason: string, delayMs?: number, fresh?: boolean): Step => ({ kind: 'retry', reason, delayMs, fresh });

/** Streams one sse-proxy response, reconnecting with `Last-Event-ID` and never delivering an event twice. */
export class SseClient {
  /** Accumulated token text. */
  text = '';
  /** Current connection state. */
  state: ConnectionState = 'connecting';
  /** Reason of the last state change (e.g. `done`, `dropped`, `http_503`). */
  reason: string | undefined;
  /** Stream id from `X-Stream-Id` or the event ids. */
  streamId: string | null = null;
  /** Last delivered event id, sent as `Last-Event-ID` on reconnect. */
  lastEventId: string | null = null;

  private readonly counters: SseStats = {
    ttftMs: null, totalMs: 0, reconnects: 0, reconnectSuccesses: 0, bytes: 0, events: 0, tokens: 0, duplicates: 0, gaps: 0,
  };
  private readonly listeners = new Map<keyof SseClientEvents, Set<AnyListener>>();
  private readonly fetchImpl: typeof fetch;
  private startedAt = 0;
  private lastSeq = 0;
  private serverRetryMs: number | null = null;
  private progressed = false;
  private terminal: Step | null = null;
  private controller: AbortController | null = null;
  private abortReason: string | null = null;
  private watchdog: ReturnType<typeof setTimeout> | undefined;
  private sleepTimer: ReturnType<typeof setTimeout> | undefined;
  private wake: (() => void) | null = null;
  private result: SseResult | null = null;
  private running: Promise<SseResult> | null = null;

  /** Creates a client for `url` (absolute, or relative to the page in a browser). */
  constructor(readonly url: string, private readonly options: SseClientOptions = {}) {
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.routePrefix = (options.routePrefix ?? '/_sse-proxy').replace(/\/+$/, '');
  }

  /** The proxy's own route prefix, without a trailing slash. */
  private readonly routePrefix: string;

  /** Subscribes to an event; returns the unsubscribe function. */
  on<K extends keyof SseClientEvents>(name: K, listener: SseListener<K>): () => void {
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, (set = new Set()));
    set.add(listener);
    return () => set.delete(listener);
  }

  /** Snapshot of the statistics. */
  get stats(): SseStats {
    const totalMs = this.result ? this.counters.totalMs : this.startedAt ? now() - this.startedAt : 0;
    return { ...this.counters, totalMs };
  }

  /** Starts streaming (once); resolves when the stream is closed or failed. */
  start(): Promise<SseResult> {
    this.running ??= this.runToEnd();
    return this.running;
  }

  /** Aborts the current connection as if the network dropped; the client reconnects and resumes. */
  dropConnection(): void {
    this.abortCurrent('dropped');
  }

  /** Cancels the stream on the proxy (`POST /_sse-proxy/streams/<id>/cancel`), then closes; resolves true on 202. */
  async stop(): Promise<boolean> {
    if (this.result) return false;
    let cancelled = false;
    if (this.streamId !== null) {
      const url = proxyUrl(this.url, `${this.routePrefix}/streams/${encodeURIComponent(this.streamId)}/cancel`);
      try {
        const res = await this.fetchImpl(url, { method: 'POST', headers: this.options.headers });
        cancelled = res.status === 202;
        await res.body?.cancel();
      } catch {
        // The stream is closed locally either way.
      }
    }
    this.finish(end('closed', 'cancelled', 'cancelled'));
    return cancelled;
  }

  /** Closes the stream locally without cancelling it on the proxy. */
  close(): void {
    this.finish(end('closed', 'closed', 'cancelled'));
  }

  private async runToEnd(): Promise<SseResult> {
    this.startedAt = now();
    await this.run();
    const result = this.result as SseResult;
    if (this.options.reportMetrics) await this.report(result);
    return result;
  }

  private async run(): Promise<void> {
    const backoff = this.options.backoff ?? {};
    const maxAttempts = backoff.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;
    let failures = 0;
    let reconnecting = false;
    while (!this.result) {
      if (reconnecting) this.counters.reconnects++;
      else this.setState('connecting', undefined);
      this.progressed = false;
      const step = await this.connect(reconnecting);
      if (this.result) return;
      if (step.kind === 'end') return this.finish(step);
      if (this.options.reconnect === false) return this.finish(end('failed', step.reason, 'failed'));
      if (this.progressed) failures = 0;
      if (failures >= maxAttempts) return this.finish(end('failed', 'max_attempts', 'failed'));
      const base = backoff.baseMs ?? this.serverRetryMs ?? DEFAULT_BASE_MS;
      const delay = step.delayMs ?? backoffDelay(failures, base, backoff.capMs ?? DEFAULT_CAP_MS);
      failures++;
      reconnecting = true;
      if (step.fresh) this.restart(step.reason);
      this.setState('reconnecting', step.reason);
      await this.sleep(delay);
    }
  }

  private async connect(isReconnect: boolean): Promise<Step> {
    const controller = new AbortController();
    this.controller = controller;
    this.abortReason = null;
    const headers: Record<string, string> = { Accept: 'text/event-stream', ...this.options.headers };
    if (this.lastEventId !== null) headers['Last-Event-ID'] = this.lastEventId;
    this.armWatchdog();
    try {
      const res = await this.fetchImpl(this.url, {
        method: this.options.method ?? 'GET',
        headers,
        body: this.options.body ?? null,
        signal: controller.signal,
      });
      if (isReconnect && (res.status === 200 || res.status === 204)) this.counters.reconnectSuccesses++;
      if (res.status !== 200 || res.body === null) {
        await res.body?.cancel().catch(() => undefined);
        return statusStep(res);
      }
      const type = res.headers.get('Content-Type') ?? '';
      if (!type.toLowerCase().startsWith('text/event-stream')) {
        await res.body.cancel().catch(() => undefined);
        return end('failed', 'bad_content_type', 'failed');
      }
      this.streamId = res.headers.get('X-Stream-Id') ?? this.streamId;
      this.setState('open', undefined);
      return await this.read(res.body);
    } catch {
      return retry(this.abortReason ?? 'network_error');
    } finally {
      clearTimeout(this.watchdog);
      this.controller = null;
    }
  }

  private async read(body: ReadableStream<Uint8Array>): Promise<Step> {
    const reader = body.getReader();
    this.terminal = null;
    const decoder = new SseDecoder({
      onEvent: (event) => this.handleEvent(event),
      onRetry: (ms) => {
        this.serverRetryMs = ms;
      },
    });
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return retry('connection_closed');
      this.armWatchdog();
      this.counters.bytes += value.byteLength;
      decoder.push(value);
      if (this.terminal) {
        await reader.cancel().catch(() => undefined);
        return this.terminal;
      }
    }
  }

  private handleEvent(event: SseEvent): void {
    if (this.terminal || this.result) return;
    const id = parseEventId(event.id);
    if (id) {
      if (id.seq <= this.lastSeq) {
        this.counters.duplicates++;
        return;
      }
      if (id.seq !== this.lastSeq + 1) {
        this.counters.gaps++;
        this.emit('gap', { expected: this.lastSeq + 1, got: id.seq });
      }
      this.lastSeq = id.seq;
      this.streamId ??= id.streamId;
    }
    if (event.id !== '') this.lastEventId = event.id;
    this.progressed = true;
    this.counters.events++;
    this.emit('event', event);
    const data = parseJson(event.data);
    switch (event.type) {
      case 'message':
        return this.handleTokens(event.data, data);
      case 'progress':
        return this.emit('progress', data as ProgressData);
      case 'done': {
        const done = (isObject(data) ? data : {}) as DoneData;
        this.emit('metadata', event.type, data);
        this.emit('done', done);
        this.terminal = done.cancelled === true ? end('closed', 'cancelled', 'cancelled') : end('closed', 'done', 'done');
        return;
      }
      case 'error': {
        const error = toStreamError(data);
        this.emit('metadata', event.type, data);
        this.emit('error', error);
        this.terminal = error.recoverable ? retry(error.code, undefined, true) : end('failed', error.code, 'error');
        return;
      }
      default:
        return this.emit('metadata', event.type, data);
    }
  }

  private handleTokens(raw: string, data: unknown): void {
    const batch = isObject(data) && typeof data.content === 'string' ? data : null;
    const content = batch ? (batch.content as string) : raw;
    const size = batch && typeof batch.batch_size === 'number' ? batch.batch_size : 1;
    if (this.counters.ttftMs === null) this.counters.ttftMs = now() - this.startedAt;
    this.text += content;
    this.counters.tokens += size;
    this.emit('token', content, size);
  }

  /** Forgets the ended stream so the next request starts a new one. */
  private restart(reason: string): void {
    this.text = '';
    this.streamId = null;
    this.lastEventId = null;
    this.lastSeq = 0;
    this.emit('restart', reason);
  }

  private finish(step: EndStep): void {
    if (this.result) return;
    this.counters.totalMs = now() - this.startedAt;
    this.result = { state: step.state, reason: step.reason, outcome: step.outcome, text: this.text, stats: this.stats };
    this.abortCurrent(step.reason);
    clearTimeout(this.sleepTimer);
    this.wake?.();
    this.setState(step.state, step.reason);
  }

  private async report(result: SseResult): Promise<void> {
    const metrics: ClientMetrics = {
      ttft_ms: result.stats.ttftMs === null ? null : Math.round(result.stats.ttftMs),
      total_ms: Math.round(result.stats.totalMs),
      reconnects: result.stats.reconnects,
      reconnect_successes: result.stats.reconnectSuccesses,
      outcome: result.outcome,
    };
    try {
      const res = await this.fetchImpl(proxyUrl(this.url, `${this.routePrefix}/client-metrics`), {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(metrics),
      });
      await res.body?.cancel();
    } catch {
      // Metrics are best effort.
    }
  }

  private armWatchdog(): void {
    clearTimeout(this.watchdog);
    const ms = (this.options.heartbeatIntervalMs ?? 15000) * (this.options.watchdogMultiplier ?? 2);
    this.watchdog = setTimeout(() => this.abortCurrent('heartbeat_timeout'), ms);
  }

  private abortCurrent(reason: string): void {
    if (!this.controller) return;
    this.abortReason = reason;
    this.controller.abort();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.wake = resolve;
      this.sleepTimer = setTimeout(resolve, ms);
    });
  }

  private setState(state: ConnectionState, reason: string | undefined): void {
    this.state = state;
    this.reason = reason;
    this.emit('state', state, reason);
  }

  private emit<K extends keyof SseClientEvents>(name: K, ...args: SseClientEvents[K]): void {
    for (const listener of this.listeners.get(name) ?? []) {
      try {
        listener(...args);
      } catch (error) {
        // A throwing listener must not break the stream; surface it asynchronously.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}

/** Maps a non-200 response to the next step (PROTOCOL.md status table). */
function statusStep(res: Response): Step {
  const s = res.status;
  if (s === 204) return end('closed', 'done', 'done');
  if (s === 410) return end('failed', 'resume_unavailable', 'failed');
  // 429: a limit; 503: the stream store is away. Both say when to come back.
  if (s === 429 || s === 503) return retry(`http_${s}`, parseRetryAfter(res.headers.get('Retry-After')) ?? undefined);
  if (s >= 400 && s < 500) return end('failed', `http_${s}`, 'failed');
  return retry(`http_${s}`);
}

function toStreamError(data: unknown): StreamErrorData {
  const o = isObject(data) ? data : {};
  return {
    code: typeof o.code === 'string' ? o.code : 'unknown',
    message: typeof o.message === 'string' ? o.message : String(data),
    recoverable: o.recoverable === true,
  };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function now(): number {
  return performance.now();
}
