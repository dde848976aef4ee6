import { Readable } from "node:stream";
import type { AccessToken, TokenCredential } from "@azure/identity";
import { GraphError, InvalidInputError, MailvaultError } from "../errors";
import { type Logger, silentLogger } from "../log";
import { Semaphore } from "../util/semaphore";

/**
 * The one HTTP client mailvault uses for Microsoft Graph. Built on Node's fetch because export
 * responses must be consumed as streams (an exportItems body can be gigabytes of base64).
 *
 * - Credentials: any TokenCredential (managed identity, DefaultAzureCredential) or a static token.
 * - Retries 429/500/502/503/504 and connection failures, honouring Retry-After (capped, jittered).
 * - A per-mailbox bound on requests in flight (Exchange Online allows 4 per app per mailbox); the
 *   slot is held until a streamed body is fully consumed, because that is when Exchange lets go.
 * - Errors are GraphError with Graph's code and request id. The token never appears anywhere.
 */

export interface GraphClientOptions {
  /** e.g. https://graph.microsoft.com */
  endpoint: string;
  /** e.g. v1.0 */
  apiVersion: string;
  credential: TokenCredential;
  /** Token scope; default `<endpoint origin>/.default`. */
  scope?: string;
  /** Requests in flight per mailbox (default 4). */
  maxRequestsPerMailbox?: number;
  /** Retries after the first attempt (default 8). */
  maxRetries?: number;
  /** Longest wait between attempts, Retry-After included (default 60 s). */
  maxRetryDelayMs?: number;
  /** First backoff step when the server gives no Retry-After (default 1 s). */
  baseRetryDelayMs?: number;
  /** Time allowed until response headers arrive (default 120 s). */
  headersTimeoutMs?: number;
  logger?: Logger;
  /** Observes every retry decision (benchmarks count throttling with it). */
  onRetry?: (info: { status: number | "network"; attempt: number; delayMs: number; mailboxId?: string }) => void;
}

export interface GraphRequest {
  method: "GET" | "POST" | "PATCH" | "DELETE";
  /** A path below the version root (`/users/x`) or an absolute nextLink/deltaLink on the same origin. */
  url: string;
  /** Requests about one mailbox share its in-flight bound. */
  mailboxId?: string;
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

export interface OpenResponse {
  status: number;
  headers: Headers;
  requestId: string | undefined;
  body: Readable;
}

const RETRY_STATUS = new Set([429, 500, 502, 503, 504]);
const MAX_ERROR_BODY = 64 * 1024;

/** A credential for a token the user already holds (GRAPH_ACCESS_TOKEN). */
export class StaticTokenCredential implements TokenCredential {
  constructor(private readonly token: string) {
    if (!token.trim()) throw new InvalidInputError("the access token is empty");
  }
  async getToken(): Promise<AccessToken> {
    // Unknown expiry: claim an hour; a 401 still triggers one refresh attempt, which returns the same.
    return { token: this.token.trim(), expiresOnTimestamp: Date.now() + 3600_000 };
  }
}

export class GraphClient {
  readonly baseUrl: string;
  private readonly origin: string;
  private readonly scope: string;
  private readonly limits = new Map<string, Semaphore>();
  private cached: AccessToken | undefined;
  private readonly log: Logger;

  constructor(private readonly options: GraphClientOptions) {
    let u: URL;
    try {
      u = new URL(options.endpoint);
    } catch {
      throw new InvalidInputError(`GRAPH_ENDPOINT is not a URL: ${JSON.stringify(options.endpoint)}`);
    }
    const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(u.hostname);
    if (u.protocol !== "https:" && !(u.protocol === "http:" && loopback)) {
      throw new InvalidInputError("GRAPH_ENDPOINT must be https (plain http is allowed only on loopback, for the simulator)");
    }
    if (!/^(v1\.0|beta)$/.test(options.apiVersion)) {
      throw new InvalidInputError(`GRAPH_API_VERSION must be v1.0 or beta, got ${JSON.stringify(options.apiVersion)}`);
    }
    this.origin = u.origin;
    this.baseUrl = `${u.origin}${u.pathname.replace(/\/+$/, "")}/${options.apiVersion}`;
    this.scope = options.scope ?? `${u.origin}/.default`;
    this.log = options.logger ?? silentLogger;
  }

