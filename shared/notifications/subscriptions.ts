import { describeError, GraphError } from "../errors";
import type { GraphSubscription, MailboxApi } from "../graph/mailboxApi";
import type { Logger } from "../log";
import type { Services } from "../services";
import type { ItemStore } from "../store/itemStore";
import { FORMAT_VERSION } from "../store/naming";
import { configFingerprint, type NotificationChannel, type NotificationConfig } from "./settings";

/**
 * Change-notification subscriptions of the configured mailboxes (research/graph-api.md §8.1):
 * one subscription per user on `/users/{id}/messages` (changeType created,updated,deleted), with
 * the same URL for change and lifecycle notifications. Graph is the truth about which
 * subscriptions exist; `state/subscriptions.json` keeps, per user, the subscription id, its expiry
 * and the configured name, so that lifecycle notifications (which name only a subscription id)
 * can be mapped back to a mailbox.
 */

export const SUBSCRIPTIONS_PATH = "state/subscriptions.json";
export const CHANGE_TYPES = "created,updated,deleted";
/**
 * Requested lifetime. Microsoft's stored docs give 4,230 minutes (under 3 days) as the maximum for
 * Outlook messages; newer secondary sources say 10,080 (7 days). The safer value, minus 30 minutes
 * for clock skew, is used; a renewal every 6 hours of those expiring within 12 hours keeps it alive.
 */
export const SUBSCRIPTION_LIFETIME_MINUTES = 4200;
/** Subscriptions expiring within this window are renewed by the sync. */
export const RENEW_WINDOW_MS = 12 * 3600_000;
/** Graph calls the sync makes at once. */
const SYNC_CONCURRENCY = 8;
/** Entries kept per list in a sync report (counts are always complete). */
const REPORT_LIMIT = 100;

export interface SubscriptionRecord {
  /** Graph user id (as Graph returned it). */
  user: string;
  /** The name the configuration used (UPN or user id), used as the backup's mailbox name. */
  mailbox: string;
  subscriptionId: string;
  resource: string;
  channel: NotificationChannel;
  expirationDateTime: string;
  /** configFingerprint() of the URL and clientState the subscription was made with. */
  fingerprint: string;
  createdAt: string;
  renewedAt?: string;
  updatedAt: string;
}

export interface SubscriptionsDoc {
  formatVersion: number;
  updatedAt: string;
  /** By lowercased user id. */
  subscriptions: Record<string, SubscriptionRecord>;
}

export const userKey = (user: string): string => user.toLowerCase();

export async function readSubscriptions(store: ItemStore): Promise<SubscriptionsDoc> {
  const text = await store.readText(SUBSCRIPTIONS_PATH);
  if (!text) return { formatVersion: FORMAT_VERSION, updatedAt: new Date(0).toISOString(), subscriptions: {} };
  const doc = JSON.parse(text) as SubscriptionsDoc;
  return { formatVersion: doc.formatVersion ?? FORMAT_VERSION, updatedAt: doc.updatedAt, subscriptions: doc.subscriptions ?? {} };
}

// Writers in this process take turns; writers in other processes (another instance of the app) are
// reconciled per record: see `commit`.
let writeChain: Promise<unknown> = Promise.resolve();

/**
 * Read-modify-write of the document. `mutate` gets the current document and changes records in
 * place. Serialized within the process; across processes the window is one read and one write.
 */
export async function updateSubscriptions(store: ItemStore, mutate: (doc: SubscriptionsDoc) => void): Promise<SubscriptionsDoc> {
  const run = writeChain.then(async () => {
    const doc = await readSubscriptions(store);
    mutate(doc);
    doc.updatedAt = new Date().toISOString();
    await store.writeText(SUBSCRIPTIONS_PATH, JSON.stringify(doc, null, 2));
    return doc;
  });
  writeChain = run.catch(() => undefined);
  return run;
}

export function findBySubscriptionId(doc: SubscriptionsDoc, subscriptionId: string): SubscriptionRecord | undefined {
  return Object.values(doc.subscriptions).find((r) => r.subscriptionId === subscriptionId);
}

export function expiryFrom(now: Date, minutes = SUBSCRIPTION_LIFETIME_MINUTES): string {
  return new Date(now.getTime() + minutes * 60_000).toISOString();
}

export function subscriptionResource(userId: string): string {
  return `/users/${encodeURIComponent(userId)}/messages`;
}

