/**
 * Graph change-notification subscriptions for the simulator: `POST/GET/PATCH/DELETE /subscriptions`
 * with Graph's validation (including the notificationUrl validation handshake), and the delivery of
 * change and lifecycle notifications to the subscribers (webhook POSTs, or Event Grid CloudEvents
 * handed to the test). Shapes follow research/graph-api.md §8.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { GraphError } from "./http";
import type { SimModel, SimUser } from "./model";

export type LifecycleEventName = "reauthorizationRequired" | "subscriptionRemoved" | "missed";

/** A subscription as the simulator keeps it (`sim.listSubscriptions()` shows clientState; Graph's GET does not). */
export interface SimSubscription {
  readonly id: string;
  readonly resource: string;
  readonly changeType: string;
  readonly notificationUrl: string;
  readonly lifecycleNotificationUrl: string | null;
  readonly clientState: string | null;
  readonly expirationDateTime: string;
  readonly createdDateTime: string;
  /** The user the resource names. */
  readonly userId: string;
  readonly channel: "webhook" | "eventGrid" | "eventHub";
}

/** Every subscription operation, in order (`sim.subscriptionLog`). */
export interface SubscriptionLogEntry {
  readonly op: "create" | "renew" | "delete" | "reauthorize" | "removed" | "expired";
  readonly id: string;
  readonly at: string;
  readonly userId: string;
  readonly expirationDateTime?: string;
}

/** One POST the simulator made to a subscriber (validation handshakes and notifications). */
export interface NotificationDelivery {
  readonly kind: "validation" | "change" | "lifecycle";
  readonly subscriptionId?: string;
  /** Origin and path of the URL (the query, which may carry a function key, is left out). */
  readonly target: string;
  readonly status: number;
  readonly ms: number;
  /** Notifications in the POST. */
  readonly count: number;
  /** The response body of a validation POST. */
  readonly body?: string;
  readonly contentType?: string | null;
}

export interface SubscriptionConfig {
  /** Longest lifetime accepted for Outlook resources (default 4230 minutes). */
  maxSubscriptionMinutes: number;
  /** Active subscriptions per mailbox (default 1000, Graph's limit across apps). */
  maxSubscriptionsPerMailbox: number;
  /** Subscriptions per `GET /subscriptions` page (default 100). */
  subscriptionPageSize: number;
  /** Time allowed for a validation answer (default 10 s, as Graph). */
  validationTimeoutMs: number;
  /** Accept http notificationUrls on loopback (default true; Graph accepts https only). */
  allowLoopbackHttp: boolean;
}

interface SubRec {
  id: string;
  resource: string;
  changeType: string;
  notificationUrl: string;
  lifecycleNotificationUrl: string | null;
  clientState: string | null;
  expiresAt: number;
  createdAt: number;
  userId: string;
  channel: SimSubscription["channel"];
}

type Json = Record<string, unknown>;

const CREATE_PROPS = new Set([
  "changeType",
  "notificationUrl",
  "lifecycleNotificationUrl",
  "resource",
  "expirationDateTime",
  "clientState",
  "includeResourceData",
  "encryptionCertificate",
  "encryptionCertificateId",
  "latestSupportedTlsVersion",
  "notificationUrlAppId",
  "notificationQueryOptions",
  "@odata.type",
]);
const CHANGE_TYPES = new Set(["created", "updated", "deleted"]);
const MIN_LIFETIME_MS = 45 * 60_000;
/** `/users/{id}/messages`, `/users/{id}/mailFolders/{id}/messages`, `/users/{id}/events|contacts` (leading slash optional). */
const RESOURCE = /^\/?users\/([^/]+)\/(?:messages|events|contacts|mailFolders\/[^/]+\/messages|contactFolders\/[^/]+\/contacts)$/i;
const APPLICATION_ID = "00000000-0000-0000-0000-00000000a11c";

function invalid(message: string, code = "InvalidRequest"): GraphError {
  return new GraphError(400, code, message);
}

/** Outlook forwards its own validation errors wrapped like this. */
function extension(message: string): GraphError {
  return new GraphError(400, "ExtensionError", `Operation: Create; Exception: [Status Code: BadRequest; Reason: ${message}]`);
}

export class SubscriptionService {
  private readonly subs = new Map<string, SubRec>();
  readonly log: SubscriptionLogEntry[] = [];
  readonly deliveries: NotificationDelivery[] = [];

  constructor(
    private readonly model: SimModel,
    readonly config: SubscriptionConfig,
  ) {}

