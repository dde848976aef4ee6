/**
 * The Graph side of the simulator: routing, auth, per-mailbox concurrency, faults, and the
 * handlers for users, exchange settings, folders, items, delta and exportItems, plus the import
 * surface (create folder, createImportSession, and the preauthenticated POST to `importUrl`).
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { randomBytes } from "node:crypto";
import type { FaultPlan } from "./faults";
import { BodyAbort, BodyWriter, GraphError, JSON_CONTENT_TYPE, RequestContext, sleep } from "./http";
import { ImportPacer, ImportSessions, isStrictBase64, type SessionRec } from "./imports";
import type { FolderRec, ItemRec, MailboxState, SimModel, SimUser } from "./model";
import type { RouteName, SimStats } from "./stats";
import { parseSubscriptionSkipToken, type SubscriptionConfig, SubscriptionService, subscriptionSkipToken } from "./subscriptions";

/** Live settings of the Graph handler (the simulator's `config`; may be changed between requests). */
export interface GraphConfig extends SubscriptionConfig {
  /** Bearer token accepted in `Authorization`. */
  token: string;
  /** Requests in flight per mailbox before 429 ApplicationThrottled. Default 4. */
  maxConcurrentPerMailbox: number;
  /** `Retry-After` (seconds) of concurrency 429s. Default 1. */
  concurrencyRetryAfterSeconds: number;
  /** Latency added before each admitted response starts. */
  latencyMs: number | ((route: RouteName) => number);
  /** Pace each response body to this many bytes per second (undefined: as fast as possible). */
  bytesPerSecond: number | undefined;
  /** Largest accepted exportItems / create-folder request body. Default 1 MiB (larger: 413). */
  maxRequestBodyBytes: number;
  /** Most ids per exportItems call. Default 20. */
  maxExportItems: number;
  /** Lifetime of an import session (its `importUrl`). Default 1 hour. */
  importSessionLifetimeMs: number;
  /** Largest accepted importItem request body. Default 200 MiB (larger: 413). */
  maxImportBodyBytes: number;
  /** importItem upload budget per mailbox and window (request-body bytes). Default 150 MiB. */
  importBytesPerWindow: number;
  /** Length of the sliding upload window. Default 5 minutes. */
  importWindowMs: number;
  /** Called for unexpected handler errors (default: console.error). */
  onError: (err: unknown) => void;
}

type Version = "v1.0" | "beta";

type Target =
  | { route: "users"; userId: string | null }
  | { route: "settings"; userId: string }
  | { route: "folders"; mbx: string; op: "rootChildren" }
  | { route: "folders"; mbx: string; op: "get" | "children"; folderId: string }
  | { route: "folders"; mbx: string; op: "child"; folderId: string; childId: string }
  | { route: "foldersDelta"; mbx: string }
  | { route: "items"; mbx: string; folderId: string; itemId: string | null }
  | { route: "itemsDelta"; mbx: string; folderId: string }
  | { route: "exportItems"; mbx: string }
  | { route: "createFolder"; mbx: string; parentId: string | null }
  | { route: "createImportSession"; mbx: string }
  | { route: "importItem"; mbx: string }
  | { route: "subscriptions"; op: "collection" }
  | { route: "subscriptions"; op: "item" | "reauthorize"; id: string };

type Json = Record<string, unknown>;

interface Round {
  kind: "items" | "folders";
  mailboxId: string;
  epoch: number;
  folderId: string | null;
  entries: Json[];
  untilSeq: number;
  pageSize: number;
  select: string[] | null;
  deltaToken: string | null;
}

interface DeltaState {
  kind: "items" | "folders";
  mailboxId: string;
  epoch: number;
  folderId: string | null;
  sinceSeq: number;
  pageSize: number;
  select: string[] | null;
}

const DEFAULT_PAGE = 10;
const MAX_PAGE = 1000;
const MAX_ROUNDS = 2000;
const NOT_FOUND_IN_STORE = "The specified object was not found in the store.";
const MAX_FOLDER_NAME = 255;
/** Folder classes: `IPF` or `IPF.` followed by dot-separated word segments (IPF.Note, IPF.Appointment...). */
const FOLDER_CLASS = /^IPF(\.[A-Za-z0-9_-]+)*$/;
/** Writable mailboxFolder properties on create (others, including read-only ones, are 400). */
const CREATE_FOLDER_PROPS = new Set(["displayName", "type", "singleValueExtendedProperties", "multiValueExtendedProperties", "@odata.type"]);
const POST_ROUTES: ReadonlySet<RouteName> = new Set<RouteName>(["exportItems", "createFolder", "createImportSession", "importItem"]);

const DEFAULT_STATUS_CODES: Record<number, [string, string]> = {
  400: ["BadRequest", "Bad request."],
  401: ["InvalidAuthenticationToken", "Access token validation failure."],
  403: ["ErrorAccessDenied", "Access is denied. Check credentials and try again."],
  404: ["ErrorItemNotFound", NOT_FOUND_IN_STORE],
  409: ["ErrorIrresolvableConflict", "The send or update operation could not be performed because the change key passed in the request does not match the current change key for the item."],
  429: ["TooManyRequests", "Please retry again later."],
  500: ["InternalServerError", "An internal server error occurred."],
  502: ["BadGateway", "Bad gateway."],
  503: ["ServiceUnavailable", "The service is temporarily unavailable."],
  504: ["GatewayTimeout", "The gateway did not receive a response in time."],
};

export class GraphHandler {
  private readonly inFlight = new Map<string, number>();
  private readonly rounds = new Map<string, Round>();
  private readonly deltaTokens = new Map<string, DeltaState>();
  /** Import sessions (authtokens of importUrls). */
  readonly importSessions = new ImportSessions();
  /** Per-mailbox upload budget of importItem. */
  readonly importPacer = new ImportPacer();
  /** Change-notification subscriptions. */
  readonly subscriptions: SubscriptionService;

