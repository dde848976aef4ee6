/**
 * ExchangeSimulator: a real HTTP server on 127.0.0.1 speaking the Microsoft Graph mailbox
 * import/export JSON shapes (users, exchange settings, folders, items, delta, exportItems, folder
 * creation, createImportSession and the POST to importUrl), with per-mailbox concurrency limits,
 * an import upload budget, latency, fault injection and stats. Item bytes are generated
 * deterministically from (mailboxId, itemId, changeKey) and never stored, except for versions
 * created by importItem, whose exact bytes are kept in memory.
 *
 * Point the product at it with GRAPH_ENDPOINT=sim.url, GRAPH_API_VERSION=v1.0 (or beta) and the
 * bearer token sim.token (see `sim.env()`).
 *
 * The same server speaks an EWS subset at `sim.ewsUrl` (`POST /EWS/Exchange.asmx`, see ews.ts and
 * README "EWS part") over the same model: a mailbox is reachable through Graph (MBX id) or EWS (its
 * SMTP address = UPN). `sim.ewsEnv()` gives MAILVAULT_EWS_URL and EWS_ACCESS_TOKEN.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { randomBytes, randomUUID } from "node:crypto";
import { contentSha256, type ContentKey } from "./content";
import { FaultPlan } from "./faults";
import { EWS_PATH, EwsHandler, type EwsConfig } from "./ews";
import { GraphHandler, type GraphConfig } from "./graph";
import type { ImportUsage, SimImportSession } from "./imports";
import { SimModel, type MailboxState, type SimFolder, type SimImportedItem, type SimItem, type SimMailbox, type SimUser } from "./model";
import { derivedGuid } from "./prng";
import { SimStats, type RouteName } from "./stats";
import type { LifecycleEventName, NotificationDelivery, SimSubscription, SubscriptionLogEntry } from "./subscriptions";

export { FaultPlan } from "./faults";
export type { ActiveFault, FaultFiring, FaultKind, FaultMatch, FaultRoute, FaultRule } from "./faults";
export { SimStats, EwsStats, EWS_OPERATIONS, EWS_ROUTE_NAMES } from "./stats";
export type { EwsOperation, EwsRequestLogEntry, EwsRouteName, EwsServerBusyEntry, RouteName } from "./stats";
export type { EwsConfig } from "./ews";
export { EWS_PATH, NS_MESSAGES, NS_SOAP, NS_TYPES, NS_ERRORS } from "./ews";
export type { SimFolder, SimImportedItem, SimItem, SimMailbox, SimUser, WellKnownName } from "./model";
export type { ImportUsage, SimImportSession } from "./imports";
export { WELL_KNOWN_FOLDERS } from "./model";
export { contentChunks, contentSha256, CONTENT_CHUNK } from "./content";
export type { ContentKey } from "./content";
export type { GraphConfig } from "./graph";
export type { LifecycleEventName, NotificationDelivery, SimSubscription, SubscriptionLogEntry } from "./subscriptions";

/** A CloudEvent as an Event Grid partner topic delivers Graph notifications (research/graph-api.md §8.5). */
export interface SimCloudEvent {
  id: string;
  type: string;
  source: string;
  subject: string;
  time: string;
  datacontenttype: "application/json";
  specversion: "1.0";
  data: Record<string, unknown>;
}

/** One change to announce: the item and the kind of change (default `updated`). */
export interface SimChange {
  itemId: string;
  changeType?: "created" | "updated" | "deleted";
}

/** The simulator's live settings: Graph's and EWS's. */
export type SimConfig = GraphConfig & EwsConfig;

