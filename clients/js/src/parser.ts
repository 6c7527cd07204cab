/**
 * Incremental, spec-exact parser for the WHATWG `text/event-stream` format
 * (HTML Living Standard, "Server-sent events", §9.2.6 "Event stream interpretation").
 */

/** One dispatched server-sent event. */
export interface SseEvent {
  /** Event type (`message` when the stream named none). */
  type: string;
  /** Data lines joined with `\n`. */
  data: string;
  /** The last event ID buffer at dispatch time (persists across events, as in EventSource). */
  id: string;
}

/** Callbacks a {@link SseParser} reports to. */
export interface SseParserHandlers {
  /** Called for every dispatched event. */
  onEvent(event: SseEvent): void;
  /** Called for a valid `retry:` field (ASCII digits only), in milliseconds. */
  onRetry?(ms: number): void;
  /** Called for a comment line (without the leading colon). */
  onComment?(text: string): void;
}

const LF = 0x0a;
const CR = 0x0d;

/** Parses already-decoded text pushed in arbitrary chunks; an unfinished event at the end is never dispatched. */
export class SseParser {
  private line = '';
  private afterCr = false;
  private started = false;
  private data = '';
  private type = '';
  private lastId = '';

  /** Creates a parser reporting to `handlers`. */
  constructor(private readonly handlers: SseParserHandlers) {}

  /** Feeds the next chunk of decoded text. */
  push(chunk: string): void {
    let text = chunk;
    if (!this.started && text.length > 0) {
      this.started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    let start = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== CR && c !== LF) continue;
      if (c === LF && this.afterCr && i === start && this.line === '') {
        // The LF of a CRLF pair split across positions: the line was already ended by the CR.
        this.afterCr = false;
        start = i + 1;
        continue;
      }
      this.line += text.slice(start, i);
      this.processLine(this.line);
      this.line = '';
      this.afterCr = c === CR;
      start = i + 1;
    }
    if (start < text.length) {
      this.line += text.slice(start);
      this.afterCr = false;
    }
  }

  private processLine(line: string): void {
    if (line === '') {
      this.dispatch();
      return;
    }
    if (line.charCodeAt(0) === 0x3a) {
      this.handlers.onComment?.(line.slice(1));
      return;
    }
    const colon = line.indexOf(':');
    let field = line;
    let value = '';
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 0x20) value = value.slice(1);
    }
    this.processField(field, value);
  }

  private processField(field: string, value: string): void {
    switch (field) {
      case 'event':
        this.type = value;
        break;
      case 'data':
        this.data += value + '\n';
        break;
      case 'id':
        if (!value.includes('\0')) this.lastId = value;
        break;
      case 'retry':
        if (/^[0-9]+$/.test(value)) this.handlers.onRetry?.(Number(value));
        break;
      default:
        break;
    }
  }

  private dispatch(): void {
    if (this.data === '') {
      this.type = '';
      return;
    }
    const event: SseEvent = {
      type: this.type === '' ? 'message' : this.type,
      data: this.data.slice(0, -1),
      id: this.lastId,
    };
    this.data = '';
    this.type = '';
    this.handlers.onEvent(event);
  }
}

/** Decodes UTF-8 bytes (streaming, split multi-byte sequences allowed) and feeds a {@link SseParser}. */
export class SseDecoder {
  // ignoreBOM keeps U+FEFF in the text so the parser strips exactly one leading BOM, as the spec requires.
  private readonly decoder = new TextDecoder('utf-8', { ignoreBOM: true });
  private readonly parser: SseParser;

  /** Creates a decoder reporting parsed events to `handlers`. */
  constructor(handlers: SseParserHandlers) {
    this.parser = new SseParser(handlers);
  }

  /** Feeds the next chunk of bytes. */
  push(bytes: Uint8Array): void {
    this.parser.push(this.decoder.decode(bytes, { stream: true }));
  }

  /** Flushes a trailing incomplete UTF-8 sequence (as U+FFFD); an unfinished event stays undispatched. */
  end(): void {
    this.parser.push(this.decoder.decode());
  }
}