  constructor(
    private readonly model: SimModel,
    private readonly faults: FaultPlan,
    private readonly stats: SimStats,
    private readonly config: GraphConfig,
    private readonly baseUrl: () => string,
  ) {
    this.subscriptions = new SubscriptionService(model, config);
  }

  /** Current in-flight count of a mailbox. */
  inFlightOf(mailboxId: string): number {
    return this.inFlight.get(mailboxId.toLowerCase()) ?? 0;
  }

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const ctx = new RequestContext(req, res, this.stats);
    this.stats.totalRequests++;
    let counted = false;
    const countStatus = (): void => {
      if (counted) return;
      counted = true;
      this.stats.statuses[res.statusCode] = (this.stats.statuses[res.statusCode] ?? 0) + 1;
    };
    res.once("finish", countStatus);
    res.once("close", countStatus);
    try {
      await this.dispatch(ctx);
    } catch (err) {
      if (err instanceof BodyAbort) return;
      if (err instanceof GraphError) {
        ctx.sendError(err);
        return;
      }
      this.config.onError(err);
      ctx.sendError(new GraphError(500, "InternalServerError", err instanceof Error ? `Simulator error: ${err.message}` : "Simulator error"));
    }
  }

  // ---- routing -----------------------------------------------------------------------------

  private async dispatch(ctx: RequestContext): Promise<void> {
    const { req } = ctx;
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    const method = req.method ?? "GET";
    let parsed: { version: Version; target: Target } | GraphError;
    try {
      parsed = this.parse(url.pathname, method);
    } catch (e) {
      if (!(e instanceof GraphError)) throw e;
      parsed = e;
    }
    if (!(parsed instanceof GraphError)) this.stats.requests[parsed.target.route]++;
    // importUrl is preauthenticated: its authtoken counts, any Authorization header is ignored.
    let session: SessionRec | undefined;
    if (!(parsed instanceof GraphError) && parsed.target.route === "importItem") session = this.checkImportToken(url, parsed.target.mbx);
    else this.checkAuth(req);
    if (parsed instanceof GraphError) throw parsed;
    const { version, target } = parsed;
    const wanted = target.route === "subscriptions" ? subscriptionMethods(target.op) : [POST_ROUTES.has(target.route) ? "POST" : "GET"];
    if (!wanted.includes(method)) throw new GraphError(405, "Request_BadRequest", `The HTTP method '${method}' is not allowed for this resource.`);

    // Mailbox-scoped routes: resolve the mailbox, then admit against the per-mailbox concurrency limit.
    let mbx: MailboxState | undefined;
    let faultMailbox: string | null = null;
    if ("mbx" in target) {
      mbx = this.model.mailboxes.get((session?.mailboxId ?? target.mbx).toLowerCase());
      if (!mbx) throw new GraphError(404, "ErrorMailboxNotFound", `The mailbox '${target.mbx}' was not found.`);
      faultMailbox = mbx.mailboxId;
      this.admit(ctx, mbx);
    } else if (target.route === "settings") {
      faultMailbox = this.model.findUser(target.userId)?.mailboxId ?? null;
    }

    // Latency, injected delay and injected status.
    const lat = this.config.latencyMs;
    await sleep(typeof lat === "function" ? lat(target.route) : lat);
    const delay = this.faults.take("delayMs", target.route, faultMailbox);
    if (delay) await sleep(delay.ms);
    const st = this.faults.take("status", target.route, faultMailbox);
    if (st) {
      const [defCode, defMessage] = DEFAULT_STATUS_CODES[st.status] ?? ["UnknownError", `Injected status ${st.status}.`];
      const headers: Record<string, string> = {};
      if (st.retryAfterSeconds !== undefined) headers["Retry-After"] = String(st.retryAfterSeconds);
      if (st.status === 429) this.stats.throttledByFault++;
      throw new GraphError(st.status, st.code ?? defCode, st.message ?? defMessage, headers);
    }

    const base = target.route === "importItem" ? `${this.baseUrl()}/api/g${version}` : `${this.baseUrl()}/${version}`;
    const page = new Page(ctx, url, base, target.route, faultMailbox, this);
    switch (target.route) {
      case "users":
        return target.userId === null ? this.listUsers(page) : this.getUser(page, target.userId);
      case "settings":
        return this.settings(page, version, target.userId);
      case "folders":
        return this.folders(page, mbx as MailboxState, target);
      case "foldersDelta":
        return this.delta(page, mbx as MailboxState, "folders", null);
      case "items":
        return this.items(page, mbx as MailboxState, target.folderId, target.itemId);
      case "itemsDelta":
        return this.delta(page, mbx as MailboxState, "items", target.folderId);
      case "exportItems":
        return this.exportItems(ctx, page, mbx as MailboxState);
      case "createFolder":
        return this.createFolder(ctx, page, mbx as MailboxState, target.parentId);
      case "createImportSession":
        return this.createImportSession(page, version, mbx as MailboxState);
      case "importItem":
        return this.importItem(ctx, page, mbx as MailboxState);
      case "subscriptions":
        return this.subscriptionRoute(ctx, page, target, method);
    }
  }

  private parse(pathname: string, method: string): { version: Version; target: Target } {
    let segs: string[];
    try {
      segs = pathname.split("/").slice(1).map((s) => decodeURIComponent(s));
    } catch {
      throw new GraphError(400, "BadRequest", "Invalid URL encoding.");
    }
    if (segs.length > 0 && segs[segs.length - 1] === "") segs.pop();
    if (segs[0]?.toLowerCase() === "api") {
      // importUrl: /api/gv1.0/Mailboxes('<mbx>')/importItem (gbeta on beta)
      const v = segs[1]?.toLowerCase();
      const m = /^mailboxes\('(.+)'\)$/i.exec(segs[2] ?? "");
      if ((v === "gv1.0" || v === "gbeta") && m && segs.length === 4 && segs[3].toLowerCase() === "importitem") {
        return { version: v === "gv1.0" ? "v1.0" : "beta", target: { route: "importItem", mbx: m[1] } };
      }
      throw new GraphError(400, "BadRequest", "Resource not found for the segment.");
    }
    const [ver, ...rest] = segs;
    if (ver !== "v1.0" && ver !== "beta") throw new GraphError(400, "BadRequest", `Invalid version: ${ver ?? ""}`);
    const lc = rest.map((s) => s.toLowerCase());
    const isDelta = (s: string | undefined): boolean => s === "delta" || s === "delta()";
    const bad = (): GraphError => new GraphError(400, "BadRequest", `Resource not found for the segment '${rest[rest.length - 1] ?? ""}'.`);
    if (lc[0] === "subscriptions") {
      if (rest.length === 1) return { version: ver, target: { route: "subscriptions", op: "collection" } };
      if (rest.length === 2) return { version: ver, target: { route: "subscriptions", op: "item", id: rest[1] } };
      if (rest.length === 3 && lc[2] === "reauthorize") return { version: ver, target: { route: "subscriptions", op: "reauthorize", id: rest[1] } };
      throw bad();
    }
    if (lc[0] === "users") {
      if (rest.length === 1) return { version: ver, target: { route: "users", userId: null } };
      if (rest.length === 2) return { version: ver, target: { route: "users", userId: rest[1] } };
      if (rest.length === 4 && lc[2] === "settings" && lc[3] === "exchange") return { version: ver, target: { route: "settings", userId: rest[1] } };
      throw bad();
    }
    if (lc[0] !== "admin" || lc[1] !== "exchange" || lc[2] !== "mailboxes" || rest.length < 5) throw bad();
    const mbx = rest[3];
    const r = rest.slice(4);
    const l = lc.slice(4);
    const t = (target: Target): { version: Version; target: Target } => ({ version: ver, target });
    if (l.length === 1 && l[0] === "exportitems") return t({ route: "exportItems", mbx });
    if (l.length === 1 && l[0] === "createimportsession") return t({ route: "createImportSession", mbx });
    if (l[0] !== "folders") throw bad();
    const post = method === "POST";
    if (l.length === 1) return t(post ? { route: "createFolder", mbx, parentId: null } : { route: "folders", mbx, op: "rootChildren" });
    if (l.length === 2 && isDelta(l[1])) return t({ route: "foldersDelta", mbx });
    const folderId = r[1];
    if (l.length === 2) return t({ route: "folders", mbx, op: "get", folderId });
    if (l[2] === "childfolders") {
      if (l.length === 3) return t(post ? { route: "createFolder", mbx, parentId: folderId } : { route: "folders", mbx, op: "children", folderId });
      if (l.length === 4 && isDelta(l[3])) throw new GraphError(501, "NotImplemented", "childFolders/delta is not implemented by the simulator; use folders/delta.");
      if (l.length === 4) return t({ route: "folders", mbx, op: "child", folderId, childId: r[3] });
      throw bad();
    }
    if (l[2] === "items") {
      if (l.length === 3) return t({ route: "items", mbx, folderId, itemId: null });
      if (l.length === 4 && isDelta(l[3])) return t({ route: "itemsDelta", mbx, folderId });
      if (l.length === 4) return t({ route: "items", mbx, folderId, itemId: r[3] });
    }
    throw bad();
  }

  private checkAuth(req: IncomingMessage): void {
    const h = req.headers.authorization;
    const headers = { "WWW-Authenticate": 'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize"' };
    if (!h) throw new GraphError(401, "InvalidAuthenticationToken", "Access token is empty.", headers);
    const m = /^Bearer\s+(.+)$/i.exec(h);
    if (!m || m[1].trim() !== this.config.token) throw new GraphError(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience or signature.", headers);
  }

  /** The import session of an importUrl request (401 InvalidAuthenticationToken if unknown, expired or for another mailbox). */
  private checkImportToken(url: URL, pathMailbox: string): SessionRec {
    const token = url.searchParams.get("authtoken");
    if (token === null || token === "") throw new GraphError(401, "InvalidAuthenticationToken", "The import session token is missing.");
    const s = this.importSessions.get(token);
    if (!s || s.mailboxId.toLowerCase() !== pathMailbox.toLowerCase()) {
      throw new GraphError(401, "InvalidAuthenticationToken", "The import session token is invalid. Create a new import session.");
    }
    if (Date.now() >= s.expiresAt) {
      throw new GraphError(401, "InvalidAuthenticationToken", "The import session has expired. Create a new import session.");
    }
    return s;
  }

  private admit(ctx: RequestContext, mbx: MailboxState): void {
    const key = mbx.mailboxId.toLowerCase();
    const now = this.inFlight.get(key) ?? 0;
    if (now >= this.config.maxConcurrentPerMailbox) {
      this.stats.throttledByConcurrency++;
      throw new GraphError(429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.", {
        "Retry-After": String(this.config.concurrencyRetryAfterSeconds),
      });
    }
    this.inFlight.set(key, now + 1);
    const max = this.stats.maxInFlight.get(mbx.mailboxId) ?? 0;
    if (now + 1 > max) this.stats.maxInFlight.set(mbx.mailboxId, now + 1);
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      this.inFlight.set(key, (this.inFlight.get(key) ?? 1) - 1);
    };
    ctx.res.once("finish", release);
    ctx.res.once("close", release);
  }

  /** @internal a BodyWriter for a 200 body of this request (takes a body fault if one matches). */
  bodyWriter(res: ServerResponse, route: RouteName, mailboxId: string | null, requestItemIds?: readonly string[]): BodyWriter {
    const reset = this.faults.take("resetMidBody", route, mailboxId, undefined, requestItemIds);
    const trunc = reset ? undefined : this.faults.take("truncateJson", route, mailboxId, undefined, requestItemIds);
    const cut = reset
      ? { kind: "reset" as const, afterBytes: reset.afterBytes ?? 100 }
      : trunc
        ? { kind: "truncate" as const, afterBytes: trunc.afterBytes ?? 100 }
        : undefined;
    return new BodyWriter(res, this.stats, cut, this.config.bytesPerSecond);
  }

  // ---- users and settings --------------------------------------------------------------------

  private renderUser(u: SimUser): Json {
    return { id: u.id, userPrincipalName: u.userPrincipalName, displayName: u.displayName, mail: u.mail };
  }

  private async listUsers(page: Page): Promise<void> {
    page.rejectUnsupported();
    const top = page.intParam("$top", 100, 1, 999);
    const tok = page.url.searchParams.get("$skiptoken");
    let offset = 0;
    if (tok !== null) {
      const m = /^u(\d+)$/.exec(Buffer.from(tok, "base64url").toString("latin1"));
      if (!m) throw new GraphError(400, "Request_BadRequest", "Invalid skip token.");
      offset = Number(m[1]);
    }
    const all = [...this.model.users.values()];
    const slice = all.slice(offset, offset + top).map((u) => page.project(this.renderUser(u), ["id"]));
    const body: Json = { "@odata.context": `${page.base}/$metadata#users` };
    body.value = slice;
    if (offset + top < all.length) {
      body["@odata.nextLink"] = page.link({ $skiptoken: Buffer.from(`u${offset + top}`, "latin1").toString("base64url") });
    }
    await page.json(body);
  }

  private async getUser(page: Page, userId: string): Promise<void> {
    const u = this.model.findUser(userId);
    if (!u) throw userNotFound(userId);
    await page.json({ "@odata.context": `${page.base}/$metadata#users/$entity`, ...page.project(this.renderUser(u), ["id"]) });
  }

  private async settings(page: Page, version: Version, userId: string): Promise<void> {
    const u = this.model.findUser(userId);
    if (!u) throw userNotFound(userId);
    if (!u.mailboxId) throw new GraphError(404, "MailboxNotEnabledForRESTAPI", "The mailbox is either inactive, soft-deleted, or is hosted on-premise.");
    const body: Json = { "@odata.context": `${page.base}/$metadata#users('${encodeURIComponent(userId)}')/settings/exchange/$entity` };
    if (version === "beta") {
      body.id = u.id;
      body.primaryMailboxId = u.mailboxId;
      body.inPlaceArchiveMailboxId = null;
    } else {
      body.primaryMailboxId = u.mailboxId;
    }
    await page.json(body);
  }

  // ---- folders and items -------------------------------------------------------------------

  private mailboxPath(page: Page, mbx: MailboxState): string {
    return `${page.base}/admin/exchange/mailboxes/${encodeURIComponent(mbx.mailboxId)}`;
  }

  private renderFolder(page: Page, mbx: MailboxState, f: FolderRec): Json {
    return {
      id: f.id,
      displayName: f.displayName,
      parentFolderId: f.parentFolderId,
      childFolderCount: f.children.size,
      totalItemCount: f.items.size,
      type: f.type,
      wellKnownName: f.wellKnownName,
      parentMailboxUrl: this.mailboxPath(page, mbx),
    };
  }

  private renderItem(i: ItemRec): Json {
    return {
      "@odata.etag": `W/"${i.changeKey}"`,
      id: i.id,
      changeKey: i.changeKey,
      size: i.size,
      type: i.type,
      categories: [],
      createdDateTime: i.created,
      lastModifiedDateTime: i.modified,
    };
  }

  private folderOr404(mbx: MailboxState, id: string): FolderRec {
    const f = mbx.resolveFolder(id);
    if (!f) throw new GraphError(404, "ErrorItemNotFound", NOT_FOUND_IN_STORE);
    return f;
  }

  private contextOf(page: Page, mbx: MailboxState, tail: string): string {
    return `${page.base}/$metadata#admin/exchange/mailboxes('${encodeURIComponent(mbx.mailboxId)}')/${tail}`;
  }

  private async folders(page: Page, mbx: MailboxState, target: Extract<Target, { route: "folders" }>): Promise<void> {
    if (target.op === "get" || target.op === "child") {
      const parent = this.folderOr404(mbx, target.folderId);
      let f = parent;
      if (target.op === "child") {
        f = this.folderOr404(mbx, target.childId);
        if (f.parentFolderId !== parent.id) throw new GraphError(404, "ErrorItemNotFound", NOT_FOUND_IN_STORE);
      }
      const ctxUrl = this.contextOf(page, mbx, "folders/$entity");
      await page.json({ "@odata.context": ctxUrl, ...page.project(this.renderFolder(page, mbx, f), ["id"]) });
      return;
    }
    const parent = target.op === "rootChildren" ? this.folderOr404(mbx, mbx.rootId) : this.folderOr404(mbx, target.folderId);
    const list: FolderRec[] = [];
    for (const c of parent.children) {
      const f = mbx.folders.get(c);
      if (f) list.push(f);
    }
    const tail = target.op === "rootChildren" ? "folders" : `folders('${encodeURIComponent(parent.id)}')/childFolders`;
    await page.paged(this.contextOf(page, mbx, tail), list, (f) => this.renderFolder(page, mbx, f));
  }

  private async items(page: Page, mbx: MailboxState, folderId: string, itemId: string | null): Promise<void> {
    const folder = this.folderOr404(mbx, folderId);
    if (itemId !== null) {
      const i = mbx.items.get(itemId);
      if (!i || i.folderId !== folder.id) throw new GraphError(404, "ErrorItemNotFound", NOT_FOUND_IN_STORE);
      const ctxUrl = this.contextOf(page, mbx, `folders('${encodeURIComponent(folder.id)}')/items/$entity`);
      await page.json({ "@odata.context": ctxUrl, ...page.project(this.renderItem(i), ["id", "@odata.etag"]) });
      return;
    }
    const list: ItemRec[] = [];
    for (const id of folder.items) {
      const i = mbx.items.get(id);
      if (i) list.push(i);
    }
    const ctxUrl = this.contextOf(page, mbx, `folders('${encodeURIComponent(folder.id)}')/items`);
    await page.paged(ctxUrl, list, (i) => this.renderItem(i), ["id", "@odata.etag"]);
  }

  // ---- delta ---------------------------------------------------------------------------------

  private syncStateGone(): GraphError {
    return new GraphError(410, "SyncStateNotFound", "The sync state was not found or has expired. Restart the synchronization without a delta token.");
  }

  private async delta(page: Page, mbx: MailboxState, kind: "items" | "folders", folderIdParam: string | null): Promise<void> {
    const q = page.url.searchParams;
    for (const k of ["$filter", "$search", "$orderby"]) {
      if (q.has(k)) throw new GraphError(400, "BadRequest", `The query option '${k}' is not supported by the simulator's delta.`);
    }
    const folder = folderIdParam === null ? null : this.folderOr404(mbx, folderIdParam);
    const folderId = folder?.id ?? null;
    const preferPage = page.preferMaxPageSize();
    const topParam = q.has("$top") ? page.intParam("$top", DEFAULT_PAGE, 1, MAX_PAGE) : null;
    const deltaTok = q.get("$deltatoken") ?? q.get("$deltaToken");
    const skipTok = q.get("$skiptoken") ?? q.get("$skipToken");

    let round: Round;
    let offset = 0;
    const valid = (s: { kind: string; mailboxId: string; epoch: number; folderId: string | null }): boolean =>
      s.kind === kind && s.mailboxId === mbx.mailboxId && s.epoch === mbx.epoch && s.folderId === folderId;
    if (skipTok !== null) {
      const m = /^([A-Za-z0-9_-]+)\.(\d+)$/.exec(skipTok);
      const r = m ? this.rounds.get(m[1]) : undefined;
      if (!m || !r || !valid(r)) throw this.syncStateGone();
      round = r;
      offset = Number(m[2]);
    } else {
      let since = 0;
      let initial = true;
      let pageSize = preferPage ?? topParam ?? DEFAULT_PAGE;
      let select = page.selectList();
      if (deltaTok !== null) {
        const st = this.deltaTokens.get(deltaTok);
        if (!st || !valid(st)) throw this.syncStateGone();
        since = st.sinceSeq;
        initial = false;
        pageSize = preferPage ?? topParam ?? st.pageSize;
        select = st.select;
      }
      round = this.newRound(page, mbx, kind, folder, since, initial, pageSize, select);
    }
    const pageSize = preferPage ?? topParam ?? round.pageSize;
    if (preferPage !== null) page.ctx.res.setHeader("Preference-Applied", `odata.maxpagesize=${preferPage}`);
    const body: Json = {
      "@odata.context": this.contextOf(page, mbx, kind === "items" ? `folders('${encodeURIComponent(folderId ?? "")}')/items/delta` : "folders/delta"),
    };
    body.value = round.entries.slice(offset, offset + pageSize);
    const linkPath = kind === "items" ? `${this.mailboxPath(page, mbx)}/folders/${encodeURIComponent(folderId ?? "")}/items/delta` : `${this.mailboxPath(page, mbx)}/folders/delta`;
    if (offset + pageSize < round.entries.length) {
      const key = this.roundKey(round);
      body["@odata.nextLink"] = `${linkPath}?%24skiptoken=${key}.${offset + pageSize}`;
    } else {
      if (round.deltaToken === null) {
        round.deltaToken = randomBytes(30).toString("base64url");
        this.deltaTokens.set(round.deltaToken, {
          kind,
          mailboxId: mbx.mailboxId,
          epoch: round.epoch,
          folderId,
          sinceSeq: round.untilSeq,
          pageSize: round.pageSize,
          select: round.select,
        });
      }
      body["@odata.deltaLink"] = `${linkPath}?%24deltatoken=${round.deltaToken}`;
    }
    await page.json(body);
  }

  private readonly roundKeys = new WeakMap<Round, string>();

  private roundKey(r: Round): string {
    let k = this.roundKeys.get(r);
    if (!k) {
      k = randomBytes(24).toString("base64url");
      this.roundKeys.set(r, k);
      this.rounds.set(k, r);
      while (this.rounds.size > MAX_ROUNDS) {
        const oldest = this.rounds.keys().next().value;
        if (oldest === undefined) break;
        this.rounds.delete(oldest);
      }
    }
    return k;
  }

  private newRound(
    page: Page,
    mbx: MailboxState,
    kind: "items" | "folders",
    folder: FolderRec | null,
    since: number,
    initial: boolean,
    pageSize: number,
    select: string[] | null,
  ): Round {
    const entries: Json[] = [];
    if (kind === "items" && folder) {
      for (const id of folder.items) {
        const i = mbx.items.get(id);
        if (i && i.seq > since) entries.push(projectWith(this.renderItem(i), select, ["id", "@odata.etag"]));
      }
      if (!initial) {
        for (const [id, seq] of folder.itemTombstones) {
          if (seq > since && !folder.items.has(id)) entries.push({ id, "@removed": { reason: "deleted" } });
        }
      }
    } else {
      for (const f of this.model.folderTree(mbx)) {
        if (f.seq > since) entries.push(projectWith(this.renderFolder(page, mbx, f), select, ["id", "parentMailboxUrl"]));
      }
      if (!initial) {
        for (const [id, seq] of mbx.folderTombstones) {
          if (seq > since && !mbx.folders.has(id)) entries.push({ id, "@removed": { reason: "deleted" } });
        }
      }
    }
    return { kind, mailboxId: mbx.mailboxId, epoch: mbx.epoch, folderId: folder?.id ?? null, entries, untilSeq: mbx.seq, pageSize, select, deltaToken: null };
  }

  // ---- exportItems ---------------------------------------------------------------------------

  private async readBody(ctx: RequestContext, limit: number = this.config.maxRequestBodyBytes): Promise<Buffer> {
    const tooLarge = (): GraphError =>
      new GraphError(413, "RequestEntityTooLarge", `The request body exceeds the maximum of ${limit} bytes.`, { Connection: "close" });
    const declared = Number(ctx.req.headers["content-length"] ?? NaN);
    const hardCap = Math.max(limit * 64, 64 * 1024 * 1024);
    if (declared > hardCap) throw tooLarge();
    const chunks: Buffer[] = [];
    let total = 0;
    for await (const chunk of ctx.req) {
      const b = chunk as Buffer;
      total += b.length;
      if (total > hardCap) throw tooLarge();
      if (total <= limit) chunks.push(b);
    }
    if (total > limit) throw tooLarge();
    return Buffer.concat(chunks);
  }

  private async exportItems(ctx: RequestContext, page: Page, mbx: MailboxState): Promise<void> {
    this.stats.exportItemsCalls++;
    const ct = ctx.req.headers["content-type"] ?? "";
    if (!/^application\/json\b/i.test(ct)) {
      throw new GraphError(415, "UnsupportedMediaType", "The request must have Content-Type: application/json.");
    }
    const raw = await this.readBody(ctx);
    let body: unknown;
    try {
      body = JSON.parse(raw.toString("utf8"));
    } catch {
      throw new GraphError(400, "BadRequest", "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.");
    }
    const max = this.config.maxExportItems;
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      throw new GraphError(400, "ErrorInvalidRequest", "The request body must be a JSON object with an 'itemIds' collection.");
    }
    const ids: unknown = (body as Record<string, unknown>).itemIds;
    if (ids === undefined || ids === null) throw new GraphError(400, "ErrorInvalidRequest", "The parameter 'itemIds' is required.");
    if (!Array.isArray(ids)) throw new GraphError(400, "ErrorInvalidRequest", "The parameter 'itemIds' must be a collection of strings.");
    if (ids.length === 0) throw new GraphError(400, "ErrorInvalidRequest", "The parameter 'itemIds' must contain at least one id.");
    if (ids.length > max) {
      throw new GraphError(400, "ErrorInvalidRequest", `Too many itemIds: ${ids.length}. The maximum is ${max} items per exportItems request.`);
    }
    const itemIds: string[] = [];
    for (const id of ids) {
      if (typeof id !== "string") throw new GraphError(400, "ErrorInvalidRequest", "The parameter 'itemIds' must be a collection of strings.");
      if (id === "") throw new GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.");
      itemIds.push(id);
    }

    const res = ctx.res;
    const w = this.bodyWriter(res, "exportItems", mbx.mailboxId, itemIds);
    res.statusCode = 200;
    res.setHeader("Content-Type", JSON_CONTENT_TYPE);
    const enc = (s: string): Buffer => Buffer.from(s, "utf8");
    await w.write(enc(`{"@odata.context":${JSON.stringify(`${page.base}/$metadata#Collection(microsoft.graph.exportItemResponse)`)},"value":[`));
    for (let k = 0; k < itemIds.length; k++) {
      const id = itemIds[k];
      const sep = k === 0 ? "" : ",";
      const injected = this.faults.take("itemError", "exportItems", mbx.mailboxId, id);
      const rec = mbx.items.get(id);
      if (injected || !rec) {
        const error = injected
          ? { code: injected.code ?? "ErrorInternalServerTransientError", message: injected.message ?? "A transient error occurred. Try again." }
          : { code: "ErrorItemNotFound", message: NOT_FOUND_IN_STORE };
        await w.write(enc(`${sep}${JSON.stringify({ itemId: id, error })}`));
        this.stats.itemErrors++;
        continue;
      }
      const corrupt = this.faults.take("invalidBase64", "exportItems", mbx.mailboxId, id);
      await w.write(enc(`${sep}{"itemId":${JSON.stringify(id)},"changeKey":${JSON.stringify(rec.changeKey)},"data":"`));
      let first = true;
      for (const chunk of this.model.itemChunks(mbx, rec)) {
        let s = chunk.toString("base64");
        if (corrupt && first) s = `${s.slice(0, 4)}!*~${s.slice(7)}`;
        first = false;
        await w.write(Buffer.from(s, "latin1"));
      }
      if (corrupt && first) await w.write(enc("!*~="));
      await w.write(enc(`"}`));
      this.stats.itemsExported++;
      this.stats.exportedItemIds.set(id, (this.stats.exportedItemIds.get(id) ?? 0) + 1);
    }
    await w.write(enc("]}"));
    await w.end();
  }

  // ---- subscriptions -------------------------------------------------------------------------

  private async subscriptionRoute(ctx: RequestContext, page: Page, target: Extract<Target, { route: "subscriptions" }>, method: string): Promise<void> {
    const svc = this.subscriptions;
    const entity = `${page.base}/$metadata#subscriptions/$entity`;
    if (target.op === "collection") {
      if (method === "GET") {
        const all = svc.list();
        const tok = page.url.searchParams.get("$skiptoken");
        const offset = tok === null ? 0 : parseSubscriptionSkipToken(tok);
        if (offset === undefined) throw new GraphError(400, "BadRequest", "Invalid skip token.");
        const size = this.config.subscriptionPageSize;
        const body: Json = { "@odata.context": `${page.base}/$metadata#subscriptions`, value: all.slice(offset, offset + size) };
        if (offset + size < all.length) body["@odata.nextLink"] = `${page.base}/subscriptions?$skiptoken=${subscriptionSkipToken(offset + size)}`;
        return page.json(body);
      }
      this.requireJson(ctx);
      const created = await svc.create(this.parseJsonObject(await this.readBody(ctx)), this.model.tenantId);
      ctx.res.setHeader("Location", `${page.base}/subscriptions/${created.id as string}`);
      return page.json({ ...created, "@odata.context": entity }, 201);
    }
    if (target.op === "reauthorize") {
      svc.reauthorize(target.id);
      ctx.res.statusCode = 204;
      ctx.res.end();
      return;
    }
    if (method === "GET") return page.json({ "@odata.context": entity, ...svc.get(target.id) });
    if (method === "DELETE") {
      svc.remove(target.id);
      ctx.res.statusCode = 204;
      ctx.res.end();
      return;
    }
    this.requireJson(ctx);
    return page.json({ "@odata.context": entity, ...svc.renew(target.id, this.parseJsonObject(await this.readBody(ctx))) });
  }

  // ---- import surface ------------------------------------------------------------------------

  private requireJson(ctx: RequestContext): void {
    const ct = ctx.req.headers["content-type"] ?? "";
    if (!/^application\/json\b/i.test(ct)) {
      throw new GraphError(415, "UnsupportedMediaType", "The request must have Content-Type: application/json.");
    }
  }

  private parseJsonObject(raw: Buffer): Json {
    let body: unknown;
    try {
      body = JSON.parse(raw.toString("utf8"));
    } catch {
      throw new GraphError(400, "BadRequest", "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.");
    }
    if (typeof body !== "object" || body === null || Array.isArray(body)) throw invalid("The request body must be a JSON object.");
    return body as Json;
  }

  /** POST …/folders (parent: msgfolderroot) or …/folders/{parentId}/childFolders. */
  private async createFolder(ctx: RequestContext, page: Page, mbx: MailboxState, parentId: string | null): Promise<void> {
    this.requireJson(ctx);
    const body = this.parseJsonObject(await this.readBody(ctx));
    const parent = this.folderOr404(mbx, parentId ?? mbx.rootId);
    for (const k of Object.keys(body)) {
      if (!CREATE_FOLDER_PROPS.has(k)) throw invalid(`The property '${k}' does not exist or cannot be set on type 'microsoft.graph.mailboxFolder'.`);
    }
    const name = body.displayName;
    if (name === undefined || name === null) throw invalid("The property 'displayName' is required.");
    if (typeof name !== "string") throw invalid("The property 'displayName' must be a string.");
    if (name.trim() === "") throw invalid("The property 'displayName' must not be empty.");
    if (name.length > MAX_FOLDER_NAME) throw invalid(`The property 'displayName' exceeds the maximum length of ${MAX_FOLDER_NAME} characters.`);
    let type = "IPF.Note";
    if (body.type !== undefined) {
      if (typeof body.type !== "string" || !FOLDER_CLASS.test(body.type)) {
        throw invalid(`The property 'type' must be a folder class such as 'IPF.Note', 'IPF.Appointment', 'IPF.Contact' or 'IPF.Task'.`);
      }
      type = body.type;
    }
    for (const k of ["singleValueExtendedProperties", "multiValueExtendedProperties"]) {
      if (body[k] !== undefined && !Array.isArray(body[k])) throw invalid(`The property '${k}' must be a collection.`);
    }
    const lower = name.toLowerCase();
    for (const c of parent.children) {
      if (mbx.folders.get(c)?.displayName.toLowerCase() === lower) {
        throw new GraphError(409, "ErrorFolderExists", "A folder with the specified name already exists.");
      }
    }
    const rec = this.model.addFolder(mbx, { parentFolderId: parent.id, displayName: name, type });
    ctx.res.setHeader("Location", `${this.mailboxPath(page, mbx)}/folders/${encodeURIComponent(rec.id)}`);
    await page.json({ "@odata.context": this.contextOf(page, mbx, "folders/$entity"), ...this.renderFolder(page, mbx, rec) }, 201);
  }

  /** POST …/createImportSession (no body). */
  private async createImportSession(page: Page, version: Version, mbx: MailboxState): Promise<void> {
    const s = this.importSessions.create(
      mbx.mailboxId,
      version,
      this.config.importSessionLifetimeMs,
      (token) => `${this.baseUrl()}/api/g${version}/Mailboxes('${encodeURIComponent(mbx.mailboxId)}')/importItem?authtoken=${token}`,
    );
    await page.json({
      "@odata.context": `${page.base}/$metadata#microsoft.graph.mailboxItemImportSession`,
      importUrl: s.importUrl,
      expirationDateTime: new Date(s.expiresAt).toISOString(),
    });
  }

  /** POST {importUrl}: one item, create or update. */
  private async importItem(ctx: RequestContext, page: Page, mbx: MailboxState): Promise<void> {
    this.requireJson(ctx);
    const raw = await this.readBody(ctx, this.config.maxImportBodyBytes);

    // Upload budget: every body that got this far is charged with its length.
    const waitMs = this.importPacer.tryCharge(mbx.mailboxId.toLowerCase(), raw.length, this.config.importBytesPerWindow, this.config.importWindowMs);
    if (waitMs !== null) {
      this.stats.importThrottled++;
      const secs = Math.max(1, Math.ceil(waitMs / 1000));
      throw new GraphError(
        429,
        "ApplicationThrottled",
        `Application is over its mailbox import upload limit (${this.config.importBytesPerWindow} bytes per ${Math.round(this.config.importWindowMs / 1000)} s). Retry after ${secs} s.`,
        { "Retry-After": String(secs) },
      );
    }

    const body = this.parseJsonObject(raw);
    const str = (k: string): string | undefined => {
      const v = body[k];
      if (v === undefined || v === null) return undefined;
      if (typeof v !== "string") throw invalid(`The property '${k}' must be a string.`);
      return v;
    };
    const folderId = str("FolderId");
    const modeRaw = str("Mode");
    const data = str("Data");
    const itemId = str("ItemId");
    const changeKey = str("ChangeKey");
    if (folderId === undefined || folderId === "") throw invalid("The property 'FolderId' is required.");
    if (modeRaw === undefined) throw invalid("The property 'Mode' is required ('create' or 'update').");
    const mode = modeRaw.toLowerCase();
    if (mode !== "create" && mode !== "update") throw invalid(`Invalid Mode '${modeRaw}': expected 'create' or 'update'.`);
    if (data === undefined || data === "") throw invalid("The property 'Data' is required.");
    if (mode === "create" && (itemId !== undefined || changeKey !== undefined)) {
      throw invalid("ItemId and ChangeKey must not be specified when Mode is 'create'.");
    }
    if (mode === "update" && (itemId === undefined || itemId === "" || changeKey === undefined || changeKey === "")) {
      throw invalid("ItemId and ChangeKey are required when Mode is 'update'.");
    }
    if (!isStrictBase64(data)) throw invalid("The property 'Data' is not a valid base64 string.");

    const folder = mbx.folders.get(folderId);
    if (!folder) {
      for (const other of this.model.mailboxes.values()) {
        if (other !== mbx && other.folders.has(folderId)) {
          throw new GraphError(409, "ErrorInvalidImportSession", `Invalid import session. The target session is expected in mailbox ${other.mailboxId}.`);
        }
      }
      throw new GraphError(404, "ErrorItemNotFound", "The specified folder could not be found in the store.");
    }
    let rec: ItemRec;
    const bytes = Buffer.from(data, "base64");
    if (mode === "update") {
      const cur = mbx.items.get(itemId as string);
      if (!cur || cur.folderId !== folder.id) throw new GraphError(404, "ErrorItemNotFound", NOT_FOUND_IN_STORE);
      if (cur.changeKey !== changeKey) {
        throw new GraphError(409, "ErrorIrresolvableConflict", "The change key passed in the request does not match the current change key for the item.");
      }
      rec = this.model.importUpdate(mbx, cur.id, bytes);
    } else {
      rec = this.model.importCreate(mbx, folder.id, bytes);
    }
    this.stats.importedItems++;
    this.stats.importedBytes += bytes.length;
    await page.json({
      "@odata.context": `${page.base}/$metadata#microsoft.graph.importMailboxItemResponse`,
      itemId: rec.id,
      changeKey: rec.changeKey,
    });
  }
}

