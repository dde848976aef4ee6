import type { InvocationContext } from "@azure/functions";
import * as df from "durable-functions";
import type { ActivityHandler, OrchestrationContext, OrchestrationHandler } from "durable-functions";
import {
  type ExportCounts,
  type ExportPlannedInput,
  exportPlanned,
  type FinishPageInput,
  type FinishRunInput,
  finishPage,
  finishRun,
  type LostItem,
  type PlanPageInput,
  type PlanPageResult,
  planPage,
  type RunSummary,
  type RunTotals,
  type StartRunInput,
  type StartRunResult,
  startRun,
} from "../shared/backup/backupRun";
import {
  addTotals,
  assignLanes,
  type BackupRequest,
  type BackupState,
  progressOf,
  zeroTotals,
} from "../shared/backup/orchestration";
import { makeRunId } from "../shared/store/naming";
import { activityServices } from "./runtime";

/**
 * The backup orchestration (design.md, "Backup data flow").
 *
 *   backupMailbox (singleton per mailbox; one page of ~1,000 items per execution, then continueAsNew)
 *     startRun                      folders -> store                  (first execution only)
 *     planPage                      next page of item deltas -> store (ids and sizes, never bytes)
 *     exportLane x window           sub-orchestrations, each exporting its share of the page's batches
 *       exportBatch                 one exportItems call -> item objects in the store
 *     finishPage                    the page's manifest lines
 *     finishRun                     manifest.jsonl + summary.json     (last execution only)
 *
 * Every instance's history is bounded: the root restarts per page, a lane holds one page's share.
 */

export const BACKUP_ORCHESTRATION = "backupMailbox";
export const EXPORT_LANE_ORCHESTRATION = "exportLane";

// Activities: thin wrappers over shared/backup/backupRun.ts.

const startRunActivity = df.app.activity("startRun", {
  handler: (async (input: StartRunInput, context: InvocationContext) => startRun(activityServices(context), input)) satisfies ActivityHandler,
});

const planPageActivity = df.app.activity("planPage", {
  handler: (async (input: PlanPageInput, context: InvocationContext) => planPage(activityServices(context), input)) satisfies ActivityHandler,
});

const exportBatchActivity = df.app.activity("exportBatch", {
  handler: (async (input: ExportPlannedInput, context: InvocationContext) => exportPlanned(activityServices(context), input)) satisfies ActivityHandler,
});

const finishPageActivity = df.app.activity("finishPage", {
  handler: (async (input: FinishPageInput, context: InvocationContext) => finishPage(activityServices(context), input)) satisfies ActivityHandler,
});

const finishRunActivity = df.app.activity("finishRun", {
  handler: (async (input: FinishRunInput, context: InvocationContext) => finishRun(activityServices(context), input)) satisfies ActivityHandler,
});

/** Transient failures (storage hiccups, a crashed worker) are retried with backoff by Durable. */
function retryPolicy(): df.RetryOptions {
  const r = new df.RetryOptions(2_000, 4);
  r.backoffCoefficient = 2;
  r.maxRetryIntervalInMilliseconds = 60_000;
  return r;
}

