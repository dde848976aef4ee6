import { describeError, GraphError } from "../errors";
import type { Services } from "../services";
import { FORMAT_VERSION } from "../store/naming";
import type { RunSummary } from "./backupRun";
import type { BackupRequest } from "./orchestration";
import { prepareBackup } from "./start";

/**
 * The nightly backup of many mailboxes: which mailboxes, one result file per mailbox, and the
 * tenant-level summary. The orchestration in functions/nightlyBackup.ts sequences these steps.
 *
 *   tenant/nightly/<night>/mailboxes.json       the mailboxes of that night, in order
 *   tenant/nightly/<night>/results/<nnnnnn>.json one result per mailbox
 *   tenant/nightly/<night>/summary.json          counts over the tenant
 */

export interface NightInput {
  /** yyyymmdd (UTC) of the night, also the instance id's suffix. */
  night: string;
  /** `*` or the configured names. */
  mailboxes: "*" | string[];
  maxInFlight: number;
  startedAt: string;
}

export type MailboxResultStatus = "completed" | "skipped" | "failed";

export interface MailboxResult {
  mailbox: string;
  mailboxId?: string;
  status: MailboxResultStatus;
  /** Why a mailbox was skipped or failed. */
  reason?: string;
  runId?: string;
  exported?: number;
  unchanged?: number;
  deleted?: number;
  failedItems?: number;
  bytes?: number;
}

export interface TenantSummary {
  formatVersion: number;
  night: string;
  startedAt: string;
  finishedAt: string;
  mailboxes: number;
  completed: number;
  skipped: number;
  failed: number;
  exported: number;
  failedItems: number;
  bytes: number;
  /** Mailboxes that were skipped or failed, with the reason (the result files have all). */
  problems: Array<{ mailbox: string; status: MailboxResultStatus; reason?: string }>;
}

const nightRoot = (night: string) => {
  if (!/^\d{8}$/.test(night)) throw new Error(`not a night: ${night}`);
  return `tenant/nightly/${night}`;
};
const listPath = (night: string) => `${nightRoot(night)}/mailboxes.json`;
const resultPath = (night: string, index: number) => `${nightRoot(night)}/results/${String(index).padStart(6, "0")}.json`;
export const tenantSummaryPath = (night: string) => `${nightRoot(night)}/summary.json`;

export function nightOf(d: Date): string {
  return d.toISOString().slice(0, 10).replace(/-/g, "");
}

/** Writes the night's mailbox list (every mail-enabled user for `*`) and returns how many. */
export async function listNightMailboxes(svc: Services, input: Pick<NightInput, "night" | "mailboxes">): Promise<number> {
  const names: string[] = [];
  if (input.mailboxes === "*") {
    for await (const u of svc.mailbox.listMailUsers()) names.push(u.userPrincipalName);
  } else names.push(...input.mailboxes);
  await svc.store.writeText(listPath(input.night), JSON.stringify({ formatVersion: FORMAT_VERSION, mailboxes: names }));
  return names.length;
}

const listCache = new Map<string, Promise<string[]>>();

async function nightMailbox(svc: Services, night: string, index: number): Promise<string> {
  const key = `${svc.store.location}|${night}`;
  let p = listCache.get(key);
  if (!p) {
    p = svc.store.readText(listPath(night)).then((t) => (JSON.parse(t ?? '{"mailboxes":[]}') as { mailboxes: string[] }).mailboxes);
    listCache.set(key, p);
    p.catch(() => listCache.delete(key));
  }
  const name = (await p)[index];
  if (name === undefined) throw new Error(`night ${night} has no mailbox ${index}`);
  return name;
}

/** Resolves one mailbox of the night; a mailbox that cannot be resolved is a result, not a crash. */
export async function prepareNightMailbox(
  svc: Services,
  input: { night: string; index: number },
): Promise<{ mailbox: string; instanceId?: string; request?: BackupRequest; result?: MailboxResult }> {
  const mailbox = await nightMailbox(svc, input.night, input.index);
  try {
    const prepared = await prepareBackup(svc, mailbox);
    return { mailbox, instanceId: prepared.instanceId, request: prepared.request };
  } catch (e) {
    const { code, message } = describeError(e);
    const noMailbox = e instanceof GraphError && (e.status === 404 || code === "NoMailbox");
    const result: MailboxResult = { mailbox, status: noMailbox ? "skipped" : "failed", reason: noMailbox ? `no Exchange mailbox (${code})` : `${code}: ${message}` };
    await recordNightResult(svc, { night: input.night, index: input.index, result });
    return { mailbox, result };
  }
}

export function resultFromSummary(mailbox: string, s: RunSummary): MailboxResult {
  return { mailbox, mailboxId: s.mailboxId, status: "completed", runId: s.runId, exported: s.exported, unchanged: s.unchanged, deleted: s.deleted, failedItems: s.failed, bytes: s.bytes };
}

export async function recordNightResult(svc: Services, input: { night: string; index: number; result: MailboxResult }): Promise<void> {
  await svc.store.writeText(resultPath(input.night, input.index), JSON.stringify(input.result));
}

export async function finishNight(svc: Services, input: { night: string; count: number; startedAt: string; finishedAt: string }): Promise<TenantSummary> {
  const s: TenantSummary = {
    formatVersion: FORMAT_VERSION,
    night: input.night,
    startedAt: input.startedAt,
    finishedAt: input.finishedAt,
    mailboxes: input.count,
    completed: 0,
    skipped: 0,
    failed: 0,
    exported: 0,
    failedItems: 0,
    bytes: 0,
    problems: [],
  };
  for (let i = 0; i < input.count; i++) {
    const text = await svc.store.readText(resultPath(input.night, i));
    const r: MailboxResult = text ? (JSON.parse(text) as MailboxResult) : { mailbox: await nightMailbox(svc, input.night, i), status: "failed", reason: "no result recorded" };
    s[r.status]++;
    s.exported += r.exported ?? 0;
    s.failedItems += r.failedItems ?? 0;
    s.bytes += r.bytes ?? 0;
    if (r.status !== "completed" && s.problems.length < 100) s.problems.push({ mailbox: r.mailbox, status: r.status, reason: r.reason });
  }
  await svc.store.writeText(tenantSummaryPath(input.night), JSON.stringify(s, null, 2));
  return s;
}
