import { createReadStream, createWriteStream } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { StringDecoder } from "node:string_decoder";
import { parser } from "stream-json";
import { ProtocolError } from "../errors";

/**
 * Streaming reader of an exportItems response:
 *   {"@odata.context": "...", "value": [{"itemId", "changeKey", "data": "<base64>"} | {"itemId", "error": {...}}]}
 *
 * The body is tokenised by stream-json; each item's base64 `data` is handed on as an async iterable
 * of decoded chunks while it is still arriving, so memory does not grow with item size (an export
 * can carry 20 items of 150 MB). Nothing here buffers a whole item, except when a response puts
 * `data` before `itemId`: then the item is spooled to a temporary file, never to memory.
 */

export interface ExportedData {
  kind: "data";
  itemId: string;
  changeKey?: string;
  /** Decoded bytes of the item, chunk by chunk. Read it before asking for the next element. */
  data: DecodedData;
}

export interface ExportedError {
  kind: "error";
  itemId: string;
  error: { code: string; message: string };
  /** The server's BackOffMilliseconds (EWS ErrorServerBusy): wait this long before asking again. */
  backOffMs?: number;
}

export type ExportElement = ExportedData | ExportedError;

export interface DecodedData extends AsyncIterable<Buffer> {
  /** Decoded bytes handed out so far (the full count once iteration finished). */
  readonly bytes: number;
}

interface Token {
  name: string;
  value?: string | number | boolean | null;
}

const MAX_SMALL_STRING = 64 * 1024;
/** Base64 characters decoded per step: a multiple of 4, large enough to amortise Buffer overhead. */
const DECODE_CHARS = 256 * 1024;

/**
 * The parts of stream-json's Parser this reader drives directly. The parser is a Transform stream;
 * here it is fed synchronously (`_transform`, `_flush`) and its `push` collects the tokens, so the
 * reader knows at every moment which input the tokens came from. That is what lets a `data`
 * string's text bypass the tokeniser (see TokenReader.rawString). stream-json is pinned (1.9.1);
 * test/exportResponse.test.ts covers this contract.
 */
interface DrivenParser {
  push(token: Token | null): boolean;
  _transform(chunk: string, encoding: string, callback: (error?: Error | null) => void): void;
  _flush(callback: (error?: Error | null) => void): void;
  /** Input not yet tokenised (a partial escape or literal at a chunk's end). */
  _buffer: string;
  /** What the parser expects next; "string" inside a string value. */
  _expect: string;
}

/** Pulls tokens one at a time, turning parser and stream failures into typed, retryable errors. */
class TokenReader {
  private readonly p: DrivenParser;
  private readonly chunks: AsyncIterator<Buffer | string>;
  private readonly utf8 = new StringDecoder("utf8");
  private queue: Token[] = [];
  private head = 0;
  private ended = false;
  /**
   * Set while a `data` string is being read: its text up to the next `"` or `\` is handed out as
   * one chunk without going through the tokeniser, which otherwise cuts strings into 256-character
   * tokens (base64 holds neither character, so the text is the same; either one hands the rest back
   * to the parser). Decoding a large item is about three times faster this way.
   */
  private rawString = false;

  constructor(body: Readable) {
    this.p = parser({ packKeys: true, streamKeys: false, packStrings: false, streamStrings: true, packNumbers: true, streamNumbers: false }) as unknown as DrivenParser;
    this.p.push = (t) => {
      if (t !== null) this.queue.push(t);
      return true;
    };
    this.chunks = body[Symbol.asyncIterator]() as AsyncIterator<Buffer | string>;
  }

  beginRawString(): void {
    this.rawString = true;
  }

  endRawString(): void {
    this.rawString = false;
  }

  async next(): Promise<Token> {
    while (this.head >= this.queue.length) {
      if (this.ended) throw new ProtocolError("TruncatedResponse", "the export response ended before its JSON was complete", { retryable: true });
      this.queue = [];
      this.head = 0;
      let r: IteratorResult<Buffer | string>;
      try {
        r = await this.chunks.next();
      } catch (e) {
        const msg = e instanceof Error ? e.message : String(e);
        throw new ProtocolError("ResponseInterrupted", `the export response was interrupted: ${msg.slice(0, 200)}`, { retryable: true, cause: e });
      }
      if (r.done) {
        this.ended = true;
        const tail = this.utf8.end();
        if (tail) this.feed(tail);
        this.run((cb) => this.p._flush(cb));
        continue;
      }
      const text = typeof r.value === "string" ? r.value : this.utf8.write(r.value);
      if (this.rawString && this.p._expect === "string" && this.p._buffer === "") this.writeRaw(text);
      else this.feed(text);
    }
    return this.queue[this.head++];
  }

