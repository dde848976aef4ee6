import type { EventGridEvent, HttpRequest, HttpResponseInit, InvocationContext } from "@azure/functions";
import * as df from "durable-functions";
import type { ActivityHandler, DurableClient, OrchestrationContext, OrchestrationHandler } from "durable-functions";
import { BACKUP_ORCHESTRATION } from "./backupMailbox";
import { activityServices, invocationLogger } from "./runtime";
import { errorResponse, runningStatus } from "./startBackup";
import type { RunSummary } from "../shared/backup/backupRun";
import type { BackupRequest } from "../shared/backup/orchestration";
import { describeError, InvalidInputError, isMailvaultError } from "../shared/errors";
import type { Logger } from "../shared/log";
import {
  authenticate,
  type GraphNotification,
  type LifecycleEvent,
  MAX_NOTIFICATION_BODY,
  MAX_VALIDATION_TOKEN,
  type NotificationAction,
  parseEventGridEvent,
  parseWebhookBody,
  planActions,
} from "../shared/notifications/payload";
import { clientStateSetting, notificationConfig, quietSecondsSetting } from "../shared/notifications/settings";
import { type LifecycleResult, lookupSubscription, reauthorizeSubscription, recreateSubscription } from "../shared/notifications/subscriptions";
import {
  busyRetryDelayMs,
  CHANGE_EVENT,
  type ChangeSignal,
  isAlreadyRunning,
  type LastRun,
  lastRunOf,
  MAX_ABSORBED_PER_RUN,
  MAX_BUSY_RETRIES,
  mergeSignals,
  prepareChangeBackup,
  quietDeadline,
  watcherInstanceId,
  type WatcherState,
  type WatcherStatus,
} from "../shared/notifications/watcher";

/**
 * Event-triggered backups (README "Change notifications"; research/graph-api.md §8).
 *
 *   POST /api/notifications          Graph's webhook: validation handshake, change and lifecycle notifications
 *   changeEventGrid                  the same notifications through an Event Grid partner topic
 *     -> mailboxChangeWatcher        one per user (`changes-<key>`), raised with `mailboxChanged`:
 *          quiet period -> backupMailbox (the mailbox's singleton run) -> idle until the next change
 *     -> subscriptionLifecycle       reauthorize (PATCH), recreate, or a full pass (`missed`)
 *
 * The request path only authenticates, raises events and starts instances (no Graph call), so
 * Graph gets its answer well within 3 seconds; everything else runs in the orchestrations.
 */

export const WATCHER_ORCHESTRATION = "mailboxChangeWatcher";
export const LIFECYCLE_ORCHESTRATION = "subscriptionLifecycle";

function retryPolicy(): df.RetryOptions {
  const r = new df.RetryOptions(5_000, 3);
  r.backoffCoefficient = 2;
  return r;
}

// ------------------------------------------------------------------------------------------------
// Activities
// ------------------------------------------------------------------------------------------------

const prepareChangeBackupActivity = df.app.activity("prepareChangeBackup", {
  handler: (async (input: { user: string; full?: boolean }, context: InvocationContext) => prepareChangeBackup(activityServices(context), input)) satisfies ActivityHandler,
});

const lookupSubscriptionActivity = df.app.activity("lookupSubscription", {
  handler: (async (input: { subscriptionId: string }, context: InvocationContext) =>
    (await lookupSubscription(activityServices(context).store, input.subscriptionId)) ?? null) satisfies ActivityHandler,
});

function requireConfig() {
  const config = notificationConfig(process.env);
  if (!config) throw new InvalidInputError("change notifications are not configured (MAILVAULT_NOTIFICATION_URL is empty)", "NotificationsNotConfigured");
  return config;
}

const reauthorizeActivity = df.app.activity("reauthorizeSubscription", {
  handler: (async (input: { subscriptionId: string }, context: InvocationContext) =>
    reauthorizeSubscription(activityServices(context), { subscriptionId: input.subscriptionId, config: requireConfig(), now: new Date() })) satisfies ActivityHandler,
});

const recreateActivity = df.app.activity("recreateSubscription", {
  handler: (async (input: { subscriptionId: string }, context: InvocationContext) =>
    recreateSubscription(activityServices(context), { subscriptionId: input.subscriptionId, config: requireConfig(), now: new Date() })) satisfies ActivityHandler,
});

/** Raises a change on a user's watcher from an orchestration (activities may hold a durable client). */
const nudgeActivity = df.app.activity("nudgeChangeWatcher", {
  extraInputs: [df.input.durableClient()],
  handler: (async (input: { user: string; signal: ChangeSignal }, context: InvocationContext) => nudgeWatcher(df.getClient(context), input.user, input.signal)) satisfies ActivityHandler,
});

