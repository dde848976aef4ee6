import type { InvocationContext, Timer } from "@azure/functions";
import * as df from "durable-functions";
import type { ActivityHandler, DurableClient, OrchestrationContext, OrchestrationHandler } from "durable-functions";
import { BACKUP_ORCHESTRATION } from "./backupMailbox";
import { activityServices, invocationLogger } from "./runtime";
import { runningStatus } from "./startBackup";
import type { RunSummary } from "../shared/backup/backupRun";
import {
  finishNight,
  listNightMailboxes,
  type MailboxResult,
  type NightInput,
  nightOf,
  prepareNightMailbox,
  recordNightResult,
  resultFromSummary,
  type TenantSummary,
} from "../shared/backup/tenant";
import { intSetting, mailboxListSetting } from "../shared/config";

/**
 * The nightly backup (MAILVAULT_BACKUP_SCHEDULE) of the configured mailboxes (MAILVAULT_MAILBOXES,
 * or `*` for the whole tenant). One instance per night; mailboxes are dealt to
 * MAILVAULT_MAX_MAILBOXES_IN_FLIGHT lanes, and each mailbox runs as its own singleton backup
 * instance, the same one the HTTP trigger starts. A mailbox whose previous run is still going is
 * skipped and reported. The night ends with tenant/nightly/<night>/summary.json.
 */

export const NIGHTLY_ORCHESTRATION = "nightlyBackup";
const NIGHT_LANE_ORCHESTRATION = "nightlyLane";
/** Mailboxes a lane handles per execution before it continues as new (bounded history). */
const LANE_CHUNK = 25;

const listNightActivity = df.app.activity("listNightMailboxes", {
  handler: (async (input: Pick<NightInput, "night" | "mailboxes">, context: InvocationContext) => listNightMailboxes(activityServices(context), input)) satisfies ActivityHandler,
});
const prepareNightActivity = df.app.activity("prepareNightMailbox", {
  handler: (async (input: { night: string; index: number }, context: InvocationContext) => prepareNightMailbox(activityServices(context), input)) satisfies ActivityHandler,
});
const recordNightActivity = df.app.activity("recordNightResult", {
  handler: (async (input: { night: string; index: number; result: MailboxResult }, context: InvocationContext) => recordNightResult(activityServices(context), input)) satisfies ActivityHandler,
});
const finishNightActivity = df.app.activity("finishNight", {
  handler: (async (input: { night: string; count: number; startedAt: string; finishedAt: string }, context: InvocationContext) =>
    finishNight(activityServices(context), input)) satisfies ActivityHandler,
});

function retryPolicy(): df.RetryOptions {
  const r = new df.RetryOptions(5_000, 3);
  r.backoffCoefficient = 2;
  return r;
}

const nightlyBackup: OrchestrationHandler = function* (context: OrchestrationContext) {
  const input = context.df.getInput<NightInput>();
  const count: number = yield listNightActivity({ night: input.night, mailboxes: input.mailboxes }).withRetry(retryPolicy());
  const lanes = Math.max(1, Math.min(input.maxInFlight, count));
  context.df.setCustomStatus({ phase: "backing up", mailboxes: count, lanes });
  if (count > 0) {
    yield context.df.Task.all(
      Array.from({ length: lanes }, (_, lane) =>
        context.df.callSubOrchestrator(NIGHT_LANE_ORCHESTRATION, { night: input.night, lane, lanes, count, next: lane } satisfies LaneInput, `${context.df.instanceId}:l${lane}`),
      ),
    );
  }
  const summary: TenantSummary = yield finishNightActivity({ night: input.night, count, startedAt: input.startedAt, finishedAt: context.df.currentUtcDateTime.toISOString() }).withRetry(retryPolicy());
  context.df.setCustomStatus({ phase: "done", mailboxes: count, completed: summary.completed, skipped: summary.skipped, failed: summary.failed });
  return summary;
};
df.app.orchestration(NIGHTLY_ORCHESTRATION, nightlyBackup);

interface LaneInput {
  night: string;
  lane: number;
  lanes: number;
  count: number;
  /** The next mailbox index of this lane (index % lanes === lane). */
  next: number;
}

/** One lane: its mailboxes one after another, each as the mailbox's own singleton backup. */
const nightlyLane: OrchestrationHandler = function* (context: OrchestrationContext) {
  const lane = context.df.getInput<LaneInput>();
  let index = lane.next;
  for (let done = 0; index < lane.count && done < LANE_CHUNK; index += lane.lanes, done++) {
    const prepared: Awaited<ReturnType<typeof prepareNightMailbox>> = yield prepareNightActivity({ night: lane.night, index }).withRetry(retryPolicy());
    if (!prepared.request || !prepared.instanceId) continue; // resolution failed: already recorded
    let result: MailboxResult;
    try {
      const summary: RunSummary = yield context.df.callSubOrchestrator(BACKUP_ORCHESTRATION, prepared.request, prepared.instanceId);
      result = resultFromSummary(prepared.mailbox, summary);
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      // The singleton instance of this mailbox exists and is still running: a previous (or manual) run.
      result = /already exists/i.test(message)
        ? { mailbox: prepared.mailbox, mailboxId: prepared.request.mailboxId, status: "skipped", reason: "the previous backup of this mailbox is still running" }
        : { mailbox: prepared.mailbox, mailboxId: prepared.request.mailboxId, status: "failed", reason: message.slice(0, 1000) };
    }
    yield recordNightActivity({ night: lane.night, index, result }).withRetry(retryPolicy());
  }
  if (index < lane.count) {
    context.df.continueAsNew({ ...lane, next: index });
    return undefined;
  }
  return undefined;
};
df.app.orchestration(NIGHT_LANE_ORCHESTRATION, nightlyLane);

/** The timer: starts tonight's instance unless it is already running or there is nothing to do. */
export async function nightlyTimerHandler(_timer: Timer, client: DurableClient, context: InvocationContext): Promise<void> {
  const log = invocationLogger(context);
  const mailboxes = mailboxListSetting(process.env);
  if (mailboxes !== "*" && mailboxes.length === 0) {
    log.log("info", "nightly backup: MAILVAULT_MAILBOXES is empty; nothing to do");
    return;
  }
  const now = new Date();
  const night = nightOf(now);
  const instanceId = `nightly-${night}`;
  const running = await runningStatus(client, instanceId);
  if (running) {
    log.log("warn", "nightly backup still running from an earlier trigger; not starting another", { instanceId });
    return;
  }
  const input: NightInput = { night, mailboxes, maxInFlight: intSetting(process.env, "MAILVAULT_MAX_MAILBOXES_IN_FLIGHT", 1, 200), startedAt: now.toISOString() };
  await client.startNew(NIGHTLY_ORCHESTRATION, { instanceId, input });
  log.log("info", "nightly backup started", { instanceId, mailboxes: mailboxes === "*" ? "*" : mailboxes.length });
}

df.app.client.timer("nightlyTimer", {
  // An app setting expression: the Functions host reads the schedule from MAILVAULT_BACKUP_SCHEDULE.
  schedule: "%MAILVAULT_BACKUP_SCHEDULE%",
  handler: nightlyTimerHandler,
});