const backupMailbox: OrchestrationHandler = function* (context: OrchestrationContext) {
  const input = context.df.getInput<BackupRequest | BackupState>();
  let state: BackupState;
  if ("runId" in input) {
    state = input;
  } else {
    const startedAt = context.df.currentUtcDateTime;
    const runId = makeRunId(startedAt, context.df.newGuid(context.df.instanceId).replace(/-/g, "").slice(0, 8));
    const base = { ...input, runId, startedAt: startedAt.toISOString(), folderCount: 0, estimatedItems: 0, pageNo: 0, foldersDone: 0, totals: zeroTotals() };
    context.df.setCustomStatus(progressOf(base, "starting"));
    const start: StartRunResult = yield startRunActivity({
      mailboxId: input.mailboxId,
      requested: input.mailbox,
      runId,
      startedAt: base.startedAt,
      full: input.full,
    }).withRetry(retryPolicy());
    state = {
      ...base,
      baseRunId: start.baseRunId,
      folderCount: start.folderCount,
      estimatedItems: start.estimatedItems,
      cursor: start.folderCount > 0 ? { folderIndex: 0 } : undefined,
    };
  }

  if (state.cursor) {
    const plan: PlanPageResult = yield planPageActivity({
      mailboxId: state.mailboxId,
      runId: state.runId,
      baseRunId: state.baseRunId,
      pageNo: state.pageNo,
      cursor: state.cursor,
      pageItems: state.pageItems,
      batchMaxBytes: state.batchMaxBytes,
    }).withRetry(retryPolicy());

    const lanes = assignLanes(plan.batchBytes, state.window);
    const laneResults: LaneResult[] = plan.batchCount === 0
      ? []
      : yield context.df.Task.all(
          lanes.map((batches, lane) =>
            context.df.callSubOrchestrator(
              EXPORT_LANE_ORCHESTRATION,
              {
                mailboxId: state.mailboxId,
                runId: state.runId,
                pageNo: state.pageNo,
                batches: batches.map((batchNo) => ({ batchNo, items: plan.batchSizes[batchNo] })),
              } satisfies LaneInput,
              `${context.df.instanceId}:${state.runId}:p${state.pageNo}:l${lane}`,
            ),
          ),
        );
    const pageTotals: RunTotals = yield finishPageActivity({
      mailboxId: state.mailboxId,
      runId: state.runId,
      pageNo: state.pageNo,
      splitBatches: laneResults.flatMap((r) => r.splitBatches),
      lost: laneResults.flatMap((r) => r.lost),
    }).withRetry(retryPolicy());

    state = {
      ...state,
      pageNo: state.pageNo + 1,
      cursor: plan.next,
      foldersDone: state.foldersDone + plan.foldersDone,
      totals: addTotals(state.totals, pageTotals),
    };
    context.df.setCustomStatus(progressOf(state, state.cursor ? "exporting" : "finishing"));
    if (state.cursor) {
      // A fresh execution per page keeps the replayed history small whatever the mailbox size.
      context.df.continueAsNew(state);
      return undefined;
    }
  }

  const summary: RunSummary = yield finishRunActivity({
    mailboxId: state.mailboxId,
    baseRunId: state.baseRunId,
    requested: state.mailbox,
    runId: state.runId,
    startedAt: state.startedAt,
    finishedAt: context.df.currentUtcDateTime.toISOString(),
    pageCount: state.pageNo,
    folderCount: state.folderCount,
  }).withRetry(retryPolicy());
  context.df.setCustomStatus({ ...progressOf({ ...state, totals: summary }, "done"), manifest: summary.manifest });
  return summary;
};
df.app.orchestration(BACKUP_ORCHESTRATION, backupMailbox);

export interface LaneInput {
  mailboxId: string;
  runId: string;
  pageNo: number;
  batches: Array<{ batchNo: number; items: number }>;
}

export interface LaneResult extends ExportCounts {
  splitBatches: number[];
  lost: LostItem[];
}

/**
 * One lane: its batches one after another, so each lane is one export call in flight. A batch that
 * still fails after Durable's retries is split into single items, so that one poison item fails
 * alone; a single item that keeps failing is reported as lost and recorded as failed.
 */
const exportLane: OrchestrationHandler = function* (context: OrchestrationContext) {
  const lane = context.df.getInput<LaneInput>();
  const result: LaneResult = { exported: 0, failed: 0, bytes: 0, splitBatches: [], lost: [] };
  const add = (c: ExportCounts) => {
    result.exported += c.exported;
    result.failed += c.failed;
    result.bytes += c.bytes;
  };
  const retry = retryPolicy();
  for (const { batchNo, items } of lane.batches) {
    const ref = { mailboxId: lane.mailboxId, runId: lane.runId, pageNo: lane.pageNo, batchNo };
    try {
      add(yield exportBatchActivity(ref).withRetry(retry));
      continue;
    } catch {
      result.splitBatches.push(batchNo);
    }
    for (let itemIndex = 0; itemIndex < items; itemIndex++) {
      try {
        add(yield exportBatchActivity({ ...ref, itemIndex }).withRetry(retry));
      } catch (e) {
        result.lost.push({ batchNo, itemIndex, error: e instanceof Error ? e.message : String(e) });
        result.failed++;
      }
    }
  }
  return result;
};
df.app.orchestration(EXPORT_LANE_ORCHESTRATION, exportLane);
