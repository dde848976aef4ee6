import { InvalidInputError } from "./errors";
import type { ItemStore } from "./store/itemStore";
import { isRunId, mailboxRoot, manifestPath, summaryPath } from "./store/naming";
import type { RunSummary } from "./backup/backupRun";

/**
 * Reading a store without Graph: which mailboxes it holds and which runs each has. Works offline
 * (the CLI's `runs` and `verify`), because mailbox.json records the addresses a mailbox was backed
 * up under.
 */

export interface MailboxEntry {
  mailboxId: string;
  addresses: string[];
  /** Folder of the mailbox relative to the store root. */
  root: string;
}

export interface RunEntry {
  runId: string;
  /** "complete" when summary.json exists; "incomplete" for a run that is going or was interrupted. */
  state: "complete" | "incomplete";
  summary?: RunSummary;
  manifest: string;
}

export async function listMailboxes(store: ItemStore): Promise<MailboxEntry[]> {
  const out: MailboxEntry[] = [];
  for await (const p of store.listObjects("mailboxes/")) {
    if (!/^mailboxes\/[^/]+\/mailbox\.json$/.test(p)) continue;
    const text = await store.readText(p);
    if (!text) continue;
    const m = JSON.parse(text) as { mailboxId: string; addresses?: string[] };
    out.push({ mailboxId: m.mailboxId, addresses: m.addresses ?? [], root: p.slice(0, -"/mailbox.json".length) });
  }
  return out.sort((a, b) => a.mailboxId.localeCompare(b.mailboxId));
}

/** The mailbox a user names by MBX id, UPN or user id, as recorded in this store. */
export async function findMailbox(store: ItemStore, name: string): Promise<MailboxEntry> {
  const all = await listMailboxes(store);
  const lower = name.toLowerCase();
  const hit = all.find((m) => m.mailboxId === name) ?? all.find((m) => m.mailboxId.toLowerCase() === lower || m.addresses.some((a) => a.toLowerCase() === lower));
  if (!hit) {
    if (/^MBX:/i.test(name)) return { mailboxId: name, addresses: [], root: mailboxRoot(name) };
    throw new InvalidInputError(`no backups of ${name} in ${store.location}`, "MailboxNotInStore");
  }
  return hit;
}

/** Runs of a mailbox, oldest first (run ids sort by start time). */
export async function listRuns(store: ItemStore, mailboxId: string): Promise<RunEntry[]> {
  const prefix = `${mailboxRoot(mailboxId)}/runs/`;
  const ids = new Set<string>();
  for await (const p of store.listObjects(prefix)) {
    const id = p.slice(prefix.length).split("/")[0];
    if (isRunId(id)) ids.add(id);
  }
  const runs: RunEntry[] = [];
  for (const runId of [...ids].sort()) {
    const text = await store.readText(summaryPath(mailboxId, runId));
    runs.push({
      runId,
      state: text ? "complete" : "incomplete",
      ...(text ? { summary: JSON.parse(text) as RunSummary } : {}),
      manifest: manifestPath(mailboxId, runId),
    });
  }
  return runs;
}

/** The named run, or the latest complete one. */
export async function pickRun(store: ItemStore, mailboxId: string, runId?: string): Promise<RunEntry> {
  if (runId !== undefined && !isRunId(runId)) throw new InvalidInputError(`not a run id: ${JSON.stringify(runId)}`, "InvalidRunId");
  const runs = await listRuns(store, mailboxId);
  const run = runId ? runs.find((r) => r.runId === runId) : [...runs].reverse().find((r) => r.state === "complete");
  if (!run) throw new InvalidInputError(runId ? `run ${runId} not found for ${mailboxId}` : `no complete run for ${mailboxId}`, "RunNotFound");
  return run;
}
