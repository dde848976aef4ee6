import { Readable } from "node:stream";
import type { AccessToken, TokenCredential } from "@azure/identity";
import { InvalidInputError, MailvaultError } from "../errors";
import { fetchWithHeadersTimeout, networkReason, parseRetryAfter, readAll, sleep } from "../graph/graphClient";
import { type Logger, silentLogger } from "../log";
import { Semaphore } from "../util/semaphore";
import { NtlmTransport } from "./ntlm";
import { EwsError, type EnvelopeHeader, soapEnvelope, soapFault, TRANSIENT_EWS_CODES } from "./soap";
import { parseXml, type XmlNode, type XmlSpec } from "./xml";

/**
 * The HTTP side of Exchange Web Services: one POST of a SOAP envelope to the EWS URL per call.
 *
 * - Authentication: an OAuth bearer token from any TokenCredential (Exchange Online, or Exchange
 *   Server with hybrid modern auth), NTLM (the on-premises default, connection-based: ntlm.ts), or
 *   Basic (over https only).
 * - Acting for a mailbox: ExchangeImpersonation (a service account with ApplicationImpersonation)
 *   plus `X-AnchorMailbox`, which routes the request to the mailbox's server; or, with
 *   impersonation off, delegate access (the operations name the mailbox themselves).
 * - Throttling: `ErrorServerBusy` faults wait the server's `BackOffMilliseconds` before the next
 *   call, HTTP 503/429 wait `Retry-After`; other transient codes and network failures back off
 *   exponentially. Calls per mailbox in flight are bounded, the slot held until a streamed
 *   response is read to the end.
 * - Credentials never appear in errors or logs.
 */

export type EwsAuth =
  | { kind: "oauth"; credential: TokenCredential; scope: string }
  | { kind: "basic"; username: string; password: string }
  | { kind: "ntlm"; username: string; password: string };

export interface EwsClientOptions {
  /** e.g. https://mail.contoso.com/EWS/Exchange.asmx */
  url: string;
  auth: EwsAuth;
  /** RequestServerVersion (default Exchange2010_SP1, the first with ExportItems and UploadItems). */
  serverVersion?: string;
  /** Act for mailboxes through ExchangeImpersonation (default true). */
  impersonation?: boolean;
  /** Calls in flight per mailbox (default 4). */
  maxRequestsPerMailbox?: number;
  /** Calls in flight in all, for the one service account (Exchange's EWSMaxConcurrency counts per account; default 20). */
  maxRequests?: number;
  /** Retries after the first attempt (default 8). */
  maxRetries?: number;
  /** First backoff step without a server hint (default 1 s). */
  baseRetryDelayMs?: number;
  /** Longest wait between attempts, server hints included (default 5 minutes: BackOffMilliseconds can be that long). */
  maxRetryDelayMs?: number;
  /** Time allowed until response headers arrive (default 120 s; EWS batches may run for a minute). */
  headersTimeoutMs?: number;
  logger?: Logger;
  onRetry?: (info: { code: string; attempt: number; delayMs: number; mailbox: string }) => void;
}

export const SERVER_VERSIONS = ["Exchange2010_SP1", "Exchange2010_SP2", "Exchange2013", "Exchange2013_SP1", "Exchange2015", "Exchange2016"] as const;

export interface EwsCall {
  /** SMTP address of the mailbox the call is about (impersonation, anchor, concurrency bound). */
  mailbox: string;
  /** The operation element's local name, e.g. "SyncFolderItems" (for messages). */
  operation: string;
  /** The operation element: `{"m:SyncFolderItems": {...}}`. */
  body: XmlSpec;
  /** false: a directory question (ResolveNames), asked as the service account itself. */
  impersonate?: boolean;
  /** Name the impersonated mailbox by any of its addresses (SmtpAddress) rather than its primary one. */
  impersonateBy?: "PrimarySmtpAddress" | "SmtpAddress";
  signal?: AbortSignal;
}

export interface EwsStreamCall extends Omit<EwsCall, "body" | "impersonate"> {
  impersonate?: boolean;
  /**
   * The envelope, produced afresh for every attempt: `before` + the parts of `stream()` + `after`,
   * so that a large item is base64-encoded into the request as it is read.
   */
  envelope: () => AsyncIterable<Uint8Array>;
}

const MAX_ERROR_BODY = 256 * 1024;

export class EwsClient {
  readonly url: string;
  private readonly limits = new Map<string, Semaphore>();
  private readonly log: Logger;
  private cached: AccessToken | undefined;
  /** Per mailbox: no call before this time (the server asked us to back off). */
  private readonly backOffUntil = new Map<string, number>();
  private readonly account: Semaphore;
  private readonly ntlm: NtlmTransport | undefined;