function subscriptionMethods(op: "collection" | "item" | "reauthorize"): string[] {
  return op === "collection" ? ["GET", "POST"] : op === "item" ? ["GET", "PATCH", "DELETE"] : ["POST"];
}

/** 400 ErrorInvalidRequest */
function invalid(message: string): GraphError {
  return new GraphError(400, "ErrorInvalidRequest", message);
}

function userNotFound(id: string): GraphError {
  return new GraphError(404, "Request_ResourceNotFound", `Resource '${id}' does not exist or one of its queried reference-property objects are not present.`);
}

function projectWith(obj: Json, select: string[] | null, always: string[]): Json {
  if (!select) return obj;
  const out: Json = {};
  for (const [k, v] of Object.entries(obj)) {
    if (always.includes(k) || select.some((s) => s.toLowerCase() === k.toLowerCase())) out[k] = v;
  }
  return out;
}

/** Helpers for one GET request: query parsing, $select, paging, JSON out. */
class Page {
  constructor(
    readonly ctx: RequestContext,
    readonly url: URL,
    readonly base: string,
    private readonly route: RouteName,
    private readonly mailboxId: string | null,
    private readonly handler: GraphHandler,
  ) {}

  rejectUnsupported(): void {
    for (const k of ["$filter", "$search", "$orderby"]) {
      if (this.url.searchParams.has(k)) throw new GraphError(400, "BadRequest", `The query option '${k}' is not supported by the simulator.`);
    }
  }