// ------------------------------------------------------------------------------------------------
// The watcher: one per user, coalescing notifications into runs
// ------------------------------------------------------------------------------------------------

/**
 * One execution = one run:
 *  1. quiet period: absorb further `mailboxChanged` events until none came for the quiet period
 *     (fresh event and timer tasks per round; the losing timer is cancelled);
 *  2. run the mailbox's backup as a sub-orchestration with its singleton id; if an HTTP or nightly
 *     backup of the mailbox is running ("already exists"), wait and start again, so the change is
 *     not dropped;
 *  3. idle: wait for the next event with no timer. Events that arrived during the run are already
 *     in the history and complete this wait at once; then continueAsNew with that signal pending.
 *
 * continueAsNew happens only right after an event was consumed, so events the new execution does
 * not inherit (the extension drops unprocessed ones) all arrived before it and are covered by the
 * run it is about to make: exactly one follow-up run for any number of changes during a run.
 */
const mailboxChangeWatcher: OrchestrationHandler = function* (context: OrchestrationContext) {
  const state = context.df.getInput<WatcherState>();
  let pending = state.pending;
  let events = state.events;
  const startedAt = context.df.currentUtcDateTime;
  const status = (phase: WatcherStatus["phase"], last?: LastRun, runs = state.runs): void => {
    context.df.setCustomStatus({
      phase,
      user: state.user,
      runs,
      events,
      ...(phase === "idle" ? {} : { pending: { full: Boolean(pending.full), count: pending.count } }),
      ...(last ? { last } : {}),
    } satisfies WatcherStatus);
  };

  // 1. Quiet period.
  status("quiet", state.last);
  for (let absorbed = 0; absorbed < MAX_ABSORBED_PER_RUN; absorbed++) {
    const now = context.df.currentUtcDateTime;
    const deadline = quietDeadline(now, startedAt, pending.quietSeconds);
    if (deadline.getTime() <= now.getTime()) break;
    const timer = context.df.createTimer(deadline);
    const change = context.df.waitForExternalEvent(CHANGE_EVENT);
    const winner = yield context.df.Task.any([change, timer]);
    if (winner !== change) break;
    timer.cancel();
    const signal = change.result as ChangeSignal;
    pending = mergeSignals(pending, signal);
    events += signal.count;
  }

  // 2. The run.
  status("running", state.last);
  let prepared: { instanceId: string; request: BackupRequest } | { skipped: string } | { failed: string };
  try {
    prepared = yield prepareChangeBackupActivity({ user: state.user, full: pending.full }).withRetry(retryPolicy());
  } catch (e) {
    // Graph or the store kept failing: record it and wait for the next change (the nightly run covers this one).
    prepared = { failed: (e instanceof Error ? e.message : String(e)).slice(0, 1000) };
  }
  let last: LastRun;
  if ("failed" in prepared) {
    last = { status: "failed", reason: prepared.failed, full: Boolean(pending.full), finishedAt: context.df.currentUtcDateTime.toISOString() };
  } else if ("skipped" in prepared) {
    last = { status: "skipped", reason: prepared.skipped, full: Boolean(pending.full), finishedAt: context.df.currentUtcDateTime.toISOString() };
  } else {
    for (let attempt = 0; ; attempt++) {
      try {
        const summary: RunSummary = yield context.df.callSubOrchestrator(BACKUP_ORCHESTRATION, prepared.request, prepared.instanceId);
        last = lastRunOf(summary, pending.full, context.df.currentUtcDateTime.toISOString());
        break;
      } catch (e) {
        const reason = e instanceof Error ? e.message : String(e);
        if (isAlreadyRunning(e) && attempt < MAX_BUSY_RETRIES) {
          // An HTTP or nightly backup of this mailbox is going; it may have started before the change.
          status("waiting-for-running-backup", state.last);
          yield context.df.createTimer(new Date(context.df.currentUtcDateTime.getTime() + busyRetryDelayMs(attempt)));
          status("running", state.last);
          continue;
        }
        last = { status: "failed", reason: reason.slice(0, 1000), full: Boolean(pending.full), finishedAt: context.df.currentUtcDateTime.toISOString() };
        break;
      }
    }
  }

  // 3. Idle until the next change.
  const runs = state.runs + 1;
  status("idle", last, runs);
  const next: ChangeSignal = yield context.df.waitForExternalEvent(CHANGE_EVENT);
  context.df.continueAsNew({ user: state.user, pending: mergeSignals(undefined, next), runs, events: events + next.count, last } satisfies WatcherState);
  return undefined;
};
df.app.orchestration(WATCHER_ORCHESTRATION, mailboxChangeWatcher);

