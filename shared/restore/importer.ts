import { Readable } from "node:stream";
import { GraphError, MailvaultError } from "../errors";
import { parseRetryAfter, sleep } from "../graph/graphClient";
import type { MailboxApi } from "../graph/mailboxApi";
import { type Logger, silentLogger } from "../log";
import type { ImportedItem } from "../source";
import { base64Of } from "../util/base64";

/**
 * Uploads stored items into a mailbox through Graph import sessions
 * (research/graph-api.md §5): one pre-authenticated importUrl per target mailbox, renewed before it
 * expires and after a 401; one item per POST with `Mode: create`; uploads paced to Exchange
 * Online's 150 MB per 5 minutes per mailbox. The importUrl carries its own token: it never appears
 * in a log line or an error message.
 */

export interface ImportPacing {
  /** Bytes a mailbox accepts per window (Exchange Online: 150 MB per 5 minutes). */
  bytesPerWindow: number;
  windowMs: number;
}

export const EXCHANGE_ONLINE_IMPORT_PACING: ImportPacing = { bytesPerWindow: 150 * 1024 * 1024, windowMs: 5 * 60 * 1000 };

interface Session {
  url: string;
  createdAt: number;
  expiresAt: number;
}

/** Per-process state: sessions and upload windows per target mailbox. */
export class Importer {
  private readonly sessions = new Map<string, Promise<Session>>();
  private readonly windows = new Map<string, Array<{ at: number; bytes: number }>>();

  constructor(
    private readonly mailbox: MailboxApi,
    private readonly pacing: ImportPacing = EXCHANGE_ONLINE_IMPORT_PACING,
    private readonly log: Logger = silentLogger,
    private readonly retryDelayMs = 1000,
  ) {}

  /**
   * Imports one item. `open` is called for every attempt and must return the item's stored bytes
   * as a fresh stream; they are base64-encoded into the request body as they are read.
   */
  async importItem(
    mailboxId: string,
    folderId: string,
    size: number,
    open: () => Promise<AsyncIterable<Uint8Array>>,
    options: { signal?: AbortSignal; maxAttempts?: number } = {},
  ): Promise<ImportedItem> {
    const maxAttempts = options.maxAttempts ?? 6;
    let renewed = false;
    // Exchange counts what goes over the wire: the JSON body with the item in base64.
    const wireBytes = Math.ceil(size / 3) * 4 + 256;
    for (let attempt = 1; ; attempt++) {
      await this.pace(mailboxId, wireBytes, options.signal);
      const session = await this.session(mailboxId, options.signal);
      // Opened outside the try: a stored object that cannot be read fails as itself, not as a network error.
      const bytes = await open();
      let res: Response;
      try {
        res = await fetch(session.url, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: Readable.toWeb(Readable.from(importBody(folderId, bytes))) as ReadableStream<Uint8Array>,
          // Node's fetch needs this for a streamed request body.
          duplex: "half",
          signal: options.signal,
        } as RequestInit);
      } catch (e) {
        if (options.signal?.aborted || attempt >= maxAttempts) {
          throw new MailvaultError("remote", "ImportNetworkError", `the import upload failed: ${networkCause(e)}`, { retryable: true });
        }
        await sleep(Math.min(30_000, this.retryDelayMs * 2 ** (attempt - 1)), options.signal);
        continue;
      }
      const text = await res.text().catch(() => "");
      if (res.ok) {
        this.record(mailboxId, wireBytes);
        const body = safeJson(text) as { itemId?: unknown; changeKey?: unknown };
        if (typeof body.itemId !== "string") throw new GraphError(res.status, "InvalidImportResponse", "the import endpoint answered without an itemId");
        return { itemId: body.itemId, changeKey: typeof body.changeKey === "string" ? body.changeKey : undefined };
      }
      const err = safeJson(text) as { error?: { code?: string; message?: string } };
      const code = err.error?.code ?? `Http${res.status}`;
      if (res.status === 401 && !renewed) {
        // The session expired early or was revoked: a new one, once per item.
        renewed = true;
        this.sessions.delete(key(mailboxId));
        continue;
      }
      const retryable = res.status === 429 || res.status >= 500;
      if (!retryable || attempt >= maxAttempts) {
        // Graph's message, never the URL: it carries the session's token.
        throw new GraphError(res.status, code, `import failed: ${(err.error?.message ?? `HTTP ${res.status}`).slice(0, 500)}`, { retryable });
      }
      const wait = parseRetryAfter(res.headers.get("retry-after")) ?? this.retryDelayMs * 2 ** (attempt - 1);
      this.log.log("debug", "import throttled or failed; waiting", { status: res.status, waitMs: Math.round(wait) });
      await sleep(Math.min(wait, 5 * 60_000), options.signal);
    }
  }

  /** The mailbox's session, renewed a while before it expires (a minute, or a quarter of its life). */
  private async session(mailboxId: string, signal?: AbortSignal): Promise<Session> {
    const k = key(mailboxId);
    const cached = await this.sessions.get(k)?.catch(() => undefined);
    if (cached && cached.expiresAt - Date.now() > Math.min(60_000, (cached.expiresAt - cached.createdAt) / 4)) return cached;
    const p = (async (): Promise<Session> => {
      const createdAt = Date.now();
      const s = await this.mailbox.createImportSession(mailboxId, signal);
      const expires = Date.parse(s.expirationDateTime);
      return { url: s.importUrl, createdAt, expiresAt: Number.isNaN(expires) ? createdAt + 10 * 60_000 : expires };
    })();
    this.sessions.set(k, p);
    p.catch(() => this.sessions.delete(k));
    return p;
  }

  /** Waits until `size` more bytes fit into the mailbox's upload window. */
  private async pace(mailboxId: string, size: number, signal?: AbortSignal): Promise<void> {
    const k = key(mailboxId);
    for (;;) {
      const now = Date.now();
      const w = (this.windows.get(k) ?? []).filter((e) => now - e.at < this.pacing.windowMs);
      this.windows.set(k, w);
      const used = w.reduce((n, e) => n + e.bytes, 0);
      // An item larger than the whole budget goes alone into an empty window.
      if (used === 0 || used + size <= this.pacing.bytesPerWindow) return;
      const oldest = w[0];
      await sleep(Math.max(5, oldest.at + this.pacing.windowMs - now), signal);
    }
  }

  private record(mailboxId: string, size: number): void {
    const k = key(mailboxId);
    const w = this.windows.get(k) ?? [];
    w.push({ at: Date.now(), bytes: size });
    this.windows.set(k, w);
  }
}

function key(mailboxId: string): string {
  return mailboxId.toLowerCase();
}

/** `{"FolderId": ..., "Mode": "create", "Data": "<base64 of the stored bytes>"}`, streamed. */
async function* importBody(folderId: string, bytes: AsyncIterable<Uint8Array>): AsyncGenerator<Buffer> {
  yield Buffer.from(`{"FolderId":${JSON.stringify(folderId)},"Mode":"create","Data":"`);
  yield* base64Of(bytes);
  yield Buffer.from(`"}`);
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return {};
  }
}

function networkCause(e: unknown): string {
  const cause = (e as { cause?: { code?: string } }).cause;
  return cause?.code ?? (e instanceof Error ? e.name : "error");
}
