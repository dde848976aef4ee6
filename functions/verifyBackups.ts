import type { InvocationContext, Timer } from "@azure/functions";
import * as df from "durable-functions";
import type { ActivityHandler, DurableClient, OrchestrationContext, OrchestrationHandler } from "durable-functions";
import { activityServices, invocationLogger } from "./runtime";
import { runningStatus } from "./startBackup";
import { finishVerify, listStoreMailboxes, type MailboxVerifyResult, verifyLatest, type VerifySummary } from "../shared/backup/verifyAll";
import { nightOf } from "../shared/backup/tenant";

/**
 * Scheduled verification (MAILVAULT_VERIFY_SCHEDULE): the latest complete run of every mailbox in
 * the store is re-read and checked against its manifest; tenant/verify/<day>/summary.json reports
 * missing or corrupt objects, and an error line is logged (alert on it in Application Insights).
 */

export const VERIFY_ORCHESTRATION = "verifyBackups";
/** Mailboxes per execution before continuing as new (bounded history). */
const CHUNK = 50;

const listActivity = df.app.activity("listStoreMailboxes", {
  handler: (async (_input: unknown, context: InvocationContext) => listStoreMailboxes(activityServices(context))) satisfies ActivityHandler,
});
const verifyActivity = df.app.activity("verifyLatestRun", {
  handler: (async (input: { day: string; mailboxId: string; index: number }, context: InvocationContext) => verifyLatest(activityServices(context), input)) satisfies ActivityHandler,
});
const finishActivity = df.app.activity("finishVerify", {
  handler: (async (input: { day: string; results: MailboxVerifyResult[] }, context: InvocationContext) => finishVerify(activityServices(context), input)) satisfies ActivityHandler,
});

interface VerifyState {
  day: string;
  mailboxes?: string[];
  next: number;
  results: MailboxVerifyResult[];
}

const verifyBackups: OrchestrationHandler = function* (context: OrchestrationContext) {
  const state = context.df.getInput<VerifyState>();
  const retry = new df.RetryOptions(10_000, 3);
  const mailboxes: string[] = state.mailboxes ?? (yield listActivity({ day: state.day }).withRetry(retry));
  const results = [...state.results];
  let i = state.next;
  for (; i < mailboxes.length && i < state.next + CHUNK; i++) {
    const r: MailboxVerifyResult = yield verifyActivity({ day: state.day, mailboxId: mailboxes[i], index: i }).withRetry(retry);
    // Keep only counts in the carried state: problems are in the per-mailbox files.
    results.push({ ...r, problems: r.problems.slice(0, 3) });
    context.df.setCustomStatus({ verified: i + 1, of: mailboxes.length });
  }
  if (i < mailboxes.length) {
    context.df.continueAsNew({ day: state.day, mailboxes, next: i, results });
    return undefined;
  }
  const summary: VerifySummary = yield finishActivity({ day: state.day, results }).withRetry(retry);
  return { ...summary, findings: summary.findings.slice(0, 20) };
};
df.app.orchestration(VERIFY_ORCHESTRATION, verifyBackups);

export async function verifyTimerHandler(_timer: Timer, client: DurableClient, context: InvocationContext): Promise<void> {
  const day = nightOf(new Date());
  const instanceId = `verify-${day}`;
  if (await runningStatus(client, instanceId)) {
    invocationLogger(context).log("warn", "verification still running; not starting another", { instanceId });
    return;
  }
  await client.startNew(VERIFY_ORCHESTRATION, { instanceId, input: { day, next: 0, results: [] } satisfies VerifyState });
}

df.app.client.timer("verifyTimer", {
  schedule: "%MAILVAULT_VERIFY_SCHEDULE%",
  handler: verifyTimerHandler,
});