  constructor(private readonly options: EwsClientOptions) {
    let u: URL;
    try {
      u = new URL(options.url);
    } catch {
      throw new InvalidInputError(`MAILVAULT_EWS_URL is not a URL: ${JSON.stringify(options.url).slice(0, 100)}`, "InvalidSetting");
    }
    const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(u.hostname);
    if (u.protocol !== "https:" && !(u.protocol === "http:" && loopback)) {
      throw new InvalidInputError("MAILVAULT_EWS_URL must be https (plain http is allowed only on loopback, for the simulator)", "InvalidSetting");
    }
    if (u.username || u.password) throw new InvalidInputError("MAILVAULT_EWS_URL must not carry credentials; use MAILVAULT_EWS_USERNAME and MAILVAULT_EWS_PASSWORD", "InvalidSetting");
    const version = options.serverVersion ?? "Exchange2010_SP1";
    if (!(SERVER_VERSIONS as readonly string[]).includes(version)) {
      throw new InvalidInputError(`MAILVAULT_EWS_SERVER_VERSION must be one of ${SERVER_VERSIONS.join(", ")} (ExportItems needs Exchange2010_SP1 or later)`, "InvalidSetting");
    }
    this.url = u.toString();
    this.log = options.logger ?? silentLogger;
    this.account = new Semaphore(options.maxRequests ?? 20);
    if (options.auth.kind === "ntlm") this.ntlm = new NtlmTransport(this.url, options.auth);
  }

  get impersonation(): boolean {
    return this.options.impersonation ?? true;
  }

  header(mailbox: string, impersonate = true, impersonateBy?: "PrimarySmtpAddress" | "SmtpAddress"): EnvelopeHeader {
    return { serverVersion: this.options.serverVersion ?? "Exchange2010_SP1", ...(this.impersonation && impersonate ? { impersonate: mailbox, ...(impersonateBy ? { impersonateBy } : {}) } : {}) };
  }

  /** One call with a small response, parsed. Faults become EwsError; response messages are the caller's to read. */
  async call(c: EwsCall): Promise<XmlNode> {
    const envelope = soapEnvelope(this.header(c.mailbox, c.impersonate !== false, c.impersonateBy), c.body);
    return this.stream({ ...c, envelope: async function* () { yield Buffer.from(envelope); } }, async (body) => {
      let text: string;
      try {
        text = await readAll(body, 64 * 1024 * 1024);
      } catch (e) {
        throw new EwsError(0, "ResponseInterrupted", `${c.operation}: the response broke off: ${networkReason(e)}`, { retryable: true, cause: e });
      }
      return parseXml(text);
    });
  }

  /**
   * Sends a call (with retries) and hands the open 200 response body to `consume`. The mailbox's slot
   * is held until `consume` settles.
   */
  async stream<T>(c: EwsStreamCall, consume: (body: Readable) => Promise<T>): Promise<T> {
    const sem = this.limitFor(c.mailbox);
    const maxRetries = this.options.maxRetries ?? 8;
    let refreshed = false;
    for (let attempt = 0; ; attempt++) {
      if (c.signal?.aborted) throw c.signal.reason instanceof Error ? c.signal.reason : new Error("aborted");
      await this.waitForBackOff(c.mailbox, c.signal);
      // A sign-in failure is not a network failure: it surfaces as it is, without eight retries.
      const authorization = await this.authorization(c.signal);
      const release = await this.acquire(sem, c.signal);
      let res: Response;
      try {
        res = await this.send(c, authorization);
      } catch (e) {
        release();
        if (c.signal?.aborted) throw e;
        if (e instanceof EwsError && !e.retryable) throw e; // a sign-in set-up problem (NTLM not offered...), not the network
        if (attempt >= maxRetries) throw new EwsError(0, "NetworkError", `${c.operation} failed after ${attempt + 1} attempts: ${networkReason(e)}`, { retryable: true, cause: e });
        await this.backoff(c, "NetworkError", attempt, undefined);
        continue;
      }
      const body = res.body ? Readable.fromWeb(res.body as import("node:stream/web").ReadableStream<Uint8Array>) : Readable.from([]);
      if (res.status === 200) {
        try {
          return await consume(body);
        } finally {
          if (!body.readableEnded) body.destroy();
          release();
        }
      }
      const text = await readAll(body, MAX_ERROR_BODY).catch(() => "");
      release();
      const err = toEwsError(res.status, text, c.operation);
      if (res.status === 401 && this.options.auth.kind === "oauth" && !refreshed) {
        refreshed = true;
        this.cached = undefined;
        continue;
      }
      if (!err.retryable || attempt >= maxRetries) throw err;
      if (err.backOffMs !== undefined) this.holdOff(c.mailbox, err.backOffMs);
      await this.backoff(c, err.code, attempt, err.backOffMs ?? parseRetryAfter(res.headers.get("retry-after")));
    }
  }

  /**
   * The server asked for a pause (BackOffMilliseconds): no call for this mailbox before it is over,
   * whichever code path asks next. Capped at maxRetryDelayMs.
   */
  holdOff(mailbox: string, ms: number): void {
    const until = Date.now() + Math.min(ms, this.options.maxRetryDelayMs ?? 300_000);
    const key = mailbox.toLowerCase();
    if ((this.backOffUntil.get(key) ?? 0) < until) this.backOffUntil.set(key, until);
  }