  private writeRaw(text: string): void {
    const quote = text.indexOf('"');
    const backslash = text.indexOf("\\");
    const stop = quote < 0 ? backslash : backslash < 0 ? quote : Math.min(quote, backslash);
    if (stop < 0) {
      if (text) this.queue.push({ name: "stringChunk", value: text });
      return;
    }
    if (stop > 0) this.queue.push({ name: "stringChunk", value: text.slice(0, stop) });
    // The end of the string or an escape: the parser (still inside the string) takes it from here.
    this.rawString = false;
    this.feed(text.slice(stop));
  }

  private feed(text: string): void {
    if (text) this.run((cb) => this.p._transform(text, "utf8", cb));
  }

  /** Runs one synchronous parser step and raises its error, if any, as a typed one. */
  private run(step: (cb: (error?: Error | null) => void) => void): void {
    let failure: Error | null | undefined;
    step((e) => {
      failure = e;
    });
    if (!failure) return;
    const msg = failure.message;
    if (/^Parser has expected/.test(msg)) {
      // stream-json's wording when the input stopped mid-value, as opposed to a syntax error.
      throw new ProtocolError("TruncatedResponse", "the export response ended before its JSON was complete", { retryable: true, cause: failure });
    }
    throw new ProtocolError("MalformedJson", `the export response is not valid JSON: ${msg.slice(0, 200)}`, { retryable: true, cause: failure });
  }

  /** After a `startString`: the whole string, refusing ones longer than `limit` characters. */
  async readString(limit = MAX_SMALL_STRING): Promise<string> {
    let s = "";
    for (;;) {
      const t = await this.next();
      if (t.name === "endString") return s;
      if (t.name !== "stringChunk") throw unexpected(t, "string");
      s += t.value as string;
      if (s.length > limit) throw new ProtocolError("ValueTooLong", `a string in the export response exceeds ${limit} characters`);
    }
  }

  /** Skips one complete value whose first token is `first`. */
  async skipValue(first: Token): Promise<void> {
    if (first.name === "startString") {
      for (let t = await this.next(); t.name !== "endString"; t = await this.next());
      return;
    }
    if (first.name === "startObject" || first.name === "startArray") {
      let depth = 1;
      while (depth > 0) {
        const t = await this.next();
        if (t.name === "startObject" || t.name === "startArray") depth++;
        else if (t.name === "endObject" || t.name === "endArray") depth--;
      }
    }
    // numbers, booleans and null are single tokens
  }

  /** Reads a small JSON value (error objects): bounded in size. */
  async readSmallValue(first: Token, budget = { chars: MAX_SMALL_STRING }): Promise<unknown> {
    switch (first.name) {
      case "startString": {
        const s = await this.readString(budget.chars);
        budget.chars -= s.length;
        return s;
      }
      case "numberValue":
        return Number(first.value);
      case "trueValue":
        return true;
      case "falseValue":
        return false;
      case "nullValue":
        return null;
      case "startObject": {
        const o: Record<string, unknown> = {};
        for (let t = await this.next(); t.name !== "endObject"; t = await this.next()) {
          if (t.name !== "keyValue") throw unexpected(t, "key");
          o[String(t.value)] = await this.readSmallValue(await this.next(), budget);
        }
        return o;
      }
      case "startArray": {
        const a: unknown[] = [];
        for (let t = await this.next(); t.name !== "endArray"; t = await this.next()) a.push(await this.readSmallValue(t, budget));
        return a;
      }
      default:
        throw unexpected(first, "value");
    }
  }
}

function unexpected(t: Token, wanted: string): ProtocolError {
  return new ProtocolError("MalformedResponse", `the export response has ${t.name} where a ${wanted} belongs`, { retryable: false });
}