async function createFor(api: MailboxApi, config: NotificationConfig, user: { id: string; mailbox: string }, now: Date): Promise<SubscriptionRecord> {
  const resource = subscriptionResource(user.id);
  const s = await api.createSubscription({
    resource,
    changeType: CHANGE_TYPES,
    notificationUrl: config.notificationUrl,
    // Lifecycle notifications (reauthorizationRequired, subscriptionRemoved, missed) go to the same endpoint.
    lifecycleNotificationUrl: config.notificationUrl,
    expirationDateTime: expiryFrom(now),
    clientState: config.clientState,
  });
  const at = now.toISOString();
  return { user: user.id, mailbox: user.mailbox, subscriptionId: s.id, resource, channel: config.channel, expirationDateTime: s.expirationDateTime, fingerprint: configFingerprint(config), createdAt: at, updatedAt: at };
}

// ------------------------------------------------------------------------------------------------
// Sync: create, renew, delete
// ------------------------------------------------------------------------------------------------

export interface SyncInput {
  /** `*` or the configured names (MAILVAULT_MAILBOXES). */
  mailboxes: "*" | string[];
  now: Date;
  config: NotificationConfig;
  renewWindowMs?: number;
}

export interface SyncEntry {
  mailbox: string;
  user?: string;
  subscriptionId?: string;
  expirationDateTime?: string;
  reason?: string;
}

export interface SyncReport {
  at: string;
  mailboxes: number;
  created: number;
  renewed: number;
  kept: number;
  deleted: number;
  skipped: number;
  failed: number;
  /** The first entries of each kind (at most 100 each). */
  details: { created: SyncEntry[]; renewed: SyncEntry[]; deleted: SyncEntry[]; skipped: SyncEntry[]; failed: SyncEntry[] };
}

type Outcome =
  | { kind: "created" | "renewed" | "kept"; record: SubscriptionRecord }
  | { kind: "failed" | "skipped"; mailbox: string; user: string; reason: string };

/**
 * Makes Graph's subscriptions match the configuration:
 * - every configured mailbox (resolved to its user) has one subscription made with the current URL
 *   and clientState: created when missing, gone from Graph, or made with other settings;
 * - one expiring within the renewal window (default 12 h) is renewed (PATCH expirationDateTime);
 * - subscriptions of mailboxes no longer configured are deleted, and so are strays (subscriptions
 *   with our notificationUrl that no record points at, e.g. left by a create whose answer was lost);
 * - per-mailbox problems are reported, not fatal.
 */