  // ---- Graph routes ------------------------------------------------------------------------

  async create(body: Json, tenantId: string): Promise<Json> {
    for (const k of Object.keys(body)) {
      if (!CREATE_PROPS.has(k)) throw invalid(`Property '${k}' does not exist on type 'microsoft.graph.subscription'.`, "BadRequest");
    }
    const str = (k: string, required: boolean): string | undefined => {
      const v = body[k];
      if (v === undefined || v === null) {
        if (required) throw invalid(`The property '${k}' is required.`);
        return undefined;
      }
      if (typeof v !== "string") throw invalid(`The property '${k}' must be a string.`);
      return v;
    };
    const changeType = str("changeType", true) as string;
    const parts = changeType.split(",").map((s) => s.trim());
    if (parts.length === 0 || parts.some((p) => !CHANGE_TYPES.has(p)) || new Set(parts).size !== parts.length) {
      throw invalid(`Invalid changeType '${changeType}': a comma-separated list of created, updated, deleted.`);
    }
    const notificationUrl = str("notificationUrl", true) as string;
    const channel = this.checkUrl(notificationUrl, "notificationUrl");
    const lifecycleNotificationUrl = str("lifecycleNotificationUrl", false) ?? null;
    if (lifecycleNotificationUrl !== null) {
      const lc = this.checkUrl(lifecycleNotificationUrl, "lifecycleNotificationUrl");
      if ((lc === "eventGrid" || channel === "eventGrid") && lifecycleNotificationUrl !== notificationUrl) {
        throw invalid("With Event Grid delivery, lifecycleNotificationUrl must be the same EventGrid: URL as notificationUrl.");
      }
    }
    const resource = str("resource", true) as string;
    const m = RESOURCE.exec(resource);
    if (!m) throw invalid(`Unsupported resource '${resource}'. Use /users/{id}/messages (or mailFolders/{id}/messages, events, contacts).`);
    let userRef = m[1];
    try {
      userRef = decodeURIComponent(userRef);
    } catch {
      throw invalid("Invalid URL encoding in resource.");
    }
    const user = this.model.findUser(userRef);
    if (!user) throw new GraphError(404, "ResourceNotFound", `Resource '${userRef}' does not exist.`);
    if (!user.mailboxId) throw new GraphError(404, "MailboxNotEnabledForRESTAPI", "The mailbox is either inactive, soft-deleted, or is hosted on-premise.");
    const expiresAt = this.checkExpiration(str("expirationDateTime", true) as string);
    const clientState = str("clientState", false) ?? null;
    if (clientState !== null && clientState.length > 128) throw invalid("clientState has a maximum length of 128 characters.");
    if (body.includeResourceData === true && typeof body.encryptionCertificate !== "string") {
      throw invalid("An encryptionCertificate is required when includeResourceData is true.");
    }
    if (this.activeFor(user.id).length >= this.config.maxSubscriptionsPerMailbox) {
      throw new GraphError(403, "ExtensionError", "Operation: Create; Exception: [Status Code: Forbidden; Reason: The maximum number of subscriptions for this mailbox has been reached.]");
    }
    // The handshake: Graph validates each webhook URL before it creates anything.
    if (channel === "webhook") {
      await this.validate(notificationUrl);
      if (lifecycleNotificationUrl !== null && lifecycleNotificationUrl !== notificationUrl) await this.validate(lifecycleNotificationUrl);
    }
    const rec: SubRec = { id: randomUUID(), resource, changeType, notificationUrl, lifecycleNotificationUrl, clientState, expiresAt, createdAt: Date.now(), userId: user.id, channel };
    this.subs.set(rec.id, rec);
    this.record("create", rec);
    return { "@odata.context": "", ...this.render(rec, true), applicationId: APPLICATION_ID, creatorId: APPLICATION_ID, tenantId };
  }

  renew(id: string, body: Json): Json {
    const rec = this.live(id);
    for (const k of Object.keys(body)) {
      if (k !== "expirationDateTime" && k !== "@odata.type") throw invalid(`Property '${k}' cannot be updated; only expirationDateTime can.`, "BadRequest");
    }
    if (typeof body.expirationDateTime !== "string") throw invalid("The property 'expirationDateTime' is required.");
    rec.expiresAt = this.checkExpiration(body.expirationDateTime);
    this.record("renew", rec);
    return this.render(rec, false);
  }

