import type { HttpRequest, HttpResponseInit, InvocationContext, Timer } from "@azure/functions";
import * as df from "durable-functions";
import type { ActivityHandler, DurableClient, OrchestrationContext, OrchestrationHandler } from "durable-functions";
import { z } from "zod";
import { activityServices, invocationLogger } from "./runtime";
import { errorResponse, readJsonBody, runningStatus } from "./startBackup";
import { mailboxListSetting } from "../shared/config";
import { describeError, InvalidInputError } from "../shared/errors";
import { notificationConfig } from "../shared/notifications/settings";
import { type SyncReport, syncSubscriptions } from "../shared/notifications/subscriptions";

/**
 * Change-notification subscriptions of the configured mailboxes (MAILVAULT_MAILBOXES):
 *
 *   POST /api/subscriptions/sync        starts the sync now (function key)
 *   subscriptionTimer                   MAILVAULT_SUBSCRIPTION_RENEW_SCHEDULE (default every 6 hours)
 *     -> syncSubscriptions              singleton `subscriptions-sync`: creates the missing ones, renews
 *                                       those expiring within 12 hours, deletes the unconfigured ones
 */

export const SYNC_ORCHESTRATION = "syncSubscriptions";
export const SYNC_INSTANCE_ID = "subscriptions-sync";

export interface SyncOrchestrationInput {
  mailboxes: "*" | string[];
}

const syncActivity = df.app.activity("syncSubscriptionsNow", {
  handler: (async (input: SyncOrchestrationInput, context: InvocationContext) => {
    const config = notificationConfig(process.env);
    if (!config) throw new InvalidInputError("change notifications are not configured (MAILVAULT_NOTIFICATION_URL is empty)", "NotificationsNotConfigured");
    return syncSubscriptions(activityServices(context), { mailboxes: input.mailboxes, now: new Date(), config });
  }) satisfies ActivityHandler,
});

const syncOrchestration: OrchestrationHandler = function* (context: OrchestrationContext) {
  const input = context.df.getInput<SyncOrchestrationInput>();
  context.df.setCustomStatus({ phase: "syncing" });
  const retry = new df.RetryOptions(10_000, 3);
  retry.backoffCoefficient = 2;
  const report: SyncReport = yield syncActivity(input).withRetry(retry);
  context.df.setCustomStatus({ phase: "done", created: report.created, renewed: report.renewed, kept: report.kept, deleted: report.deleted, skipped: report.skipped, failed: report.failed });
  return report;
};
df.app.orchestration(SYNC_ORCHESTRATION, syncOrchestration);

/** Checks the settings a sync needs; the message names the setting, never its value. */
function syncSettings(): { mailboxes: "*" | string[] } | { problem: string } {
  try {
    if (!notificationConfig(process.env)) return { problem: "MAILVAULT_NOTIFICATION_URL is empty: change notifications are off" };
    return { mailboxes: mailboxListSetting(process.env) };
  } catch (e) {
    return { problem: describeError(e).message };
  }
}

const SyncBody = z.strictObject({});

/**
 * POST /api/subscriptions/sync: 202 with the check-status payload (`output` is the sync report);
 * 409 while a sync runs; 400 for a body other than none or `{}`; 503 when notifications are not
 * configured.
 */
export async function syncHandler(request: HttpRequest, client: DurableClient, context: InvocationContext): Promise<HttpResponseInit> {
  try {
    await readJsonBody(request, SyncBody);
    const settings = syncSettings();
    if ("problem" in settings) return { status: 503, jsonBody: { error: { code: "NotificationsNotConfigured", message: settings.problem } } };
    if (await runningStatus(client, SYNC_INSTANCE_ID)) {
      return { status: 409, jsonBody: { error: { code: "SyncAlreadyRunning", message: "a subscription sync is already running" }, ...client.createHttpManagementPayload(SYNC_INSTANCE_ID) } };
    }
    await client.startNew(SYNC_ORCHESTRATION, { instanceId: SYNC_INSTANCE_ID, input: { mailboxes: settings.mailboxes } satisfies SyncOrchestrationInput });
    invocationLogger(context).log("info", "subscription sync started", { instanceId: SYNC_INSTANCE_ID });
    return client.createCheckStatusResponse(request, SYNC_INSTANCE_ID);
  } catch (e) {
    return errorResponse(e, context);
  }
}

df.app.client.http("syncSubscriptionsHttp", {
  route: "subscriptions/sync",
  methods: ["POST"],
  authLevel: "function",
  handler: syncHandler,
});

/** The timer: starts a sync unless notifications are off or one is running. */
export async function subscriptionTimerHandler(_timer: Timer, client: DurableClient, context: InvocationContext): Promise<void> {
  const log = invocationLogger(context);
  const settings = syncSettings();
  if ("problem" in settings) {
    log.log("info", `subscription timer: nothing to do (${settings.problem})`);
    return;
  }
  if (await runningStatus(client, SYNC_INSTANCE_ID)) {
    log.log("warn", "subscription timer: the previous sync is still running; not starting another");
    return;
  }
  await client.startNew(SYNC_ORCHESTRATION, { instanceId: SYNC_INSTANCE_ID, input: { mailboxes: settings.mailboxes } satisfies SyncOrchestrationInput });
  log.log("info", "subscription sync started by the timer", { instanceId: SYNC_INSTANCE_ID });
}

df.app.client.timer("subscriptionTimer", {
  // An app setting expression: the Functions host reads the schedule from MAILVAULT_SUBSCRIPTION_RENEW_SCHEDULE.
  schedule: "%MAILVAULT_SUBSCRIPTION_RENEW_SCHEDULE%",
  handler: subscriptionTimerHandler,
});