export async function syncSubscriptions(svc: Services, input: SyncInput): Promise<SyncReport> {
  const { now, config } = input;
  const api = svc.mailbox;
  const window = input.renewWindowMs ?? RENEW_WINDOW_MS;
  const fingerprint = configFingerprint(config);
  const report: SyncReport = { at: now.toISOString(), mailboxes: 0, created: 0, renewed: 0, kept: 0, deleted: 0, skipped: 0, failed: 0, details: { created: [], renewed: [], deleted: [], skipped: [], failed: [] } };
  const note = (kind: keyof SyncReport["details"], e: SyncEntry): void => {
    report[kind]++;
    if (report.details[kind].length < REPORT_LIMIT) report.details[kind].push(e);
  };

  // 1. Who should have a subscription.
  const targets = await resolveTargets(api, input.mailboxes, (mailbox, reason) => note("skipped", { mailbox, reason }));
  report.mailboxes = targets.size + report.skipped;

  // 2. What exists: our records and Graph's subscriptions.
  const before = await readSubscriptions(svc.store);
  const live = new Map<string, GraphSubscription>();
  for await (const s of api.listSubscriptions()) live.set(s.id, s);

  // 3. One subscription per target.
  const outcomes = new Map<string, Outcome>();
  await eachLimited([...targets], SYNC_CONCURRENCY, async ([key, user]) => {
    const rec = before.subscriptions[key];
    const current = rec ? live.get(rec.subscriptionId) : undefined;
    try {
      if (rec && current && rec.fingerprint === fingerprint) {
        const expires = Date.parse(current.expirationDateTime);
        if (!Number.isFinite(expires) || expires - now.getTime() <= window) {
          try {
            const renewed = await api.renewSubscription(rec.subscriptionId, expiryFrom(now));
            outcomes.set(key, { kind: "renewed", record: { ...rec, mailbox: user.mailbox, expirationDateTime: renewed.expirationDateTime, renewedAt: now.toISOString(), updatedAt: now.toISOString() } });
            return;
          } catch (e) {
            if (!(e instanceof GraphError && e.status === 404)) throw e;
            // Gone meanwhile: make a new one below.
          }
        } else {
          outcomes.set(key, { kind: "kept", record: { ...rec, mailbox: user.mailbox, expirationDateTime: current.expirationDateTime } });
          return;
        }
      } else if (rec && current) {
        // Made with another URL or clientState: notifications would be dropped or go elsewhere.
        await api.deleteSubscription(rec.subscriptionId);
        live.delete(rec.subscriptionId);
      }
      outcomes.set(key, { kind: "created", record: await createFor(api, config, { id: user.id, mailbox: user.mailbox }, now) });
    } catch (e) {
      const { code, message } = describeError(e);
      // A user without an Exchange mailbox (unlicensed, or mail-enabled only): nothing to watch.
      const noMailbox = e instanceof GraphError && e.status === 404;
      outcomes.set(key, { kind: noMailbox ? "skipped" : "failed", mailbox: user.mailbox, user: user.id, reason: `${noMailbox ? "no Exchange mailbox: " : ""}${code}: ${message}`.slice(0, 500) });
    }
  });

  // 4. Records of mailboxes no longer configured.
  const dropped: SubscriptionRecord[] = Object.entries(before.subscriptions)
    .filter(([key]) => !targets.has(key))
    .map(([, r]) => r);
  await eachLimited(dropped, SYNC_CONCURRENCY, async (r) => {
    try {
      await api.deleteSubscription(r.subscriptionId);
      live.delete(r.subscriptionId);
      note("deleted", { mailbox: r.mailbox, user: r.user, subscriptionId: r.subscriptionId, reason: "mailbox no longer configured" });
    } catch (e) {
      const { code, message } = describeError(e);
      note("failed", { mailbox: r.mailbox, user: r.user, subscriptionId: r.subscriptionId, reason: `delete failed: ${code}: ${message}`.slice(0, 500) });
    }
  });

  // 5. Write the records; a record another writer changed meanwhile (a lifecycle handler) wins.
  const after = await updateSubscriptions(svc.store, (doc) => {
    for (const [key, o] of outcomes) {
      const theirs = doc.subscriptions[key];
      if (theirs && theirs.updatedAt !== before.subscriptions[key]?.updatedAt) continue;
      if ("record" in o) doc.subscriptions[key] = o.record;
    }
    for (const r of dropped) {
      const key = userKey(r.user);
      if (doc.subscriptions[key]?.subscriptionId === r.subscriptionId) delete doc.subscriptions[key];
    }
  });

  // 6. Strays: our URL, but no record points at them.
  const referenced = new Set(Object.values(after.subscriptions).map((r) => r.subscriptionId));
  const strays = [...live.values()].filter((s) => s.notificationUrl === config.notificationUrl && !referenced.has(s.id));
  await eachLimited(strays, SYNC_CONCURRENCY, async (s) => {
    try {
      if (await api.deleteSubscription(s.id)) note("deleted", { mailbox: s.resource, subscriptionId: s.id, reason: "no record points at this subscription" });
    } catch (e) {
      const { code, message } = describeError(e);
      note("failed", { mailbox: s.resource, subscriptionId: s.id, reason: `delete failed: ${code}: ${message}`.slice(0, 500) });
    }
  });

  for (const o of outcomes.values()) {
    if (!("record" in o)) note(o.kind, { mailbox: o.mailbox, user: o.user, reason: o.reason });
    else if (o.kind === "kept") report.kept++;
    else note(o.kind, { mailbox: o.record.mailbox, user: o.record.user, subscriptionId: o.record.subscriptionId, expirationDateTime: o.record.expirationDateTime });
  }
  svc.logger.log("info", "subscriptions synced", { created: report.created, renewed: report.renewed, kept: report.kept, deleted: report.deleted, skipped: report.skipped, failed: report.failed });
  return report;
}

/** Configured names to users, by lowercased user id. Names that name no user are reported. */
async function resolveTargets(api: MailboxApi, mailboxes: "*" | string[], skip: (mailbox: string, reason: string) => void): Promise<Map<string, { id: string; mailbox: string }>> {
  const out = new Map<string, { id: string; mailbox: string }>();
  if (mailboxes === "*") {
    for await (const u of api.listMailUsers()) if (!out.has(userKey(u.id))) out.set(userKey(u.id), { id: u.id, mailbox: u.userPrincipalName });
    return out;
  }
  const resolved = new Array<{ id: string; mailbox: string } | undefined>(mailboxes.length);
  await eachLimited(mailboxes.map((m, i) => [m, i] as const), SYNC_CONCURRENCY, async ([mailbox, i]) => {
    if (/^ews:/i.test(mailbox)) {
      skip(mailbox, "an Exchange Server (EWS) mailbox: Graph change notifications do not reach it; the nightly backup covers it");
      return;
    }
    if (/^MBX:/i.test(mailbox)) {
      skip(mailbox, "an MBX: id names no user; subscriptions are made on /users/{id}/messages, so name the mailbox by UPN or user id");
      return;
    }
    try {
      const u = await api.getUser(mailbox);
      resolved[i] = { id: u.id, mailbox };
    } catch (e) {
      if (e instanceof GraphError && e.status === 404) skip(mailbox, "no such user in this tenant");
      else {
        const { code, message } = describeError(e);
        skip(mailbox, `could not resolve the user: ${code}: ${message}`.slice(0, 500));
      }
    }
  });
  for (const r of resolved) if (r && !out.has(userKey(r.id))) out.set(userKey(r.id), r);
  return out;
}

