import type { RunSummary } from "../backup/backupRun";
import type { BackupRequest } from "../backup/orchestration";
import { prepareBackup } from "../backup/start";
import { describeError, GraphError } from "../errors";
import type { Services } from "../services";
import { mailboxKey } from "../store/naming";
import { readSubscriptions, userKey } from "./subscriptions";

/**
 * Host-free pieces of the per-mailbox change watcher (functions/changeNotifications.ts): its
 * instance id, the signal a notification sends it, how signals merge, the quiet-period clock and
 * the preparation of a run. A notification means only "this mailbox changed"; the watcher turns
 * bursts of them into one incremental run at a time, and changes that arrive during a run into
 * exactly one follow-up run.
 */

/** The external event a notification raises on the watcher. */
export const CHANGE_EVENT = "mailboxChanged";

export type ChangeReason = "change" | "missed" | "removed";

/** What a notification (or several, coalesced) asks of the watcher. */
export interface ChangeSignal {
  /** Read every folder from scratch (a `missed` lifecycle notification). */
  full?: boolean;
  /** Notifications this signal stands for. */
  count: number;
  reasons: ChangeReason[];
  /** MAILVAULT_CHANGE_QUIET_SECONDS when the signal was sent (the latest one wins). */
  quietSeconds: number;
}

export interface LastRun {
  status: "completed" | "failed" | "skipped";
  runId?: string;
  full?: boolean;
  exported?: number;
  unchanged?: number;
  deleted?: number;
  failedItems?: number;
  reason?: string;
  finishedAt: string;
}

/** The watcher's input, carried from one execution to the next. */
export interface WatcherState {
  /** The user id (lowercased) the notifications name. */
  user: string;
  /** The change this execution runs for. */
  pending: ChangeSignal;
  /** Runs started by this watcher so far. */
  runs: number;
  /**
   * Notifications consumed so far: a lower bound, because those that arrive during a run beyond
   * the first are folded into the follow-up run without being read one by one.
   */
  events: number;
  last?: LastRun;
}

export interface WatcherStatus {
  phase: "quiet" | "running" | "waiting-for-running-backup" | "idle";
  user: string;
  runs: number;
  events: number;
  pending?: { full: boolean; count: number };
  last?: LastRun;
}

/** One watcher per user: `changes-<mailboxKey(user)>`. */
export function watcherInstanceId(user: string): string {
  return `changes-${mailboxKey(userKey(user))}`;
}

export function mergeSignals(a: ChangeSignal | undefined, b: ChangeSignal): ChangeSignal {
  if (!a) return { ...b, reasons: [...new Set(b.reasons)] };
  return {
    full: Boolean(a.full || b.full) || undefined,
    count: a.count + b.count,
    reasons: [...new Set([...a.reasons, ...b.reasons])],
    quietSeconds: b.quietSeconds,
  };
}

/** Events absorbed in one quiet period (bounds one execution's history). */
export const MAX_ABSORBED_PER_RUN = 500;

/**
 * When the quiet period ends: `quiet` after the last signal, but never more than ten quiet periods
 * after it began, so a mailbox that never stops changing is still backed up.
 */
export function quietDeadline(now: Date, startedAt: Date, quietSeconds: number): Date {
  const quietMs = quietSeconds * 1000;
  return new Date(Math.min(now.getTime() + quietMs, startedAt.getTime() + 10 * quietMs));
}

/** Waits while another backup of the mailbox runs (HTTP or nightly): 30 s doubling to 15 min, for about a day. */
export function busyRetryDelayMs(attempt: number): number {
  return Math.min(30_000 * 2 ** Math.min(attempt, 5), 15 * 60_000);
}
export const MAX_BUSY_RETRIES = 100;

/** A sub-orchestration start that failed because the mailbox's backup instance is running. */
export function isAlreadyRunning(e: unknown): boolean {
  return /already exists/i.test(e instanceof Error ? e.message : String(e));
}

/**
 * Prepares the run of a watcher: the user's configured name from the subscription records (so the
 * store records the address the configuration used), resolved to its mailbox. A user without a
 * mailbox is skipped, not retried.
 */
export async function prepareChangeBackup(
  svc: Services,
  input: { user: string; full?: boolean },
): Promise<{ instanceId: string; request: BackupRequest } | { skipped: string }> {
  const doc = await readSubscriptions(svc.store);
  const name = doc.subscriptions[userKey(input.user)]?.mailbox ?? input.user;
  try {
    return await prepareBackup(svc, name, { full: input.full });
  } catch (e) {
    if (e instanceof GraphError && (e.status === 404 || e.code === "NoMailbox" || e.code === "MailboxNotFound")) {
      const { code, message } = describeError(e);
      return { skipped: `no Exchange mailbox for ${name} (${code}: ${message})`.slice(0, 500) };
    }
    throw e;
  }
}

export function lastRunOf(summary: RunSummary, full: boolean | undefined, finishedAt: string): LastRun {
  return { status: "completed", runId: summary.runId, full: Boolean(full), exported: summary.exported, unchanged: summary.unchanged, deleted: summary.deleted, failedItems: summary.failed, finishedAt };
}