  remove(id: string): void {
    const rec = this.live(id);
    this.subs.delete(rec.id);
    this.record("delete", rec);
  }

  reauthorize(id: string): void {
    this.record("reauthorize", this.live(id));
  }

  get(id: string): Json {
    return this.render(this.live(id), false);
  }

  /** Active subscriptions in creation order, rendered as GET /subscriptions does. */
  list(): Json[] {
    return this.active().map((r) => this.render(r, false));
  }

  // ---- test API ----------------------------------------------------------------------------

  snapshots(): SimSubscription[] {
    return this.active().map((r) => this.snapshot(r));
  }

  setExpiration(id: string, at: Date): SimSubscription {
    const rec = this.subs.get(id);
    if (!rec) throw new Error(`simulator: no subscription ${id}`);
    rec.expiresAt = at.getTime();
    return this.snapshot(rec);
  }

  /** Graph removing a subscription on its own (before a subscriptionRemoved notification). */
  drop(id: string): SimSubscription {
    const rec = this.subs.get(id);
    if (!rec) throw new Error(`simulator: no subscription ${id}`);
    this.subs.delete(id);
    this.record("removed", rec);
    return this.snapshot(rec);
  }

  find(id: string): SimSubscription | undefined {
    const r = this.subs.get(id);
    return r ? this.snapshot(r) : undefined;
  }

  forUser(user: SimUser): SimSubscription[] {
    return this.activeFor(user.id).map((r) => this.snapshot(r));
  }

  /** A change notification as Graph's webhook sends it. */
  changeNotification(s: SimSubscription, tenantId: string, change: { itemId: string; changeType: string; changeKey?: string }, clientState?: string | null): Json {
    const resource = `Users/${s.userId}/Messages/${change.itemId}`;
    return {
      subscriptionId: s.id,
      subscriptionExpirationDateTime: s.expirationDateTime,
      changeType: change.changeType,
      resource,
      resourceData: {
        "@odata.type": "#Microsoft.Graph.Message",
        "@odata.id": resource,
        ...(change.changeKey ? { "@odata.etag": `W/"${change.changeKey}"` } : {}),
        id: change.itemId,
      },
      clientState: clientState === undefined ? s.clientState : clientState,
      tenantId,
    };
  }

  lifecycleNotification(s: SimSubscription, tenantId: string, event: LifecycleEventName, clientState?: string | null): Json {
    return {
      subscriptionId: s.id,
      subscriptionExpirationDateTime: s.expirationDateTime,
      tenantId,
      clientState: clientState === undefined ? s.clientState : clientState,
      lifecycleEvent: event,
    };
  }