  intParam(name: string, def: number, min: number, max: number): number {
    const v = this.url.searchParams.get(name);
    if (v === null) return def;
    if (!/^\d+$/.test(v)) throw new GraphError(400, "BadRequest", `Invalid value '${v}' for query option '${name}'.`);
    const n = Number(v);
    if (n < min) throw new GraphError(400, "BadRequest", `Invalid value '${v}' for query option '${name}'.`);
    return Math.min(n, max);
  }

  selectList(): string[] | null {
    const s = this.url.searchParams.get("$select");
    return s === null ? null : s.split(",").map((x) => x.trim()).filter((x) => x !== "");
  }

  project(obj: Json, always: string[]): Json {
    return projectWith(obj, this.selectList(), always);
  }

  /** `Prefer: odata.maxpagesize=N` (capped at 1000), or null. */
  preferMaxPageSize(): number | null {
    const h = this.ctx.req.headers.prefer;
    const all = Array.isArray(h) ? h.join(",") : (h ?? "");
    const m = /odata\.maxpagesize\s*=\s*"?(\d+)/i.exec(all);
    if (!m) return null;
    return Math.min(MAX_PAGE, Math.max(1, Number(m[1])));
  }

  /** The request URL (absolute) with some query parameters replaced. */
  link(set: Record<string, string>): string {
    const q = new URLSearchParams(this.url.searchParams);
    for (const [k, v] of Object.entries(set)) q.set(k, v);
    return `${this.base.slice(0, this.base.lastIndexOf("/"))}${this.url.pathname}?${q.toString()}`;
  }

  /** A `$top`/`$skip` paged collection response. */
  async paged<T>(context: string, all: T[], render: (t: T) => Json, always: string[] = ["id"]): Promise<void> {
    this.rejectUnsupported();
    const top = this.intParam("$top", DEFAULT_PAGE, 1, MAX_PAGE);
    const skip = this.intParam("$skip", 0, 0, Number.MAX_SAFE_INTEGER);
    const body: Json = { "@odata.context": context };
    if (this.url.searchParams.get("$count") === "true") body["@odata.count"] = all.length;
    body.value = all.slice(skip, skip + top).map((t) => this.project(render(t), always));
    if (skip + top < all.length) body["@odata.nextLink"] = this.link({ $skip: String(skip + top) });
    await this.json(body);
  }

  async json(body: Json, status = 200): Promise<void> {
    const res = this.ctx.res;
    const w = this.handler.bodyWriter(res, this.route, this.mailboxId);
    const buf = Buffer.from(JSON.stringify(body), "utf8");
    res.statusCode = status;
    res.setHeader("Content-Type", JSON_CONTENT_TYPE);
    if (w.plain) res.setHeader("Content-Length", buf.length);
    await w.write(buf);
    await w.end();
  }
}