  private async waitForBackOff(mailbox: string, signal?: AbortSignal): Promise<void> {
    const until = this.backOffUntil.get(mailbox.toLowerCase());
    if (until !== undefined && until > Date.now()) await sleep(until - Date.now(), signal);
  }

  /** A slot of the mailbox, then one of the service account (its EWSMaxConcurrency spans all mailboxes). */
  private async acquire(mailbox: Semaphore, signal?: AbortSignal): Promise<() => void> {
    const releaseMailbox = await mailbox.acquire(signal);
    try {
      const releaseAccount = await this.account.acquire(signal);
      return () => {
        releaseAccount();
        releaseMailbox();
      };
    } catch (e) {
      releaseMailbox();
      throw e;
    }
  }

  private async send(c: EwsStreamCall, authorization: string): Promise<Response> {
    const headers: Record<string, string> = {
      "Content-Type": "text/xml; charset=utf-8",
      Accept: "text/xml",
      ...(authorization ? { Authorization: authorization } : {}),
      "client-request-id": crypto.randomUUID(),
      "return-client-request-id": "true",
    };
    // Routes the call to the server holding the mailbox (required with impersonation in Exchange Online).
    if (this.impersonation && c.impersonate !== false) headers["X-AnchorMailbox"] = c.mailbox;
    if (this.ntlm) return this.ntlm.post({ headers, body: c.envelope, signal: c.signal, headersTimeoutMs: this.options.headersTimeoutMs ?? 120_000 });
    return fetchWithHeadersTimeout(
      this.url,
      {
        method: "POST",
        headers,
        body: Readable.toWeb(Readable.from(c.envelope())) as ReadableStream<Uint8Array>,
        duplex: "half",
        redirect: "manual",
      } as RequestInit,
      this.options.headersTimeoutMs ?? 120_000,
      c.signal,
    );
  }

  private async authorization(signal?: AbortSignal): Promise<string> {
    const auth = this.options.auth;
    if (auth.kind === "ntlm") return ""; // the connection carries it (ntlm.ts)
    if (auth.kind === "basic") return `Basic ${Buffer.from(`${auth.username}:${auth.password}`, "utf8").toString("base64")}`;
    const c = this.cached;
    if (c && c.expiresOnTimestamp - Date.now() > 120_000) return `Bearer ${c.token}`;
    const t = await auth.credential.getToken(auth.scope, { abortSignal: signal });
    if (!t) throw new MailvaultError("remote", "NoToken", "the credential returned no token for Exchange Web Services");
    this.cached = t;
    return `Bearer ${t.token}`;
  }

  private async backoff(c: EwsStreamCall, code: string, attempt: number, hintMs: number | undefined): Promise<void> {
    const max = this.options.maxRetryDelayMs ?? 300_000;
    const base = this.options.baseRetryDelayMs ?? 1000;
    // The server's hint is a floor: waiting less gets throttled again. Jitter only ever adds.
    const raw = hintMs ?? base * 2 ** Math.min(attempt, 10);
    const delayMs = Math.min(max, raw) * (1 + Math.random() * 0.1);
    this.options.onRetry?.({ code, attempt: attempt + 1, delayMs, mailbox: c.mailbox });
    this.log.log("debug", "ews retry", { operation: c.operation, code, attempt: attempt + 1, delayMs: Math.round(delayMs) });
    await sleep(delayMs, c.signal);
  }

  private limitFor(mailbox: string): Semaphore {
    const key = mailbox.toLowerCase();
    let s = this.limits.get(key);
    if (!s) {
      s = new Semaphore(this.options.maxRequestsPerMailbox ?? 4);
      this.limits.set(key, s);
    }
    return s;
  }
}

/** A non-200 answer: a SOAP fault when the body is one, else the HTTP status. */
function toEwsError(status: number, text: string, operation: string): EwsError {
  let fault: ReturnType<typeof soapFault>;
  try {
    fault = text.trim().startsWith("<") ? soapFault(parseXml(text)) : undefined;
  } catch {
    fault = undefined;
  }
  if (fault) {
    const retryable = TRANSIENT_EWS_CODES.has(fault.code) || status === 503;
    return new EwsError(status, fault.code, `${operation}: ${fault.message} (HTTP ${status})`, { retryable, backOffMs: fault.backOffMs });
  }
  const code = status === 401 ? "Unauthorized" : status === 403 ? "Forbidden" : status === 413 ? "RequestTooLarge" : `Http${status}`;
  const hint = status === 401 ? ": check the EWS credentials" : status === 413 ? ": the request is larger than the server accepts (on-premises web.config limits)" : "";
  return new EwsError(status, code, `${operation} returned HTTP ${status}${hint}`, { retryable: status === 429 || status >= 500 });
}