export interface SimulatorOptions {
  /** Bearer token to accept (default: a random one). */
  token?: string;
  /** Tenant GUID used in mailbox ids (default: derived from `seed`). */
  tenantId?: string;
  /** Seed for the tenant id and the fault PRNG. Default 1. */
  seed?: number;
  /** Port on 127.0.0.1 (default 0: a free port). */
  port?: number;
  /** Requests in flight per mailbox before 429 ApplicationThrottled. Default 4. */
  maxConcurrentPerMailbox?: number;
  /** `Retry-After` seconds of concurrency 429s. Default 1. */
  concurrencyRetryAfterSeconds?: number;
  /** Latency added before each admitted response starts (ms, or per route). Default 0. */
  latencyMs?: number | ((route: RouteName) => number);
  /** Pace every response body to this many bytes/second. Default: unpaced. */
  bytesPerSecond?: number;
  /** Largest exportItems / create-folder request body (default 1 MiB; larger: 413). */
  maxRequestBodyBytes?: number;
  /** Most ids per exportItems call (default 20). */
  maxExportItems?: number;
  /** Lifetime of an import session's importUrl (default 1 hour). */
  importSessionLifetimeMs?: number;
  /** Largest importItem request body (default 200 MiB; larger: 413). */
  maxImportBodyBytes?: number;
  /** importItem upload budget per mailbox per window, in request-body bytes (default 150 MiB). */
  importBytesPerWindow?: number;
  /** The upload budget's sliding window (default 5 minutes). */
  importWindowMs?: number;
  /** Longest subscription lifetime accepted (default 4230 minutes, Outlook resources). */
  maxSubscriptionMinutes?: number;
  /** Active subscriptions per mailbox (default 1000). */
  maxSubscriptionsPerMailbox?: number;
  /** Subscriptions per GET /subscriptions page (default 100). */
  subscriptionPageSize?: number;
  /** Time a subscriber has to answer the validation handshake (default 10 s). */
  validationTimeoutMs?: number;
  /** Accept http notification URLs on loopback (default true; everything else must be https). */
  allowLoopbackHttp?: boolean;
  /** Handler errors (simulator bugs) go here; default console.error. */
  onError?: (err: unknown) => void;
  /** EWS Basic auth user name (default `svc-backup`). */
  ewsUsername?: string;
  /** EWS Basic auth password (default: a random one, `sim.ewsPassword`). */
  ewsPassword?: string;
  /** Impersonated EWS requests must carry X-AnchorMailbox = the impersonated address (default true). */
  ewsRequireAnchorMailbox?: boolean;
  /** Most ItemIds per EWS ExportItems call (default 100; more: HTTP 500 fault ErrorInvalidRequest). */
  ewsMaxExportItems?: number;
  /** Largest EWS request body (default 35 MiB; larger: 413). */
  ewsMaxRequestBodyBytes?: number;
  /** EWS requests in flight per acting mailbox before ErrorServerBusy (default 4). */
  ewsMaxConcurrentPerMailbox?: number;
  /** BackOffMilliseconds of concurrency ErrorServerBusy faults (default 1000). */
  ewsBackOffMs?: number;
  /** Wrap ExportItems base64 Data at 76 characters (default true). */
  ewsWrapBase64?: boolean;
  /** Offer and accept NTLM sign-in (user `ewsUsername` in domain `ewsNtlmDomain`). Default true. */
  ewsNtlm?: boolean;
  /** NTLM domain of the service account (default CONTOSO). */
  ewsNtlmDomain?: string;
}

export class ExchangeSimulator {
  /** `http://127.0.0.1:PORT` (no trailing slash). */
  readonly url: string;
  /** The bearer token the simulator accepts. */
  readonly token: string;
  /** Fault rules; add with `sim.faults.add({...})`. */
  readonly faults: FaultPlan;
  /** Counters; reset with `resetStats()`. */
  readonly stats: SimStats;
  /** Live settings (latency, concurrency, pacing, EWS limits...): may be changed between requests. */
  readonly config: SimConfig;
  /** The tenant GUID in every `MBX:<mailbox>@<tenant>` id. */
  readonly tenantId: string;

  private readonly model: SimModel;
  private readonly graph: GraphHandler;
  private readonly ews: EwsHandler;
  private readonly shaCache = new Map<string, string>();

  private constructor(
    private readonly server: Server,
    parts: { url: string; model: SimModel; faults: FaultPlan; stats: SimStats; config: SimConfig; graph: GraphHandler; ews: EwsHandler },
  ) {
    this.url = parts.url;
    this.token = parts.config.token;
    this.model = parts.model;
    this.tenantId = parts.model.tenantId;
    this.faults = parts.faults;
    this.stats = parts.stats;
    this.config = parts.config;
    this.graph = parts.graph;
    this.ews = parts.ews;
  }