/**
 * Raises a change on the user's watcher, starting it if it does not run. A start that races with
 * another one (409 / "already exists") raises the event instead, so no notification is lost.
 */
export async function nudgeWatcher(client: DurableClient, user: string, signal: ChangeSignal): Promise<"raised" | "started"> {
  const instanceId = watcherInstanceId(user);
  for (let attempt = 0; attempt < 5; attempt++) {
    if (await runningStatus(client, instanceId)) {
      await client.raiseEvent(instanceId, CHANGE_EVENT, signal);
      return "raised";
    }
    try {
      const input: WatcherState = { user: user.toLowerCase(), pending: mergeSignals(undefined, signal), runs: 0, events: signal.count };
      await client.startNew(WATCHER_ORCHESTRATION, { instanceId, input });
      return "started";
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      if (!/already exists|409|conflict/i.test(message)) throw e;
    }
  }
  throw new Error(`could not start or reach the change watcher ${instanceId}`);
}

// ------------------------------------------------------------------------------------------------
// Lifecycle notifications
// ------------------------------------------------------------------------------------------------

export interface LifecycleInput {
  subscriptionId: string;
  /** A lifecycle event, or "changed" for change notifications whose resource names no readable user. */
  event: LifecycleEvent | "changed";
  count: number;
  quietSeconds: number;
}

/**
 * reauthorizationRequired: PATCH the expiration (reauthorizes and renews).
 * subscriptionRemoved: make a new subscription, then an incremental run (changes may have been missed).
 * missed: a full pass (`full: true`) through the watcher.
 */
const subscriptionLifecycle: OrchestrationHandler = function* (context: OrchestrationContext) {
  const input = context.df.getInput<LifecycleInput>();
  let result: LifecycleResult | undefined;
  if (input.event === "reauthorizationRequired") {
    result = yield reauthorizeActivity({ subscriptionId: input.subscriptionId }).withRetry(retryPolicy());
    return result;
  }
  if (input.event === "subscriptionRemoved") result = yield recreateActivity({ subscriptionId: input.subscriptionId }).withRetry(retryPolicy());
  const target: { user: string } | null = result?.user ? { user: result.user } : yield lookupSubscriptionActivity({ subscriptionId: input.subscriptionId }).withRetry(retryPolicy());
  if (!target) return { ...(result ?? { subscriptionId: input.subscriptionId, action: "unknown-subscription" }), nudged: false };
  const signal: ChangeSignal =
    input.event === "missed"
      ? { full: true, count: input.count, reasons: ["missed"], quietSeconds: input.quietSeconds }
      : { count: input.count, reasons: [input.event === "subscriptionRemoved" ? "removed" : "change"], quietSeconds: input.quietSeconds };
  const nudged: string = yield nudgeActivity({ user: target.user, signal }).withRetry(retryPolicy());
  return { ...(result ?? { subscriptionId: input.subscriptionId, action: "none" }), user: target.user, nudged };
};
df.app.orchestration(LIFECYCLE_ORCHESTRATION, subscriptionLifecycle);

// ------------------------------------------------------------------------------------------------
// Receivers
// ------------------------------------------------------------------------------------------------

/** Starts what authenticated notifications ask for; throws when Durable cannot be reached. */
async function dispatch(client: DurableClient, actions: readonly NotificationAction[], quietSeconds: number): Promise<void> {
  await Promise.all(
    actions.map(async (a) => {
      if (a.kind === "change") {
        await nudgeWatcher(client, a.user, { count: a.count, reasons: ["change"], quietSeconds });
      } else {
        const input: LifecycleInput =
          a.kind === "lifecycle"
            ? { subscriptionId: a.subscriptionId, event: a.event, count: 1, quietSeconds }
            : { subscriptionId: a.subscriptionId, event: "changed", count: a.count, quietSeconds };
        await client.startNew(LIFECYCLE_ORCHESTRATION, { input });
      }
    }),
  );
}

/** Authenticates, plans and dispatches; logs counts only (never a clientState or a notification's content). */
async function receive(client: DurableClient, notifications: readonly GraphNotification[], clientState: string, quietSeconds: number, log: Logger, via: string): Promise<void> {
  const { accepted, rejected } = authenticate(notifications, clientState);
  if (rejected > 0) log.log("warn", `${via}: dropped ${rejected} notification(s) whose clientState did not match`);
  if (accepted.length === 0) return;
  const { actions, ignored } = planActions(accepted);
  await dispatch(client, actions, quietSeconds);
  log.log("info", `${via}: notifications accepted`, {
    notifications: accepted.length,
    mailboxes: actions.filter((a) => a.kind === "change").length,
    lifecycle: actions.filter((a) => a.kind === "lifecycle").length,
    ...(ignored ? { ignored } : {}),
  });
}