  /** GET/POST returning parsed JSON (small bodies only). A GET whose body breaks off is sent again. */
  async json<T>(req: GraphRequest): Promise<T> {
    const maxRetries = this.options.maxRetries ?? 8;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.stream(req, async (res) => {
          let text: string;
          try {
            text = await readAll(res.body, 32 * 1024 * 1024);
          } catch (e) {
            if (e instanceof GraphError) throw e;
            throw new GraphError(0, "ResponseInterrupted", `${req.method} ${describeUrl(req.url)}: the response broke off: ${networkReason(e)}`, { retryable: true, cause: e });
          }
          if (!text) return undefined as T;
          try {
            return JSON.parse(text) as T;
          } catch (e) {
            throw new GraphError(res.status, "InvalidJson", `Graph returned a body that is not JSON for ${req.method} ${describeUrl(req.url)}`, {
              requestId: res.requestId,
              retryable: true,
              cause: e,
            });
          }
        });
      } catch (e) {
        const again = req.method === "GET" && e instanceof GraphError && (e.code === "ResponseInterrupted" || e.code === "InvalidJson") && attempt < maxRetries;
        if (!again || req.signal?.aborted) throw e;
        await this.backoff("network", attempt, undefined, req);
      }
    }
  }

  /**
   * Sends a request (with retries) and hands the open response to `consume`. The mailbox slot is held
   * until `consume` settles; the body is destroyed afterwards if `consume` left it unread.
   */
  async stream<T>(req: GraphRequest, consume: (res: OpenResponse) => Promise<T>): Promise<T> {
    const url = this.resolve(req.url);
    const sem = req.mailboxId === undefined ? undefined : this.limitFor(req.mailboxId);
    const maxRetries = this.options.maxRetries ?? 8;
    let refreshedAfter401 = false;
    for (let attempt = 0; ; attempt++) {
      throwIfAborted(req.signal);
      const release = sem ? await sem.acquire(req.signal) : () => {};
      let res: Response;
      try {
        res = await this.send(url, req);
      } catch (e) {
        release();
        if (isAbort(e) && req.signal?.aborted) throw e;
        if (attempt >= maxRetries) {
          throw new GraphError(0, "NetworkError", `${req.method} ${describeUrl(url)} failed after ${attempt + 1} attempts: ${networkReason(e)}`, {
            retryable: true,
            cause: e,
          });
        }
        await this.backoff("network", attempt, undefined, req);
        continue;
      }
      const requestId = res.headers.get("request-id") ?? undefined;
      if (res.ok) {
        const body = res.body ? Readable.fromWeb(res.body as import("node:stream/web").ReadableStream<Uint8Array>) : Readable.from([]);
        try {
          return await consume({ status: res.status, headers: res.headers, requestId, body });
        } finally {
          if (!body.readableEnded) body.destroy();
          release();
        }
      }
      // Error path: read a bounded amount of the body for Graph's error code, then let go of the slot.
      const errText = await readAll(res.body ? Readable.fromWeb(res.body as import("node:stream/web").ReadableStream<Uint8Array>) : Readable.from([]), MAX_ERROR_BODY).catch(() => "");
      release();
      const err = toGraphError(res.status, errText, requestId, req, url);
      if (res.status === 401 && !refreshedAfter401) {
        // Tokens expire mid-run: drop the cached one and try once more with a fresh token.
        refreshedAfter401 = true;
        this.cached = undefined;
        continue;
      }
      if (!RETRY_STATUS.has(res.status) || attempt >= maxRetries) throw err;
      await this.backoff(res.status, attempt, res.headers.get("retry-after"), req);
    }
  }

  private async send(url: string, req: GraphRequest): Promise<Response> {
    const token = await this.token(req.signal);
    const headers: Record<string, string> = {
      Authorization: `Bearer ${token}`,
      Accept: "application/json",
      "client-request-id": crypto.randomUUID(),
      ...req.headers,
    };
    let body: string | undefined;
    if (req.body !== undefined) {
      body = JSON.stringify(req.body);
      headers["Content-Type"] = "application/json";
    }
    return fetchWithHeadersTimeout(url, { method: req.method, headers, body, redirect: "manual" }, this.options.headersTimeoutMs ?? 120_000, req.signal);
  }

  private async token(signal?: AbortSignal): Promise<string> {
    const c = this.cached;
    if (c && c.expiresOnTimestamp - Date.now() > 120_000) return c.token;
    const t = await this.options.credential.getToken(this.scope, { abortSignal: signal });
    if (!t) throw new MailvaultError("remote", "NoToken", "the credential returned no token for Microsoft Graph");
    this.cached = t;
    return t.token;
  }

  private async backoff(status: number | "network", attempt: number, retryAfter: string | null | undefined, req: GraphRequest): Promise<void> {
    const max = this.options.maxRetryDelayMs ?? 60_000;
    const base = this.options.baseRetryDelayMs ?? 1000;
    const fromHeader = parseRetryAfter(retryAfter);
    const raw = fromHeader ?? base * 2 ** Math.min(attempt, 10);
    // Jitter spreads out clients that were throttled together, so they do not return together.
    const delayMs = Math.min(max, raw) * (1 + Math.random() * 0.2);
    this.options.onRetry?.({ status, attempt: attempt + 1, delayMs, mailboxId: req.mailboxId });
    this.log.log("debug", "graph retry", { status, attempt: attempt + 1, delayMs: Math.round(delayMs), url: describeUrl(req.url) });
    await sleep(delayMs, req.signal);
  }

  private resolve(url: string): string {
    if (/^https?:\/\//i.test(url)) {
      // nextLink/deltaLink are absolute; only ever send the token back to the Graph origin.
      const u = new URL(url);
      if (u.origin !== this.origin) throw new GraphError(0, "ForeignLink", `refusing to follow a link to another origin (${u.origin})`);
      return u.toString();
    }
    return this.baseUrl + (url.startsWith("/") ? url : `/${url}`);
  }

  private limitFor(mailboxId: string): Semaphore {
    const key = mailboxId.toLowerCase();
    let s = this.limits.get(key);
    if (!s) {
      s = new Semaphore(this.options.maxRequestsPerMailbox ?? 4);
      this.limits.set(key, s);
    }
    return s;
  }
}