  /** Starts a simulator listening on 127.0.0.1. */
  static async start(options: SimulatorOptions = {}): Promise<ExchangeSimulator> {
    const seed = options.seed ?? 1;
    const model = new SimModel(options.tenantId ?? derivedGuid("tenant", seed));
    const faults = new FaultPlan(seed);
    const stats = new SimStats();
    faults.onFire = (f) => {
      stats.faultsFired[f.kind] = (stats.faultsFired[f.kind] ?? 0) + 1;
    };
    const config: SimConfig = {
      token: options.token ?? randomBytes(24).toString("base64url"),
      maxConcurrentPerMailbox: options.maxConcurrentPerMailbox ?? 4,
      concurrencyRetryAfterSeconds: options.concurrencyRetryAfterSeconds ?? 1,
      latencyMs: options.latencyMs ?? 0,
      bytesPerSecond: options.bytesPerSecond,
      maxRequestBodyBytes: options.maxRequestBodyBytes ?? 1024 * 1024,
      maxExportItems: options.maxExportItems ?? 20,
      importSessionLifetimeMs: options.importSessionLifetimeMs ?? 60 * 60 * 1000,
      maxImportBodyBytes: options.maxImportBodyBytes ?? 200 * 1024 * 1024,
      importBytesPerWindow: options.importBytesPerWindow ?? 150 * 1024 * 1024,
      importWindowMs: options.importWindowMs ?? 5 * 60 * 1000,
      maxSubscriptionMinutes: options.maxSubscriptionMinutes ?? 4230,
      maxSubscriptionsPerMailbox: options.maxSubscriptionsPerMailbox ?? 1000,
      subscriptionPageSize: options.subscriptionPageSize ?? 100,
      validationTimeoutMs: options.validationTimeoutMs ?? 10_000,
      allowLoopbackHttp: options.allowLoopbackHttp ?? true,
      onError: options.onError ?? ((err) => console.error("ExchangeSimulator:", err)),
      ewsUsername: options.ewsUsername ?? "svc-backup",
      ewsPassword: options.ewsPassword ?? randomBytes(18).toString("base64url"),
      ewsRequireAnchorMailbox: options.ewsRequireAnchorMailbox ?? true,
      ewsMaxExportItems: options.ewsMaxExportItems ?? 100,
      ewsMaxRequestBodyBytes: options.ewsMaxRequestBodyBytes ?? 35 * 1024 * 1024,
      ewsMaxConcurrentPerMailbox: options.ewsMaxConcurrentPerMailbox ?? 4,
      ewsBackOffMs: options.ewsBackOffMs ?? 1000,
      ewsWrapBase64: options.ewsWrapBase64 ?? true,
      ewsNtlm: options.ewsNtlm ?? true,
      ewsNtlmDomain: options.ewsNtlmDomain ?? "CONTOSO",
    };
    let url = "";
    const graph = new GraphHandler(model, faults, stats, config, () => url);
    const ews = new EwsHandler(model, faults, stats, config);
    const server = createServer((req, res) => {
      if (EwsHandler.matches(req.url)) void ews.handle(req, res);
      else void graph.handle(req, res);
    });
    server.keepAliveTimeout = 30_000;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(options.port ?? 0, "127.0.0.1", () => {
        server.off("error", reject);
        resolve();
      });
    });
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    return new ExchangeSimulator(server, { url, model, faults, stats, config, graph, ews });
  }

  // ---- EWS -----------------------------------------------------------------------------------

  /** `${url}/EWS/Exchange.asmx` */
  get ewsUrl(): string {
    return `${this.url}${EWS_PATH}`;
  }

  /** Basic auth user name EWS accepts (`config.ewsUsername`). */
  get ewsUsername(): string {
    return this.config.ewsUsername;
  }

  /** Basic auth password EWS accepts (`config.ewsPassword`). */
  get ewsPassword(): string {
    return this.config.ewsPassword;
  }

  /** `Authorization` header value for EWS Basic auth with the configured credentials. */
  ewsBasicAuth(): string {
    return `Basic ${Buffer.from(`${this.config.ewsUsername}:${this.config.ewsPassword}`, "utf8").toString("base64")}`;
  }

  /** Environment for the product's EWS source: MAILVAULT_EWS_URL and EWS_ACCESS_TOKEN (the bearer token). */
  ewsEnv(): Record<"MAILVAULT_EWS_URL" | "EWS_ACCESS_TOKEN", string> {
    return { MAILVAULT_EWS_URL: this.ewsUrl, EWS_ACCESS_TOKEN: this.token };
  }

  /** A mailbox's GUID (EWS `MailboxGuid`, the guid part of its MBX id), by MBX id, UPN or user id. */
  mailboxGuid(idOrUpn: string): string {
    return this.mbx(idOrUpn).mailboxGuid;
  }

  /** The mailbox whose primary SMTP address (= UPN) is `address`, case-insensitive. */
  /** Gives the mailbox a secondary SMTP address (a proxy address), which EWS ResolveNames resolves to its primary one. */
  addEmailAlias(mailbox: string, alias: string): void {
    const m = this.mbx(mailbox);
    this.ews.aliases.set(alias.trim().toLowerCase(), m.upn.toLowerCase());
  }

  findMailboxBySmtp(address: string): SimMailbox | undefined {
    const m = this.ews.mailboxBySmtp(address);
    return m ? this.model.mailboxSnapshot(m) : undefined;
  }

  /** EWS requests currently in flight for a mailbox (acting mailbox). */
  ewsInFlight(mailboxId: string): number {
    return this.ews.inFlightOf(this.mbx(mailboxId).mailboxId);
  }

  /** Environment for the product: GRAPH_ENDPOINT, GRAPH_API_VERSION, GRAPH_ACCESS_TOKEN. */
  env(version: "v1.0" | "beta" = "v1.0"): Record<"GRAPH_ENDPOINT" | "GRAPH_API_VERSION" | "GRAPH_ACCESS_TOKEN", string> {
    return { GRAPH_ENDPOINT: this.url, GRAPH_API_VERSION: version, GRAPH_ACCESS_TOKEN: this.token };
  }

  /** `${url}/${version}/admin/exchange/mailboxes/${encoded mailboxId}` */
  mailboxUrl(mailboxId: string, version: "v1.0" | "beta" = "v1.0"): string {
    return `${this.url}/${version}/admin/exchange/mailboxes/${encodeURIComponent(this.mbx(mailboxId).mailboxId)}`;
  }

  // ---- tenant setup ------------------------------------------------------------------------

  /** A user without a mailbox (listed by /users with `mail: null`; settings/exchange gives 404). */
  addUser(spec: { upn: string; userId?: string; displayName?: string }): SimUser {
    return this.model.addUser(spec);
  }

  /** A user with a mailbox and the well-known folders (msgfolderroot, inbox, sentitems, drafts, deleteditems, archive). */
  addMailbox(spec: { upn: string; userId?: string; displayName?: string }): SimMailbox {
    return this.model.mailboxSnapshot(this.model.addMailbox(spec));
  }

  /** A user folder (default parent: msgfolderroot; well-known names work as parent ids). */
  addFolder(mailboxId: string, spec: { parentFolderId?: string; displayName: string; type?: string }): SimFolder {
    const m = this.mbx(mailboxId);
    return this.model.folderSnapshot(m, this.model.addFolder(m, spec));
  }

  /** An item of `size` bytes. An explicit `id` must be unique in the mailbox (case-sensitive). */
  addItem(mailboxId: string, folderId: string, spec: { size: number; id?: string; type?: string; createdDateTime?: string }): SimItem {
    const m = this.mbx(mailboxId);
    return this.model.itemSnapshot(m, this.model.addItem(m, folderId, spec));
  }

  /** A mailbox with nested folders and items spread over them; deterministic from (seed, upn). */
  generateMailbox(spec: {
    upn: string;
    folders: number;
    maxDepth?: number;
    items: number;
    seed?: number;
    size?: (i: number, rand: () => number) => number;
  }): SimMailbox {
    return this.model.mailboxSnapshot(this.model.generateMailbox(spec));
  }

  // ---- changes -------------------------------------------------------------------------------

  /** A new version of the item: new changeKey, new content (and optionally a new size). */
  modifyItem(mailboxId: string, itemId: string, spec?: { size?: number }): SimItem {
    const m = this.mbx(mailboxId);
    return this.model.itemSnapshot(m, this.model.modifyItem(m, itemId, spec));
  }

  /** Hard-deletes an item (item delta reports `@removed`). */
  deleteItem(mailboxId: string, itemId: string): void {
    const m = this.mbx(mailboxId);
    this.model.deleteItem(m, itemId);
  }

  /** Moves an item; it keeps its id and changeKey (the old folder's delta reports `@removed`). */
  moveItem(mailboxId: string, itemId: string, toFolderId: string): SimItem {
    const m = this.mbx(mailboxId);
    return this.model.itemSnapshot(m, this.model.moveItem(m, itemId, toFolderId));
  }

  renameFolder(mailboxId: string, folderId: string, displayName: string): void {
    this.model.renameFolder(this.mbx(mailboxId), folderId, displayName);
  }

  /** Moves a user folder (with its subtree) under another folder. */
  moveFolder(mailboxId: string, folderId: string, newParentFolderId: string): void {
    this.model.moveFolder(this.mbx(mailboxId), folderId, newParentFolderId);
  }

  /** Hard-deletes a user folder, its subfolders and their items. */
  deleteFolder(mailboxId: string, folderId: string): void {
    this.model.deleteFolder(this.mbx(mailboxId), folderId);
  }

  /** Every delta/skip token (Graph: 410 SyncStateNotFound) and EWS sync state (ErrorInvalidSyncStateData) issued so far for this mailbox becomes invalid. */
  invalidateDeltaTokens(mailboxId: string): void {
    this.mbx(mailboxId).epoch++;
  }

  // ---- inspection ----------------------------------------------------------------------------

  /** A mailbox by MBX id, UPN or user id (case-insensitive). */
  getMailbox(idOrUpn: string): SimMailbox | undefined {
    const m = this.model.findMailbox(idOrUpn);
    return m ? this.model.mailboxSnapshot(m) : undefined;
  }

  listMailboxes(): SimMailbox[] {
    return [...this.model.mailboxes.values()].map((m) => this.model.mailboxSnapshot(m));
  }

  listUsers(): SimUser[] {
    return [...this.model.users.values()];
  }

  /** A folder by id or well-known name. */
  getFolder(mailboxId: string, folderId: string): SimFolder | undefined {
    const m = this.mbx(mailboxId);
    const f = m.resolveFolder(folderId);
    return f ? this.model.folderSnapshot(m, f) : undefined;
  }

  /** All folders except the root, parents before children. */
  listFolders(mailboxId: string): SimFolder[] {
    const m = this.mbx(mailboxId);
    return this.model.folderTree(m).map((f) => this.model.folderSnapshot(m, f));
  }

  getItem(mailboxId: string, itemId: string): SimItem | undefined {
    const m = this.mbx(mailboxId);
    const i = m.items.get(itemId);
    return i ? this.model.itemSnapshot(m, i) : undefined;
  }

  /** Items of the mailbox (or of one folder), in creation order per folder. */
  listItems(mailboxId: string, folderId?: string): SimItem[] {
    const m = this.mbx(mailboxId);
    if (folderId === undefined) return [...m.items.values()].map((i) => this.model.itemSnapshot(m, i));
    const f = this.model.folder(m, folderId);
    const out: SimItem[] = [];
    for (const id of f.items) {
      const i = m.items.get(id);
      if (i) out.push(this.model.itemSnapshot(m, i));
    }
    return out;
  }

  /** The current version's exact bytes (imported bytes for imported versions), streamed in chunks (64 KiB by default). */
  async *itemContent(mailboxId: string, itemId: string, chunkSize: number = 64 * 1024): AsyncIterable<Buffer> {
    const m = this.mbx(mailboxId);
    const rec = this.model.item(m, itemId);
    for (const chunk of this.model.itemChunks(m, rec, chunkSize)) yield chunk;
  }

  /** sha256 (lowercase hex) of the current version's bytes (computed by streaming, cached). */
  itemSha256(mailboxId: string, itemId: string): string {
    return this.sha256Of(this.contentKey(mailboxId, itemId));
  }

  /** sha256 of any version (e.g. one recorded before a modifyItem), imported versions included. */
  sha256Of(key: ContentKey): string {
    const imported = this.model.findMailbox(key.mailboxId)?.importedShas.get(`${key.itemId}\0${key.changeKey}`);
    if (imported !== undefined) return imported;
    const k = `${key.mailboxId}\0${key.itemId}\0${key.changeKey}\0${key.size}`;
    let h = this.shaCache.get(k);
    if (h === undefined) {
      h = contentSha256(key);
      this.shaCache.set(k, h);
    }
    return h;
  }

  /** The content key (mailboxId, itemId, changeKey, size) of the item's current version. */
  contentKey(mailboxId: string, itemId: string): ContentKey {
    const m = this.mbx(mailboxId);
    const i = this.model.item(m, itemId);
    return { mailboxId: m.mailboxId, itemId: i.id, changeKey: i.changeKey, size: i.size };
  }

  // ---- import ------------------------------------------------------------------------------

  /** Successful imports into the mailbox (Graph importItem and EWS UploadItems, `via`), in call order. */
  importedItems(mailboxId: string): SimImportedItem[] {
    return [...this.mbx(mailboxId).importLog];
  }

  /** Import sessions created for the mailbox (expired ones included, flagged). */
  importSessions(mailboxId: string): SimImportSession[] {
    return this.graph.importSessions.list(this.mbx(mailboxId).mailboxId);
  }

  /** Expires every current import session of the mailbox (their importUrls now get 401); returns how many. */
  expireImportSessions(mailboxId: string): number {
    return this.graph.importSessions.expireAll(this.mbx(mailboxId).mailboxId);
  }

  /** Request-body bytes charged against the mailbox's import upload budget in the current window. */
  importUsage(mailboxId: string): ImportUsage {
    const m = this.mbx(mailboxId);
    return {
      bytesInWindow: this.graph.importPacer.used(m.mailboxId.toLowerCase(), this.config.importWindowMs),
      budgetBytes: this.config.importBytesPerWindow,
      windowMs: this.config.importWindowMs,
    };
  }

  /** Forgets the upload budget usage of one mailbox (or of all). */
  resetImportPacing(mailboxId?: string): void {
    this.graph.importPacer.reset(mailboxId === undefined ? undefined : this.mbx(mailboxId).mailboxId.toLowerCase());
  }

  // ---- change notifications ------------------------------------------------------------------

  /** Active subscriptions (expired ones are gone, as in Graph), with their clientState. */
  listSubscriptions(): SimSubscription[] {
    return this.graph.subscriptions.snapshots();
  }

  getSubscription(id: string): SimSubscription | undefined {
    return this.graph.subscriptions.find(id);
  }

  /** Every create, renew (PATCH), delete, reauthorize, removal and expiry, in order. */
  get subscriptionLog(): readonly SubscriptionLogEntry[] {
    return this.graph.subscriptions.log;
  }

  /** Every POST made to a subscriber: validation handshakes and notifications, with status and time taken. */
  get notificationDeliveries(): readonly NotificationDelivery[] {
    return this.graph.subscriptions.deliveries;
  }

  /** Graph removing a subscription on its own, without a notification (see also sendLifecycleNotification). */
  dropSubscription(id: string): SimSubscription {
    return this.graph.subscriptions.drop(id);
  }

  /** Moves a subscription's expiry (renewal tests). */
  setSubscriptionExpiration(id: string, at: Date): SimSubscription {
    return this.graph.subscriptions.setExpiration(id, at);
  }

  /**
   * Sends change notifications for the mailbox's items to every webhook subscription of its user,
   * `batchSize` per POST (default 50), one POST after another, like Graph. `clientState` replaces the
   * subscription's (a forged one). Returns the deliveries (status and milliseconds each).
   */
  async notifyChanges(mailbox: string, changes: readonly SimChange[], options: { batchSize?: number; clientState?: string | null } = {}): Promise<NotificationDelivery[]> {
    const m = this.mbx(mailbox);
    const user = this.model.findUser(m.userId) as SimUser;
    const out: NotificationDelivery[] = [];
    const batch = Math.max(1, options.batchSize ?? 50);
    for (const s of this.graph.subscriptions.forUser(user)) {
      if (s.channel !== "webhook") continue;
      for (let i = 0; i < changes.length; i += batch) {
        const value = changes.slice(i, i + batch).map((c) => this.graph.subscriptions.changeNotification(s, this.tenantId, { itemId: c.itemId, changeType: c.changeType ?? "updated", changeKey: m.items.get(c.itemId)?.changeKey }, options.clientState));
        out.push(await this.graph.subscriptions.deliver("change", s.notificationUrl, value, s.id));
      }
    }
    return out;
  }

  /**
   * Sends a lifecycle notification of a subscription to its lifecycleNotificationUrl. For
   * `subscriptionRemoved` the subscription is removed first, as Graph does.
   */
  async sendLifecycleNotification(subscriptionId: string, event: LifecycleEventName, options: { clientState?: string | null } = {}): Promise<NotificationDelivery> {
    const subs = this.graph.subscriptions;
    const s = subs.find(subscriptionId);
    if (!s) throw new Error(`simulator: no subscription ${subscriptionId}`);
    if (!s.lifecycleNotificationUrl) throw new Error(`simulator: subscription ${subscriptionId} has no lifecycleNotificationUrl`);
    if (s.channel !== "webhook") throw new Error(`simulator: subscription ${subscriptionId} delivers through ${s.channel}; use eventGridLifecycleEvent`);
    if (event === "subscriptionRemoved") subs.drop(subscriptionId);
    return subs.deliver("lifecycle", s.lifecycleNotificationUrl, [subs.lifecycleNotification(s, this.tenantId, event, options.clientState)], s.id);
  }

  /**
   * The CloudEvents an Event Grid partner topic would deliver for these changes, one per change per
   * Event Grid subscription of the mailbox's user (Outlook casing in `data`, as in the Event Grid docs).
   */
  eventGridEvents(mailbox: string, changes: readonly SimChange[], options: { clientState?: string | null } = {}): SimCloudEvent[] {
    const m = this.mbx(mailbox);
    const user = this.model.findUser(m.userId) as SimUser;
    const out: SimCloudEvent[] = [];
    for (const s of this.graph.subscriptions.forUser(user)) {
      if (s.channel !== "eventGrid") continue;
      for (const c of changes) {
        const changeType = c.changeType ?? "updated";
        const resource = `https://outlook.office365.com/api/beta/Users('${s.userId}@${this.tenantId}')/Messages('${c.itemId}')`;
        const changeKey = m.items.get(c.itemId)?.changeKey;
        out.push({
          ...this.cloudEventBase(`Microsoft.Graph.Message${changeType[0].toUpperCase()}${changeType.slice(1)}`, `Messages/${c.itemId}`),
          data: {
            "@odata.type": "#Microsoft.OutlookServices.Notification",
            Id: null,
            SubscriptionExpirationDateTime: s.expirationDateTime,
            ChangeType: changeType,
            subscriptionId: s.id,
            resource,
            clientState: options.clientState === undefined ? s.clientState : options.clientState,
            resourceData: { Id: c.itemId, ...(changeKey ? { "@odata.etag": `W/"${changeKey}"` } : {}), "@odata.id": resource, "@odata.type": "#Microsoft.OutlookServices.Message" },
          },
        });
      }
    }
    return out;
  }

  /** The CloudEvent of a lifecycle notification through Event Grid (`Microsoft.Graph.Subscription<Event>`). */
  eventGridLifecycleEvent(subscriptionId: string, event: LifecycleEventName, options: { clientState?: string | null } = {}): SimCloudEvent {
    const subs = this.graph.subscriptions;
    const s = subs.find(subscriptionId);
    if (!s) throw new Error(`simulator: no subscription ${subscriptionId}`);
    if (event === "subscriptionRemoved") subs.drop(subscriptionId);
    const suffix = event === "reauthorizationRequired" ? "ReauthorizationRequired" : event === "subscriptionRemoved" ? "Removed" : "Missed";
    return {
      ...this.cloudEventBase(`Microsoft.Graph.Subscription${suffix}`, `Subscriptions/${s.id}`),
      data: { subscriptionId: s.id, SubscriptionExpirationDateTime: s.expirationDateTime, tenantId: this.tenantId, clientState: options.clientState === undefined ? s.clientState : options.clientState, lifecycleEvent: event },
    };
  }

  private cloudEventBase(type: string, subject: string): Omit<SimCloudEvent, "data"> {
    return { id: randomUUID(), type, source: `/tenants/${this.tenantId}/applications/00000000-0000-0000-0000-00000000a11c`, subject, time: new Date().toISOString(), datacontenttype: "application/json", specversion: "1.0" };
  }

  /** Requests currently in flight for a mailbox. */
  inFlight(mailboxId: string): number {
    return this.graph.inFlightOf(this.mbx(mailboxId).mailboxId);
  }

  resetStats(): void {
    this.stats.reset();
  }

  /** Drops every open connection (clients see their kept-alive sockets closed), and keeps serving. */
  dropConnections(): void {
    this.server.closeAllConnections();
  }

  /** Stops listening and drops every open connection. */
  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private mbx(idOrUpn: string): MailboxState {
    return this.model.mailbox(idOrUpn);
  }
}
