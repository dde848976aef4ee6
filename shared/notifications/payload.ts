import { createHash, timingSafeEqual } from "node:crypto";
import { z } from "zod";
import { parseWith } from "../validation";
import { InvalidInputError } from "../errors";

/**
 * Microsoft Graph change notifications as they reach mailvault (research/graph-api.md §8):
 *
 * - webhook: a `changeNotificationCollection` POSTed to the notificationUrl,
 *   `{"value": [{subscriptionId, clientState, changeType, resource, ...} | {subscriptionId, clientState, lifecycleEvent}]}`;
 * - Event Grid partner topic: one CloudEvent (or Event Grid schema event) per notification whose
 *   `data` carries the same fields, partly in Outlook casing (`ChangeType`, `SubscriptionExpirationDateTime`)
 *   and with an Outlook REST resource (`https://outlook.office365.com/api/beta/Users('<user>@<tenant>')/Messages('<id>')`).
 *
 * Both are parsed into `GraphNotification`s, authenticated by clientState, and planned into
 * `NotificationAction`s. A notification only says "this mailbox changed": nothing here calls Graph
 * or reads storage, so the webhook can answer within Graph's 3 seconds.
 */

/** Largest webhook body accepted (Graph batches notifications; about 1 KB each). */
export const MAX_NOTIFICATION_BODY = 1024 * 1024;
/** Most notifications in one webhook POST. */
export const MAX_NOTIFICATIONS_PER_POST = 1000;
/** Longest validationToken echoed back (Graph's are about 200 characters). */
export const MAX_VALIDATION_TOKEN = 4096;

export type LifecycleEvent = "reauthorizationRequired" | "subscriptionRemoved" | "missed";
const LIFECYCLE_EVENTS: readonly LifecycleEvent[] = ["reauthorizationRequired", "subscriptionRemoved", "missed"];

const ResourceData = z
  .object({
    "@odata.type": z.string().max(256).optional(),
    "@odata.id": z.string().max(4096).optional(),
    "@odata.etag": z.string().max(1024).optional(),
    id: z.string().max(1024).optional(),
  })
  .loose();

/**
 * One `changeNotification`. Graph adds properties over time, so unknown ones are ignored (rejecting
 * them would make Graph retry the delivery for 4 hours); known ones are type- and length-checked.
 */
const Notification = z
  .object({
    subscriptionId: z.string().min(1).max(128),
    subscriptionExpirationDateTime: z.string().max(64).optional(),
    clientState: z.string().max(255).nullable().optional(),
    changeType: z.string().min(1).max(64).optional(),
    resource: z.string().min(1).max(4096).optional(),
    tenantId: z.string().max(64).optional(),
    lifecycleEvent: z.string().min(1).max(64).optional(),
    resourceData: ResourceData.optional(),
    id: z.string().max(256).nullable().optional(),
  })
  .refine((n) => n.lifecycleEvent !== undefined || (n.changeType !== undefined && n.resource !== undefined), {
    message: "a change notification needs changeType and resource (or lifecycleEvent)",
  });

const Collection = z.object({
  value: z.array(Notification).min(1).max(MAX_NOTIFICATIONS_PER_POST),
  validationTokens: z.array(z.string().max(16384)).max(MAX_NOTIFICATIONS_PER_POST).optional(),
});

export type GraphNotification = z.infer<typeof Notification>;

/** Parses a webhook body; InvalidInputError (HTTP 400) with the first problem otherwise. */
export function parseWebhookBody(text: string): GraphNotification[] {
  if (!text.trim()) throw new InvalidInputError("request body is empty: expected a change notification collection", "InvalidBody");
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new InvalidInputError("request body is not valid JSON", "InvalidJson");
  }
  return check(Collection, value).value;
}

/**
 * The Event Grid trigger's event, CloudEvents 1.0 (`type`, `source`, `data`) or Event Grid schema
 * (`eventType`, `topic`, `data`). The Graph fields in `data` are read case-insensitively.
 */
const EventGridEvent = z
  .object({
    id: z.string().max(256).optional(),
    type: z.string().max(256).optional(),
    eventType: z.string().max(256).optional(),
    subject: z.string().max(4096).optional(),
    data: z.record(z.string(), z.unknown()),
  })
  .loose()
  .refine((e) => e.type !== undefined || e.eventType !== undefined, { message: "an event needs type (CloudEvents) or eventType (Event Grid schema)" });

/** Event types a Graph partner topic publishes for Outlook messages and subscription lifecycle. */
const MESSAGE_EVENT = /^Microsoft\.Graph\.Message(Created|Updated|Deleted)$/i;
const LIFECYCLE_EVENT = /^Microsoft\.Graph\.Subscription(ReauthorizationRequired|Removed|Missed)$/i;

/**
 * One Event Grid event as a Graph notification; `undefined` for events that are not about Outlook
 * messages or subscriptions (a partner topic can carry other Graph resources). Throws
 * InvalidInputError for an event that claims to be one but does not parse.
 */