function toGraphError(status: number, body: string, requestId: string | undefined, req: GraphRequest, url: string): GraphError {
  let code = `Http${status}`;
  let message = `${req.method} ${describeUrl(url)} returned ${status}`;
  try {
    const parsed = JSON.parse(body) as { error?: { code?: unknown; message?: unknown } };
    if (typeof parsed.error?.code === "string") code = parsed.error.code;
    if (typeof parsed.error?.message === "string") message = `${parsed.error.message} (${req.method} ${describeUrl(url)}, HTTP ${status})`;
  } catch {
    /* not JSON: keep the generic message */
  }
  // A 401 that survived the token refresh, a 403 (missing permission), a 404: asking again will not help.
  return new GraphError(status, code, message, { requestId, retryable: RETRY_STATUS.has(status) });
}

/**
 * fetch, giving up when the response headers do not arrive within `timeoutMs`. The timer stops once
 * they do: a large body may take as long as it takes (a 150 MB item on a slow link), and reading it
 * is bounded by the caller's signal and by the connection's own liveness, not by a wall clock.
 */
export async function fetchWithHeadersTimeout(url: string, init: RequestInit, timeoutMs: number, signal?: AbortSignal): Promise<Response> {
  const timer = new AbortController();
  const t = setTimeout(() => timer.abort(new DOMException(`no response headers within ${timeoutMs} ms`, "TimeoutError")), timeoutMs);
  try {
    return await fetch(url, { ...init, signal: signal ? AbortSignal.any([signal, timer.signal]) : timer.signal });
  } finally {
    clearTimeout(t);
  }
}

/** A URL for messages: path only, no query (skip/delta tokens are long and may be sensitive). */
export function describeUrl(url: string): string {
  try {
    const u = new URL(url, "http://x");
    return u.pathname;
  } catch {
    return "[url]";
  }
}

export function parseRetryAfter(v: string | null | undefined): number | undefined {
  if (!v) return undefined;
  const secs = Number(v);
  if (Number.isFinite(secs) && secs >= 0) return secs * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

export async function readAll(body: Readable, limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of body) {
    const b = Buffer.isBuffer(c) ? c : Buffer.from(c as Uint8Array);
    n += b.length;
    if (n > limit) {
      body.destroy();
      throw new GraphError(0, "ResponseTooLarge", `response body larger than ${limit} bytes`);
    }
    chunks.push(b);
  }
  return Buffer.concat(chunks).toString("utf8");
}

export function networkReason(e: unknown): string {
  const cause = (e as { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ?? cause?.message ?? (e instanceof Error ? e.message : String(e));
}

function isAbort(e: unknown): boolean {
  return e instanceof Error && (e.name === "AbortError" || e.name === "TimeoutError");
}

function throwIfAborted(signal?: AbortSignal): void {
  if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new Error("aborted");
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
