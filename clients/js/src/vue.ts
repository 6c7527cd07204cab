/** Vue 3 composable wrapping {@link SseClient}. */

import { getCurrentScope, onScopeDispose, ref, shallowRef, type Ref } from 'vue';
import {
  SseClient,
  type BackoffOptions,
  type ConnectionState,
  type ProgressData,
  type SseResult,
  type SseStats,
  type StreamErrorData,
} from './client.js';

/** Options of {@link useEnhancedStreaming}. */
export interface UseEnhancedStreamingOptions {
  /**
   * Coalesce `streamContent` updates to one per animation frame (default true). When false, every delta is
   * applied as it arrives; the proxy already batches tokens, so a "delta" is one batch either way.
   */
  enableBatching?: boolean;
  /** Track `progress` events (default true). */
  enableProgress?: boolean;
  /** Reconnect and resume on drops (default true). */
  enableReconnection?: boolean;
  /**
   * Called for every named event other than progress (thinking, sources, done, error, ...) with one
   * object: `{ type, ...data }` (an object's fields; other data as `data`), then the data as sent.
   */
  onMetadata?: (meta: MetadataEvent, data: unknown) => void;
  /** Backoff settings for reconnection. */
  backoff?: BackoffOptions;
  /** Expected heartbeat interval of the proxy in ms (default 15000). */
  heartbeatIntervalMs?: number;
  /** POST a summary to `/_sse-proxy/client-metrics` at the end (default false). */
  reportMetrics?: boolean;
  /** The proxy's `server.route_prefix` (default `/_sse-proxy`). */
  routePrefix?: string;
}

/** What `onMetadata` receives: the event type with the fields of its data. */
export interface MetadataEvent {
  /** The event type (wins over a `type` field of the data, which stays in the second argument). */
  type: string;
  [field: string]: unknown;
}

/** A progress report: the wire fields plus their camelCase names. */
export interface ProgressState extends ProgressData {
  /** `percent`: 0–100. */
  percentageComplete: number;
  /** `tokens_per_second`. */
  tokensPerSecond: number;
  /** `estimated_total`: the expected length of the answer in tokens. */
  estimatedTotal: number;
  /** `eta_ms`: the expected time to the end. */
  etaMs: number;
}

/** `{ type, ...data }` for an object, `{ type, data }` for any other data. */
export function metadataEvent(type: string, data: unknown): MetadataEvent {
  if (data !== null && typeof data === 'object' && !Array.isArray(data)) return { ...data, type };
  return { type, data };
}

/** A progress event's data with the camelCase names beside the wire ones. */
export function progressState(data: ProgressData): ProgressState {
  return {
    ...data,
    percentageComplete: data.percent,
    tokensPerSecond: data.tokens_per_second,
    estimatedTotal: data.estimated_total,
    etaMs: data.eta_ms,
  };
}

/** State of the connection before the first stream starts, or one of the client's states. */
export type StreamingState = 'idle' | ConnectionState;

/** Reactive streaming state and controls returned by {@link useEnhancedStreaming}. */
export interface EnhancedStreaming {
  isStreaming: Ref<boolean>;
  streamContent: Ref<string>;
  progress: Ref<ProgressState | null>;
  metadata: Ref<Record<string, unknown>>;
  error: Ref<StreamErrorData | null>;
  connectionState: Ref<StreamingState>;
  /**
   * Statistics of the current stream, null before the first: refreshed together with `streamContent`
   * (so the token count matches the text shown) and on every progress event and state change; at the
   * end, the final figures.
   */
  stats: Ref<SseStats | null>;
  /** Starts a stream (closing any previous one); resolves when it ends. */
  startStreaming(url: string, headers?: Record<string, string>): Promise<SseResult>;
  /** Cancels the stream on the proxy ("Stop generating"). */
  stopStreaming(): Promise<void>;
  /** Aborts the current connection as if the network dropped; the client resumes (for trying resumes). */
  dropConnection(): void;
}

/** Streams an sse-proxy response into reactive refs. */
export function useEnhancedStreaming(options: UseEnhancedStreamingOptions = {}): EnhancedStreaming {
  const isStreaming = ref(false);
  const streamContent = ref('');
  const progress = shallowRef<ProgressState | null>(null);
  const metadata = shallowRef<Record<string, unknown>>({});
  const error = shallowRef<StreamErrorData | null>(null);
  const connectionState = ref<StreamingState>('idle');
  const stats = shallowRef<SseStats | null>(null);
  let client: SseClient | null = null;
  let pending = '';
  let flushScheduled = false;

  const refreshStats = (): void => {
    if (client) stats.value = client.stats;
  };

  const flush = (): void => {
    flushScheduled = false;
    refreshStats();
    streamContent.value += pending;
    pending = '';
  };

  const appendDelta = (text: string): void => {
    if (options.enableBatching === false) {
      refreshStats();
      streamContent.value += text;
      return;
    }
    pending += text;
    if (flushScheduled) return;
    flushScheduled = true;
    const schedule = globalThis.requestAnimationFrame ?? ((cb: () => void) => setTimeout(cb, 16));
    schedule(flush);
  };

  async function startStreaming(url: string, headers: Record<string, string> = {}): Promise<SseResult> {
    client?.close();
    const current = new SseClient(url, {
      headers,
      reconnect: options.enableReconnection !== false,
      backoff: options.backoff,
      heartbeatIntervalMs: options.heartbeatIntervalMs,
      reportMetrics: options.reportMetrics,
      routePrefix: options.routePrefix,
    });
    client = current;
    streamContent.value = '';
    pending = '';
    progress.value = null;
    metadata.value = {};
    error.value = null;
    stats.value = null;
    isStreaming.value = true;
    const isCurrent = (): boolean => client === current;
    current.on('token', (text) => isCurrent() && appendDelta(text));
    current.on('state', (state) => {
      if (!isCurrent()) return;
      connectionState.value = state;
      refreshStats();
    });
    current.on('restart', () => {
      if (!isCurrent()) return;
      pending = '';
      streamContent.value = '';
      progress.value = null;
    });
    current.on('metadata', (type, data) => {
      if (!isCurrent()) return;
      metadata.value = { ...metadata.value, [type]: data };
      options.onMetadata?.(metadataEvent(type, data), data);
    });
    current.on('error', (data) => {
      if (isCurrent()) error.value = data;
    });
    if (options.enableProgress !== false) {
      current.on('progress', (data) => {
        if (!isCurrent()) return;
        progress.value = progressState(data);
        refreshStats();
      });
    }
    const result = await current.start();
    if (isCurrent()) {
      flush();
      stats.value = result.stats;
      if (result.state === 'failed' && error.value === null) {
        error.value = { code: result.reason, message: `stream failed: ${result.reason}`, recoverable: false };
      }
      isStreaming.value = false;
    }
    return result;
  }

  async function stopStreaming(): Promise<void> {
    await client?.stop();
  }

  function dropConnection(): void {
    client?.dropConnection();
  }

  if (getCurrentScope()) onScopeDispose(() => client?.close());

  return { isStreaming, streamContent, progress, metadata, error, connectionState, stats, startStreaming, stopStreaming,
    dropConnection };
}