  /** POSTs a notification collection to a subscriber and records the delivery. */
  async deliver(kind: "change" | "lifecycle", url: string, value: Json[], subscriptionId: string): Promise<NotificationDelivery> {
    const started = Date.now();
    let status = 0;
    try {
      const res = await fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json; charset=utf-8" },
        body: JSON.stringify({ value }),
        signal: AbortSignal.timeout(30_000),
      });
      status = res.status;
      await res.arrayBuffer();
    } catch {
      status = 0;
    }
    const d: NotificationDelivery = { kind, subscriptionId, target: targetOf(url), status, ms: Date.now() - started, count: value.length };
    this.deliveries.push(d);
    return d;
  }

  // ---- internals ---------------------------------------------------------------------------

  private checkUrl(url: string, name: string): SimSubscription["channel"] {
    if (/^EventGrid:/i.test(url)) {
      const q = new URLSearchParams(url.includes("?") ? url.slice(url.indexOf("?") + 1) : "");
      for (const p of ["azuresubscriptionid", "resourcegroup", "partnertopic", "location"]) {
        if (!q.get(p)) throw invalid(`${name}: an EventGrid: URL needs the '${p}' parameter.`);
      }
      return "eventGrid";
    }
    if (/^EventHub:https:\/\//i.test(url)) return "eventHub";
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw invalid(`${name} is not a valid URL.`);
    }
    const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(u.hostname);
    if (u.protocol !== "https:" && !(u.protocol === "http:" && loopback && this.config.allowLoopbackHttp)) {
      throw invalid(`${name} must use the HTTPS protocol.`);
    }
    return "webhook";
  }

  private checkExpiration(value: string): number {
    const at = Date.parse(value);
    if (!/^\d{4}-\d{2}-\d{2}T/.test(value) || !Number.isFinite(at)) throw invalid(`Invalid expirationDateTime '${value}'.`);
    const now = Date.now();
    if (at <= now) throw extension("Subscription expiration must be in the future.");
    if (at - now > this.config.maxSubscriptionMinutes * 60_000 + 60_000) {
      throw extension(`Subscription expiration can only be ${this.config.maxSubscriptionMinutes} minutes in the future.`);
    }
    // Values under 45 minutes are raised to 45 minutes.
    return Math.max(at, now + MIN_LIFETIME_MS);
  }

  /** The handshake: POST url?validationToken=<token>; 200, text/plain and exactly the decoded token within the timeout. */
  private async validate(url: string): Promise<void> {
    // Spaces, '+', '&' and '<' make sure the subscriber decodes the token and echoes it as it is.
    const token = `Validation: Testing client application reachability for subscription Request-Id: ${randomUUID()} +&<${randomBytes(6).toString("base64url")}>`;
    const target = `${url}${url.includes("?") ? "&" : "?"}validationToken=${encodeURIComponent(token)}`;
    const started = Date.now();
    let status = 0;
    let body: string | undefined;
    let contentType: string | null = null;
    try {
      const res = await fetch(target, { method: "POST", headers: { "content-type": "text/plain; charset=utf-8" }, body: "", signal: AbortSignal.timeout(this.config.validationTimeoutMs) });
      status = res.status;
      contentType = res.headers.get("content-type");
      body = await res.text();
    } catch {
      status = 0;
    }
    this.deliveries.push({ kind: "validation", target: targetOf(url), status, ms: Date.now() - started, count: 0, body, contentType });
    if (status !== 200 || body !== token || !/^text\/plain\b/i.test(contentType ?? "")) {
      throw invalid("Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.", "ValidationError");
    }
  }

  private live(id: string): SubRec {
    const rec = this.subs.get(id);
    if (!rec) throw new GraphError(404, "ResourceNotFound", `The object '${id}' was not found.`);
    if (rec.expiresAt <= Date.now()) {
      this.subs.delete(id);
      this.record("expired", rec);
      throw new GraphError(404, "ResourceNotFound", `The object '${id}' was not found.`);
    }
    return rec;
  }

  private active(): SubRec[] {
    const now = Date.now();
    for (const r of [...this.subs.values()]) {
      if (r.expiresAt <= now) {
        this.subs.delete(r.id);
        this.record("expired", r);
      }
    }
    return [...this.subs.values()];
  }

  private activeFor(userId: string): SubRec[] {
    return this.active().filter((r) => r.userId.toLowerCase() === userId.toLowerCase());
  }

  private record(op: SubscriptionLogEntry["op"], rec: SubRec): void {
    this.log.push({ op, id: rec.id, at: new Date().toISOString(), userId: rec.userId, expirationDateTime: new Date(rec.expiresAt).toISOString() });
  }

  /** Graph's JSON; clientState only in the create response. */
  private render(rec: SubRec, withClientState: boolean): Json {
    return {
      id: rec.id,
      resource: rec.resource,
      applicationId: APPLICATION_ID,
      changeType: rec.changeType,
      clientState: withClientState ? rec.clientState : null,
      notificationUrl: rec.notificationUrl,
      lifecycleNotificationUrl: rec.lifecycleNotificationUrl,
      expirationDateTime: new Date(rec.expiresAt).toISOString(),
      creatorId: APPLICATION_ID,
      includeResourceData: false,
      latestSupportedTlsVersion: "v1_2",
      encryptionCertificate: null,
      encryptionCertificateId: null,
      notificationUrlAppId: null,
    };
  }

  private snapshot(r: SubRec): SimSubscription {
    return {
      id: r.id,
      resource: r.resource,
      changeType: r.changeType,
      notificationUrl: r.notificationUrl,
      lifecycleNotificationUrl: r.lifecycleNotificationUrl,
      clientState: r.clientState,
      expirationDateTime: new Date(r.expiresAt).toISOString(),
      createdDateTime: new Date(r.createdAt).toISOString(),
      userId: r.userId,
      channel: r.channel,
    };
  }
}

function targetOf(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}`;
  } catch {
    return "[url]";
  }
}

/** A page token for GET /subscriptions. */
export function subscriptionSkipToken(offset: number): string {
  return Buffer.from(`s${offset}`, "latin1").toString("base64url");
}

export function parseSubscriptionSkipToken(token: string): number | undefined {
  const m = /^s(\d+)$/.exec(Buffer.from(token, "base64url").toString("latin1"));
  return m ? Number(m[1]) : undefined;
}