/** Decodes base64 arriving in arbitrary pieces; strict about the alphabet and about padding. */
export class Base64Decoder {
  private parts: string[] = [];
  private partsLength = 0;
  private padding = 0;
  bytes = 0;

  /** Validates one piece (only the new piece: re-scanning what is pending would be quadratic). */
  push(chunk: string, itemId: string): Buffer | undefined {
    if (!chunk) return undefined;
    const eq = chunk.indexOf("=");
    if (this.padding > 0 || eq >= 0) {
      const body = eq >= 0 ? chunk.slice(0, eq) : chunk;
      const tail = eq >= 0 ? chunk.slice(eq) : "";
      if (this.padding > 0 && body.length) throw invalidBase64(itemId, "data continues after '=' padding");
      if (!/^=*$/.test(tail)) throw invalidBase64(itemId, "data continues after '=' padding");
      this.padding += tail.length;
      if (this.padding > 2) throw invalidBase64(itemId, "more than two '=' padding characters");
    }
    this.parts.push(chunk);
    this.partsLength += chunk.length;
    if (this.padding > 0 || this.partsLength < DECODE_CHARS) return undefined;
    const s = this.parts.join("");
    const cut = s.length - (s.length % 4);
    const rest = s.slice(cut);
    this.parts = rest ? [rest] : [];
    this.partsLength = rest.length;
    return this.take(s.slice(0, cut), itemId);
  }

  /** Flushes the remainder at the end of the string. */
  end(itemId: string): Buffer | undefined {
    const s = this.parts.join("");
    this.parts = [];
    this.partsLength = 0;
    if (!s) return undefined;
    if (this.padding > 0 && s.length % 4 !== 0) throw invalidBase64(itemId, "misplaced '=' padding");
    // Unpadded base64 is tolerated; a lone trailing character cannot be valid.
    if (s.length % 4 === 1) throw invalidBase64(itemId, "the data length is not valid base64");
    return this.take(s, itemId);
  }

  /**
   * Decodes and checks the alphabet in one pass: Node's decoder skips characters outside it, so a
   * decoded length short of what the text's length promises means there were some. (A regex over
   * every character cost more than the rest of the export path together.) The URL-safe `-` and `_`
   * decode as `+` and `/`, which loses nothing.
   */
  private take(s: string, itemId: string): Buffer | undefined {
    if (!s) return undefined;
    const b = Buffer.from(s, "base64");
    const pad = s.endsWith("==") ? 2 : s.endsWith("=") ? 1 : 0;
    const body = s.length - pad;
    const expected = Math.floor(body / 4) * 3 + [0, 0, 1, 2][body % 4];
    if (b.length !== expected) throw invalidBase64(itemId, "characters outside the base64 alphabet");
    this.bytes += b.length;
    return b;
  }
}

function invalidBase64(itemId: string, why: string): ProtocolError {
  return new ProtocolError("InvalidBase64", `item ${shortId(itemId)}: ${why}`, { retryable: true });
}

export function shortId(id: string): string {
  return id.length > 24 ? `${id.slice(0, 10)}…${id.slice(-10)}` : id;
}

/** Iterates the elements of an exportItems response body. */
export async function* readExportResponse(body: Readable): AsyncGenerator<ExportElement> {
  const r = new TokenReader(body);
  const first = await r.next();
  if (first.name !== "startObject") throw unexpected(first, "JSON object");
  let sawValue = false;
  for (let t = await r.next(); t.name !== "endObject"; t = await r.next()) {
    if (t.name !== "keyValue") throw unexpected(t, "key");
    const v = await r.next();
    if (t.value !== "value") {
      await r.skipValue(v);
      continue;
    }
    if (v.name !== "startArray") throw unexpected(v, "array for value");
    sawValue = true;
    for (let e = await r.next(); e.name !== "endArray"; e = await r.next()) {
      if (e.name !== "startObject") throw unexpected(e, "object in value");
      yield* readElement(r);
    }
  }
  if (!sawValue) throw new ProtocolError("MalformedResponse", "the export response has no value array", { retryable: false });
}

