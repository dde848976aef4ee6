import { describeError } from "../errors";
import { listMailboxes, pickRun } from "../catalog";
import type { Services } from "../services";
import { FORMAT_VERSION } from "../store/naming";
import { verifyRun, type VerifyProblem } from "../verify";

/**
 * The scheduled verification: re-reads the latest complete run of every mailbox in the store and
 * checks each object against its manifest, so missing or corrupt backups surface without waiting
 * for a restore. Results go to tenant/verify/<yyyymmdd>/.
 */

export interface MailboxVerifyResult {
  mailboxId: string;
  runId?: string;
  checked: number;
  ok: number;
  problems: VerifyProblem[];
  error?: { code: string; message: string };
}

export interface VerifySummary {
  formatVersion: number;
  day: string;
  mailboxes: number;
  checked: number;
  ok: number;
  problems: number;
  /** Mailboxes with problems or errors, with their first problems. */
  findings: Array<{ mailboxId: string; runId?: string; problems: VerifyProblem[]; error?: { code: string; message: string } }>;
}

const dayRoot = (day: string) => {
  if (!/^\d{8}$/.test(day)) throw new Error(`not a day: ${day}`);
  return `tenant/verify/${day}`;
};

/** The mailbox ids the store holds backups of. */
export async function listStoreMailboxes(svc: Services): Promise<string[]> {
  return (await listMailboxes(svc.store)).map((m) => m.mailboxId);
}

export async function verifyLatest(svc: Services, input: { day: string; mailboxId: string; index: number }): Promise<MailboxVerifyResult> {
  let result: MailboxVerifyResult;
  try {
    const run = await pickRun(svc.store, input.mailboxId);
    const report = await verifyRun(svc.store, { mailboxId: input.mailboxId, runId: run.runId, manifest: run.manifest }, { concurrency: 8 });
    result = { mailboxId: input.mailboxId, runId: run.runId, checked: report.checked, ok: report.ok, problems: report.problems.slice(0, 100) };
  } catch (e) {
    result = { mailboxId: input.mailboxId, checked: 0, ok: 0, problems: [], error: describeError(e) };
  }
  await svc.store.writeText(`${dayRoot(input.day)}/mailboxes/${String(input.index).padStart(6, "0")}.json`, JSON.stringify(result));
  // Only counts go back to the orchestrator.
  return { ...result, problems: result.problems.slice(0, 5) };
}

export async function finishVerify(svc: Services, input: { day: string; results: MailboxVerifyResult[] }): Promise<VerifySummary> {
  const s: VerifySummary = { formatVersion: FORMAT_VERSION, day: input.day, mailboxes: input.results.length, checked: 0, ok: 0, problems: 0, findings: [] };
  for (const r of input.results) {
    s.checked += r.checked;
    s.ok += r.ok;
    s.problems += r.problems.length + (r.error ? 1 : 0);
    if ((r.problems.length || r.error) && s.findings.length < 100) s.findings.push({ mailboxId: r.mailboxId, runId: r.runId, problems: r.problems, ...(r.error ? { error: r.error } : {}) });
  }
  await svc.store.writeText(`${dayRoot(input.day)}/summary.json`, JSON.stringify(s, null, 2));
  if (s.problems) svc.logger.log("error", "scheduled verification found problems", { mailboxes: s.findings.length, problems: s.problems });
  return s;
}
