import type { Cursor, RunTotals } from "./backupRun";
import { mailboxKey } from "../store/naming";

/**
 * Host-free pieces of the backup orchestration: instance ids, the state carried across
 * continueAsNew, lane assignment and the progress shown in customStatus. Kept here so the
 * orchestrator in functions/ stays a thin sequence of Durable calls and these rules are unit-tested.
 */

/** Items planned per page (100 export calls): one page is one continueAsNew execution of the root orchestration. */
export const DEFAULT_PAGE_ITEMS = 2000;

/** What a starter (HTTP, timer, event, CLI) passes to the root orchestration. */
export interface BackupRequest {
  /** As the caller named it (UPN, user id or MBX id). */
  mailbox: string;
  /** Resolved `MBX:` id. */
  mailboxId: string;
  /** Export activities in flight for this mailbox (Exchange Online allows 4 requests per mailbox). */
  window: number;
  batchMaxBytes: number;
  pageItems: number;
  /** Re-read everything instead of following stored delta links. */
  full?: boolean;
}

/** The root orchestration's state, carried from one execution to the next through continueAsNew. */
export interface BackupState extends BackupRequest {
  runId: string;
  /** The last complete run this one builds on (incremental); undefined for a first run. */
  baseRunId?: string;
  startedAt: string;
  folderCount: number;
  estimatedItems: number;
  pageNo: number;
  /** Undefined once every folder has been walked. */
  cursor?: Cursor;
  foldersDone: number;
  totals: RunTotals;
}

export interface BackupProgress {
  phase: "starting" | "exporting" | "finishing" | "done";
  runId?: string;
  mailboxId: string;
  folders: { done: number; total: number };
  items: { done: number; total: number };
  failed: number;
  bytes: number;
  pages: number;
}

/** One singleton instance per mailbox: two triggers never back up the same mailbox at once. */
export function backupInstanceId(mailboxId: string): string {
  return `backup-${mailboxKey(mailboxId)}`;
}

export function zeroTotals(): RunTotals {
  return { exported: 0, unchanged: 0, failed: 0, deleted: 0, bytes: 0 };
}

export function addTotals(a: RunTotals, b: RunTotals): RunTotals {
  return {
    exported: a.exported + b.exported,
    unchanged: a.unchanged + b.unchanged,
    failed: a.failed + b.failed,
    deleted: a.deleted + b.deleted,
    bytes: a.bytes + b.bytes,
  };
}

export function progressOf(s: BackupState, phase: BackupProgress["phase"]): BackupProgress {
  const done = s.totals.exported + s.totals.unchanged + s.totals.failed;
  return {
    phase,
    runId: s.runId,
    mailboxId: s.mailboxId,
    folders: { done: s.foldersDone, total: s.folderCount },
    items: { done, total: Math.max(done, s.estimatedItems) },
    failed: s.totals.failed,
    bytes: s.totals.bytes,
    pages: s.pageNo,
  };
}

/**
 * Deals a page's batches to `lanes` sequential lanes, largest first to the least loaded lane, so the
 * lanes finish close together. Each lane keeps one export call in flight, so `lanes` is the number
 * of requests in flight for the mailbox.
 *
 * Why lanes and not a sliding window with Task.any: Task.any over tasks that were already yielded
 * re-emits their actions inside the WhenAny, and the Durable extension's out-of-process shim calls
 * every compound child again, scheduling the in-flight activities a second time
 * (Azure/azure-functions-durable-js#574). Lanes are sub-orchestrations awaited once with Task.all
 * over fresh tasks, which the extension replays correctly.
 */
const CALL_COST_BYTES = 8 * 1024 * 1024;

export function assignLanes(batchBytes: readonly number[], lanes: number): number[][] {
  const n = Math.max(1, Math.min(lanes, batchBytes.length || 1));
  const out: number[][] = Array.from({ length: n }, () => []);
  const load = new Array<number>(n).fill(0);
  const order = batchBytes.map((b, i) => ({ b, i })).sort((x, y) => y.b - x.b || x.i - y.i);
  for (const { b, i } of order) {
    let best = 0;
    for (let l = 1; l < n; l++) if (load[l] < load[best] || (load[l] === load[best] && out[l].length < out[best].length)) best = l;
    out[best].push(i);
    // A call's fixed cost (Exchange's latency) dominates small batches: count it as 8 MB of transfer.
    load[best] += b + CALL_COST_BYTES;
  }
  for (const lane of out) lane.sort((a, b) => a - b);
  return out.filter((l) => l.length > 0);
}