async function* readElement(r: TokenReader): AsyncGenerator<ExportElement> {
  let itemId: string | undefined;
  let changeKey: string | undefined;
  let error: { code: string; message: string } | undefined;
  let delivered = false;
  let spooled: { dir: string; file: string; bytes: number } | undefined;
  try {
    for (let t = await r.next(); t.name !== "endObject"; t = await r.next()) {
      if (t.name !== "keyValue") throw unexpected(t, "key");
      // Graph's samples spell the error property both "error" and "Error": match keys case-insensitively.
      const key = String(t.value).toLowerCase();
      const v = await r.next();
      if (key === "itemid" && v.name === "startString") itemId = await r.readString(4096);
      else if (key === "changekey" && v.name === "startString") changeKey = await r.readString(4096);
      else if (key === "error" && v.name === "startObject") error = toError(await r.readSmallValue(v));
      else if (key === "data" && v.name === "startString") {
        const data = new StreamedData(r, itemId ?? "(unknown)");
        if (itemId !== undefined && !delivered) {
          delivered = true;
          yield { kind: "data", itemId, changeKey, data };
          await data.drain();
        } else {
          // data before itemId: spool to disk so the element can be named once its id is known.
          spooled = await spool(data);
        }
      } else await r.skipValue(v);
    }
  } catch (e) {
    if (spooled) await rm(spooled.dir, { recursive: true, force: true });
    throw e;
  }
  if (itemId === undefined) {
    if (spooled) await rm(spooled.dir, { recursive: true, force: true });
    throw new ProtocolError("MalformedResponse", "an element of the export response has no itemId", { retryable: false });
  }
  if (spooled) {
    const s = spooled;
    try {
      if (!error) {
        yield { kind: "data", itemId, changeKey, data: fileData(s.file, s.bytes) };
        return;
      }
    } finally {
      await rm(s.dir, { recursive: true, force: true });
    }
  }
  if (error) yield { kind: "error", itemId, error };
  else if (!delivered) yield { kind: "error", itemId, error: { code: "NoData", message: "the export response carried neither data nor an error for this item" } };
}

function toError(v: unknown): { code: string; message: string } {
  const o = (typeof v === "object" && v !== null ? v : {}) as Record<string, unknown>;
  const get = (k: string) => {
    const hit = Object.keys(o).find((x) => x.toLowerCase() === k);
    return hit && typeof o[hit] === "string" ? (o[hit] as string) : undefined;
  };
  return { code: get("code") ?? "UnknownError", message: (get("message") ?? "").slice(0, 2000) };
}

/** The decoded bytes of one `data` string, pulled from the token stream on demand. */
class StreamedData implements DecodedData {
  private readonly decoder = new Base64Decoder();
  private finished = false;
  private started = false;

  constructor(private readonly r: TokenReader, private readonly itemId: string) {}

  get bytes(): number {
    return this.decoder.bytes;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    if (this.started) throw new Error("item data can be read once");
    this.started = true;
    this.r.beginRawString();
    try {
      while (!this.finished) {
        const t = await this.r.next();
        if (t.name === "endString") {
          this.finished = true;
          this.r.endRawString();
          const last = this.decoder.end(this.itemId);
          if (last?.length) yield last;
          return;
        }
        if (t.name !== "stringChunk") throw unexpected(t, "string chunk");
        const out = this.decoder.push(t.value as string, this.itemId);
        if (out?.length) yield out;
      }
    } finally {
      this.r.endRawString();
    }
  }

  /** Skips whatever the consumer did not read, so the next element can be parsed. */
  async drain(): Promise<void> {
    if (!this.finished) this.r.beginRawString();
    try {
      while (!this.finished) {
        const t = await this.r.next();
        if (t.name === "endString") this.finished = true;
      }
    } finally {
      this.r.endRawString();
    }
  }
}

async function spool(data: StreamedData): Promise<{ dir: string; file: string; bytes: number }> {
  const dir = await mkdtemp(join(tmpdir(), "mailvault-spool-"));
  const file = join(dir, "item.bin");
  try {
    await pipeline(data, createWriteStream(file));
  } catch (e) {
    await data.drain().catch(() => {});
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
  return { dir, file, bytes: data.bytes };
}

function fileData(file: string, bytes: number): DecodedData {
  return {
    bytes,
    async *[Symbol.asyncIterator]() {
      for await (const c of createReadStream(file)) yield c as Buffer;
    },
  };
}