async function eachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const item = items[next++];
      await fn(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

// ------------------------------------------------------------------------------------------------
// Lifecycle notifications
// ------------------------------------------------------------------------------------------------

export interface LifecycleResult {
  action: "renewed" | "recreated" | "already-recreated" | "unknown-subscription" | "none";
  subscriptionId: string;
  newSubscriptionId?: string;
  expirationDateTime?: string;
  /** The subscription's user and configured name, when the records know them. */
  user?: string;
  mailbox?: string;
}

/** The user and configured name behind a subscription id, from the records. */
export async function lookupSubscription(store: ItemStore, subscriptionId: string): Promise<{ user: string; mailbox: string } | undefined> {
  const rec = findBySubscriptionId(await readSubscriptions(store), subscriptionId);
  return rec ? { user: rec.user, mailbox: rec.mailbox } : undefined;
}

/**
 * reauthorizationRequired: PATCH a new expirationDateTime, which reauthorizes and renews at once.
 * If Graph no longer knows the subscription, a known one is made again.
 */
export async function reauthorizeSubscription(svc: Services, input: { subscriptionId: string; config: NotificationConfig; now: Date }): Promise<LifecycleResult> {
  const { subscriptionId, config, now } = input;
  const rec = findBySubscriptionId(await readSubscriptions(svc.store), subscriptionId);
  try {
    const renewed = await svc.mailbox.renewSubscription(subscriptionId, expiryFrom(now));
    if (rec) {
      await updateSubscriptions(svc.store, (doc) => {
        const r = findBySubscriptionId(doc, subscriptionId);
        if (r) Object.assign(r, { expirationDateTime: renewed.expirationDateTime, renewedAt: now.toISOString(), updatedAt: now.toISOString() });
      });
    }
    logLifecycle(svc.logger, "reauthorized", subscriptionId);
    return { action: "renewed", subscriptionId, expirationDateTime: renewed.expirationDateTime, user: rec?.user, mailbox: rec?.mailbox };
  } catch (e) {
    if (!(e instanceof GraphError && e.status === 404)) throw e;
    if (!rec) return { action: "unknown-subscription", subscriptionId };
    return recreate(svc, rec, config, now);
  }
}

/**
 * subscriptionRemoved: Graph removed the subscription; make a new one for the same user. A
 * repeated notification for the same old id finds the record already pointing elsewhere.
 */
export async function recreateSubscription(svc: Services, input: { subscriptionId: string; config: NotificationConfig; now: Date }): Promise<LifecycleResult> {
  const rec = findBySubscriptionId(await readSubscriptions(svc.store), input.subscriptionId);
  if (!rec) {
    svc.logger.log("warn", "subscriptionRemoved for a subscription the records do not know; the next sync re-creates the configured ones", { subscriptionId: input.subscriptionId });
    return { action: "unknown-subscription", subscriptionId: input.subscriptionId };
  }
  // Graph has removed it already; deleting is harmless (404) and makes sure no second one stays.
  await svc.mailbox.deleteSubscription(rec.subscriptionId).catch(() => false);
  return recreate(svc, rec, input.config, input.now);
}

async function recreate(svc: Services, rec: SubscriptionRecord, config: NotificationConfig, now: Date): Promise<LifecycleResult> {
  const fresh = await createFor(svc.mailbox, config, { id: rec.user, mailbox: rec.mailbox }, now);
  let already: SubscriptionRecord | undefined;
  await updateSubscriptions(svc.store, (doc) => {
    const key = userKey(rec.user);
    const cur = doc.subscriptions[key];
    if (cur && cur.subscriptionId !== rec.subscriptionId) {
      already = cur; // another handler made one meanwhile: keep it, drop ours below
      return;
    }
    doc.subscriptions[key] = fresh;
  });
  if (already) {
    await svc.mailbox.deleteSubscription(fresh.subscriptionId).catch(() => false);
    return { action: "already-recreated", subscriptionId: rec.subscriptionId, newSubscriptionId: already.subscriptionId, user: rec.user, mailbox: rec.mailbox };
  }
  logLifecycle(svc.logger, "recreated", rec.subscriptionId, fresh.subscriptionId);
  return { action: "recreated", subscriptionId: rec.subscriptionId, newSubscriptionId: fresh.subscriptionId, expirationDateTime: fresh.expirationDateTime, user: rec.user, mailbox: rec.mailbox };
}

function logLifecycle(log: Logger, what: string, subscriptionId: string, newSubscriptionId?: string): void {
  log.log("info", `subscription ${what}`, newSubscriptionId ? { subscriptionId, newSubscriptionId } : { subscriptionId });
}