export function parseEventGridEvent(event: unknown): GraphNotification | undefined {
  const e = check(EventGridEvent, event);
  const type = (e.type ?? e.eventType) as string;
  const message = MESSAGE_EVENT.exec(type);
  const lifecycle = LIFECYCLE_EVENT.exec(type);
  if (!message && !lifecycle) return undefined;
  // Outlook casing in data (ChangeType, SubscriptionExpirationDateTime, Id): read keys case-insensitively.
  const data = new Map<string, unknown>();
  for (const [k, v] of Object.entries(e.data)) data.set(k.toLowerCase(), v);
  const str = (k: string): string | undefined => (typeof data.get(k) === "string" ? (data.get(k) as string) : undefined);
  const candidate: Record<string, unknown> = {
    subscriptionId: data.get("subscriptionid"),
    subscriptionExpirationDateTime: str("subscriptionexpirationdatetime"),
    clientState: data.get("clientstate"),
    tenantId: str("tenantid"),
  };
  if (lifecycle) {
    const fromType = lifecycle[1].toLowerCase() === "reauthorizationrequired" ? "reauthorizationRequired" : lifecycle[1].toLowerCase() === "removed" ? "subscriptionRemoved" : "missed";
    candidate.lifecycleEvent = str("lifecycleevent") ?? fromType;
  } else {
    candidate.changeType = str("changetype") ?? (message as RegExpExecArray)[1].toLowerCase();
    candidate.resource = str("resource") ?? e.subject;
  }
  return check(Notification, candidate);
}

const check = parseWith;

/**
 * Constant-time clientState check: both sides are hashed to 32 bytes first, so timingSafeEqual
 * compares equal-length buffers and neither the content nor the length of the secret leaks
 * through timing. A missing clientState never matches.
 */
export function clientStateMatches(expected: string, given: unknown): boolean {
  const a = createHash("sha256").update(expected, "utf8").digest();
  const b = createHash("sha256").update(typeof given === "string" ? given : "", "utf8").digest();
  return timingSafeEqual(a, b) && typeof given === "string";
}

/** Splits notifications into those carrying the expected clientState and a count of the others. */
export function authenticate(notifications: readonly GraphNotification[], clientState: string): { accepted: GraphNotification[]; rejected: number } {
  const accepted: GraphNotification[] = [];
  let rejected = 0;
  for (const n of notifications) {
    if (clientStateMatches(clientState, n.clientState)) accepted.push(n);
    else rejected++;
  }
  return { accepted, rejected };
}

const GUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";
const USER_SEGMENT = /(?:^|\/)users(?:\/([^/()?#]+)|\('([^']+)'\))/i;
const SAFE_USER = /^[^\s/\\?#%\x00-\x1f]{1,320}$/;

/**
 * The user a notification's resource names, lowercased: `Users/{id}/Messages/{id}` (webhook),
 * `/users/{id}/mailFolders('x')/messages('y')`, or the Outlook REST form of Event Grid
 * (`https://outlook.office365.com/api/beta/Users('<userId>@<tenantId>')/Messages('<id>')`, where
 * `<userId>@<tenantId>` becomes `<userId>`). Undefined when no user can be read safely.
 */
export function userFromResource(resource: string | undefined): string | undefined {
  if (!resource) return undefined;
  let path = resource;
  if (/^https?:\/\//i.test(path)) {
    try {
      path = new URL(path).pathname;
    } catch {
      return undefined;
    }
  }
  const m = USER_SEGMENT.exec(path);
  if (!m) return undefined;
  let user = m[1] ?? m[2];
  try {
    user = decodeURIComponent(user);
  } catch {
    return undefined;
  }
  const pair = new RegExp(`^(${GUID})@(${GUID})$`).exec(user);
  if (pair) user = pair[1];
  if (!SAFE_USER.test(user) || user === "." || user === "..") return undefined;
  return user.toLowerCase();
}

export type NotificationAction =
  /** Changes to the messages of one user: nudge that user's watcher once. */
  | { kind: "change"; user: string; count: number }
  /** A lifecycle notification: handled by the subscriptionLifecycle orchestration. */
  | { kind: "lifecycle"; subscriptionId: string; event: LifecycleEvent }
  /** A change whose resource names no user we can read: mapped through the stored subscriptions. */
  | { kind: "unmapped"; subscriptionId: string; count: number };

/**
 * What authenticated notifications ask for: one "change" per user however many notifications
 * name it (Graph batches them), one "lifecycle" per subscription and event, and one "unmapped"
 * per subscription whose changes name no readable user. Unknown lifecycle events are skipped.
 */
export function planActions(notifications: readonly GraphNotification[]): { actions: NotificationAction[]; ignored: number } {
  const changes = new Map<string, number>();
  const unmapped = new Map<string, number>();
  const lifecycle = new Map<string, { subscriptionId: string; event: LifecycleEvent }>();
  let ignored = 0;
  for (const n of notifications) {
    if (n.lifecycleEvent !== undefined) {
      const event = LIFECYCLE_EVENTS.find((e) => e.toLowerCase() === n.lifecycleEvent?.toLowerCase());
      if (!event) {
        ignored++;
        continue;
      }
      lifecycle.set(`${n.subscriptionId}\0${event}`, { subscriptionId: n.subscriptionId, event });
      continue;
    }
    const user = userFromResource(n.resource);
    if (user) changes.set(user, (changes.get(user) ?? 0) + 1);
    else unmapped.set(n.subscriptionId, (unmapped.get(n.subscriptionId) ?? 0) + 1);
  }
  const actions: NotificationAction[] = [
    ...[...changes].map(([user, count]) => ({ kind: "change" as const, user, count })),
    ...[...unmapped].map(([subscriptionId, count]) => ({ kind: "unmapped" as const, subscriptionId, count })),
    ...[...lifecycle.values()].map((l) => ({ kind: "lifecycle" as const, ...l })),
  ];
  return { actions, ignored };
}