/** The clientState and quiet period, or the reason notifications cannot be accepted. */
function receiverSettings(): { clientState: string; quietSeconds: number } | { problem: string } {
  try {
    const clientState = clientStateSetting(process.env);
    if (!clientState) return { problem: "MAILVAULT_NOTIFICATION_CLIENT_STATE is not set" };
    return { clientState, quietSeconds: quietSecondsSetting(process.env) };
  } catch (e) {
    return { problem: describeError(e).message };
  }
}

/**
 * POST /api/notifications (function key: the notificationUrl carries `?code=<key>`).
 * - `?validationToken=...`: 200, text/plain, the decoded token and nothing else (Graph's handshake).
 * - a notification collection: 202 once the watchers are raised (no Graph call here); 400 for a
 *   body that is not one, 413 above 1 MiB, 503 when the clientState is not configured (Graph retries).
 */
export async function notificationsHandler(request: HttpRequest, client: DurableClient, context: InvocationContext): Promise<HttpResponseInit> {
  const token = request.query.get("validationToken");
  if (token !== null) {
    if (token.length === 0 || token.length > MAX_VALIDATION_TOKEN) {
      return { status: 400, jsonBody: { error: { code: "InvalidValidationToken", message: `validationToken must be 1 to ${MAX_VALIDATION_TOKEN} characters` } } };
    }
    // Opaque: echoed as plain text, never interpreted, never rendered as HTML.
    return { status: 200, headers: { "Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store" }, body: token };
  }
  const log = invocationLogger(context);
  try {
    const text = await readBoundedText(request, MAX_NOTIFICATION_BODY);
    const notifications = parseWebhookBody(text);
    const settings = receiverSettings();
    if ("problem" in settings) {
      log.log("error", `notifications refused: ${settings.problem}`);
      return { status: 503, jsonBody: { error: { code: "NotificationsNotConfigured", message: "change notifications are not configured on this app" } } };
    }
    await receive(client, notifications, settings.clientState, settings.quietSeconds, log, "webhook");
    return { status: 202 };
  } catch (e) {
    if (isMailvaultError(e) && e.kind === "invalid-input") return errorResponse(e, context);
    // Durable could not be reached: 5xx so that Graph delivers again (it retries for 4 hours).
    log.log("error", "notifications could not be dispatched", { error: describeError(e).message });
    return { status: 503, jsonBody: { error: { code: "DispatchFailed", message: "the notifications could not be queued; deliver again" } } };
  }
}

df.app.client.http("changeNotifications", {
  route: "notifications",
  methods: ["POST"],
  authLevel: "function",
  handler: notificationsHandler,
});

/**
 * The same notifications through an Event Grid partner topic (CloudEvents; `data` carries the
 * Graph fields). Events that are not about messages or subscriptions, or do not parse, are logged
 * and dropped (a retry would not help); a Durable failure throws so Event Grid delivers again.
 */
export async function eventGridHandler(event: EventGridEvent, client: DurableClient, context: InvocationContext): Promise<void> {
  const log = invocationLogger(context);
  let notification: GraphNotification | undefined;
  try {
    notification = parseEventGridEvent(event as unknown);
  } catch (e) {
    log.log("warn", "event grid: dropped an event that is not a valid Graph notification", { error: describeError(e).message });
    return;
  }
  if (!notification) {
    log.log("debug", "event grid: ignored an event of another type");
    return;
  }
  const settings = receiverSettings();
  if ("problem" in settings) throw new Error(`event grid notification refused: ${settings.problem}`);
  await receive(client, [notification], settings.clientState, settings.quietSeconds, log, "event grid");
}

df.app.client.eventGrid("changeEventGrid", { handler: eventGridHandler });

/** Reads the body up to `limit` bytes (413 above it) without buffering more. */
async function readBoundedText(request: HttpRequest, limit: number): Promise<string> {
  const tooLarge = () => new InvalidInputError(`request body larger than ${limit} bytes`, "BodyTooLarge");
  if (Number(request.headers.get("content-length") ?? "0") > limit) throw tooLarge();
  if (!request.body) return "";
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > limit) {
      await reader.cancel().catch(() => undefined);
      throw tooLarge();
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString("utf8");
}
