import type { HttpRequest, HttpResponseInit, InvocationContext } from "@azure/functions";
import * as df from "durable-functions";
import type { ActivityHandler, DurableClient, OrchestrationContext, OrchestrationHandler } from "durable-functions";
import { activityServices, invocationLogger } from "./runtime";
import { errorResponse, readJsonBody } from "./startBackup";
import {
  finishRestore,
  makeFolders,
  type RestorePageResult,
  type RestoreReport,
  type RestoreRequest,
  restorePage,
  startRestore,
  type StartRestoreResult,
} from "../shared/restore/restoreRun";
import { getServices } from "../shared/services";
import { prepareRestore, RestoreBody } from "../shared/restore/prepare";

/**
 * Restore (design.md, "Restore data flow"): items of one stored run back into the same or another
 * mailbox, through Graph import sessions or EWS UploadItems (the target's source).
 * POST /api/mailboxes/{mailbox}/restores starts it.
 */

export const RESTORE_ORCHESTRATION = "restoreMailbox";
/** Pages per execution before continuing as new (bounded history). */
const PAGES_PER_EXECUTION = 25;

const startRestoreActivity = df.app.activity("selectRestoreItems", {
  handler: (async (r: RestoreRequest, context: InvocationContext) => startRestore(activityServices(context), r)) satisfies ActivityHandler,
});
const makeFoldersActivity = df.app.activity("makeRestoreFolders", {
  handler: (async (r: RestoreRequest & { targetMailboxId: string; startedAt: string }, context: InvocationContext) => makeFolders(activityServices(context), r)) satisfies ActivityHandler,
});
const restorePageActivity = df.app.activity("restorePage", {
  handler: (async (r: RestoreRequest & { targetMailboxId: string; pageNo: number }, context: InvocationContext) => restorePage(activityServices(context), r)) satisfies ActivityHandler,
});
const finishRestoreActivity = df.app.activity("finishRestore", {
  handler: (async (r: Parameters<typeof finishRestore>[1], context: InvocationContext) => finishRestore(activityServices(context), r)) satisfies ActivityHandler,
});

function retryPolicy(): df.RetryOptions {
  const r = new df.RetryOptions(5_000, 4);
  r.backoffCoefficient = 2;
  r.maxRetryIntervalInMilliseconds = 60_000;
  return r;
}

interface RestoreState {
  request: RestoreRequest;
  startedAt: string;
  start: StartRestoreResult;
  pageNo: number;
  done: RestorePageResult;
  failedPages: number;
}

const restoreMailbox: OrchestrationHandler = function* (context: OrchestrationContext) {
  const input = context.df.getInput<RestoreRequest | RestoreState>();
  let state: RestoreState;
  if ("request" in input) state = input;
  else {
    const startedAt = context.df.currentUtcDateTime.toISOString();
    context.df.setCustomStatus({ phase: "starting" });
    const start: StartRestoreResult = yield startRestoreActivity(input).withRetry(retryPolicy());
    yield makeFoldersActivity({ ...input, targetMailboxId: start.targetMailboxId, startedAt }).withRetry(retryPolicy());
    state = { request: input, startedAt, start, pageNo: 0, done: { imported: 0, alreadyImported: 0, failed: 0, bytes: 0 }, failedPages: 0 };
  }
  const r = state.request;
  for (let n = 0; state.pageNo < state.start.pageCount && n < PAGES_PER_EXECUTION; n++) {
    try {
      const page: RestorePageResult = yield restorePageActivity({ ...r, targetMailboxId: state.start.targetMailboxId, pageNo: state.pageNo }).withRetry(retryPolicy());
      state.done = {
        imported: state.done.imported + page.imported,
        alreadyImported: state.done.alreadyImported + page.alreadyImported,
        failed: state.done.failed + page.failed,
        bytes: state.done.bytes + page.bytes,
      };
    } catch {
      // The page kept failing (e.g. the target kept answering 5xx): its unimported items are
      // reported as failed by finishRestore, and a re-run of this restore picks them up.
      state.failedPages++;
    }
    state.pageNo++;
    context.df.setCustomStatus({ phase: "importing", items: { done: state.done.imported + state.done.alreadyImported + state.done.failed, total: state.start.itemCount }, bytes: state.done.bytes, failed: state.done.failed });
  }
  if (state.pageNo < state.start.pageCount) {
    context.df.continueAsNew(state);
    return undefined;
  }
  const report: RestoreReport = yield finishRestoreActivity({
    ...r,
    targetMailboxId: state.start.targetMailboxId,
    startedAt: state.startedAt,
    finishedAt: context.df.currentUtcDateTime.toISOString(),
    pageCount: state.start.pageCount,
    items: state.start.itemCount,
    alreadyImported: state.done.alreadyImported,
  }).withRetry(retryPolicy());
  context.df.setCustomStatus({ phase: "done", items: { done: report.imported + report.failed, total: report.items }, bytes: report.bytes, failed: report.failed });
  return { ...report, failures: report.failures.slice(0, 10) };
};
df.app.orchestration(RESTORE_ORCHESTRATION, restoreMailbox);

/**
 * POST /api/mailboxes/{mailbox}/restores  (function key)
 * Body: {"run"?, "target"?, "folders"?: [...], "items"?: [...], "targetFolderName"?, "intoOriginalFolders"?, "mode"?}
 * ("mode": create, or update / upsert to overwrite in place, same mailbox, EWS targets).
 * 202 with the check-status payload; 400 for bad input or a run/folder/item not in the store.
 */
export async function startRestoreHandler(request: HttpRequest, client: DurableClient, context: InvocationContext): Promise<HttpResponseInit> {
  try {
    const body = await readJsonBody(request, RestoreBody);
    const r = await prepareRestore(getServices(), request.params.mailbox, body, new Date());
    const instanceId = `restore-${r.restoreId}`;
    await client.startNew(RESTORE_ORCHESTRATION, { instanceId, input: r });
    invocationLogger(context).log("info", "restore started", { instanceId });
    return client.createCheckStatusResponse(request, instanceId);
  } catch (e) {
    return errorResponse(e, context);
  }
}

df.app.client.http("startRestore", {
  route: "mailboxes/{mailbox}/restores",
  methods: ["POST"],
  authLevel: "function",
  handler: startRestoreHandler,
});
