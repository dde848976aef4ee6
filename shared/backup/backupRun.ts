import { describeError, InvalidInputError } from "../errors";
import { type ExportItemRef, exportBatch } from "../export/exportBatch";
import type { MailboxFolder } from "../graph/mailboxApi";
import type { Services } from "../services";
import { FORMAT_VERSION, mailboxRoot, manifestPath, runRoot, summaryPath } from "../store/naming";
import { type ManifestLine, outcomeToLine, readManifest, toJsonl } from "./manifest";
import { planBatches } from "./plan";

/**
 * The steps of one backup run, each small enough to be one Durable activity and each safe to run
 * again (activities are at-least-once): every file a step writes has a name fixed by its input.
 *
 *   startRun        folders of the mailbox -> runs/<run>/folders.json
 *   planPage        the next ~1,000 items from the folders' item deltas -> runs/<run>/work/page-N.json
 *   exportPlanned   one batch (or one item of it) of a page -> item objects + runs/<run>/work/page-N/…jsonl
 *   finishPage      a page's parts -> runs/<run>/work/page-N.jsonl (one line per item of the page)
 *   finishRun       pages -> runs/<run>/manifest.jsonl + summary.json
 *
 * Item bytes only ever flow from Graph to the store inside exportPlanned; what goes back to the
 * orchestrator is counts and cursors.
 */

export interface RunFolder {
  id: string;
  displayName: string;
  parentFolderId?: string;
  type?: string;
  wellKnownName?: string | null;
  totalItemCount?: number;
}

export interface StartRunInput {
  mailboxId: string;
  /** What the user asked for (UPN, user id or MBX id): kept in mailbox.json for offline lookups. */
  requested: string;
  runId: string;
  startedAt: string;
}

export interface StartRunResult {
  folderCount: number;
  /** Sum of the folders' totalItemCount: the progress bar's total, an estimate. */
  estimatedItems: number;
}

/** Where the item walk stands: folder index in folders.json, and the delta link to continue it. */
export interface Cursor {
  folderIndex: number;
  link?: string;
}

export interface PlanPageInput {
  mailboxId: string;
  runId: string;
  pageNo: number;
  cursor: Cursor;
  pageItems: number;
  batchMaxBytes: number;
}

export interface PlanPageResult {
  batchCount: number;
  /** Listed bytes per batch, for dealing batches to lanes. */
  batchBytes: number[];
  /** Items per batch, so that a failing batch can be split without reading the plan. */
  batchSizes: number[];
  itemCount: number;
  /** Where the next page starts; undefined when every folder is done. */
  next?: Cursor;
  foldersDone: number;
}

export interface PagePlan {
  formatVersion: number;
  pageNo: number;
  batches: ExportItemRef[][];
  /** Message classes from the listing, by item id, for the manifest. */
  types: Record<string, string>;
  /** Items reported removed by the delta: recorded as `deleted`. */
  deleted: Array<{ itemId: string; folderId: string }>;
}

export interface ExportPlannedInput {
  mailboxId: string;
  runId: string;
  pageNo: number;
  batchNo: number;
  /** Set when the orchestrator split a failing batch: export only this item of it. */
  itemIndex?: number;
}

export interface ExportCounts {
  exported: number;
  failed: number;
  bytes: number;
}

export interface LostItem {
  batchNo: number;
  itemIndex: number;
  error: string;
}

export interface FinishPageInput {
  mailboxId: string;
  runId: string;
  pageNo: number;
  /** Batches whose items were exported one by one after the batch kept failing. */
  splitBatches: number[];
  /** Single items whose activity failed for good: recorded as failed with this reason. */
  lost: LostItem[];
}

export interface RunTotals {
  exported: number;
  unchanged: number;
  failed: number;
  deleted: number;
  bytes: number;
}

export interface FinishRunInput {
  mailboxId: string;
  requested: string;
  runId: string;
  startedAt: string;
  finishedAt: string;
  pageCount: number;
  folderCount: number;
}

export interface RunSummary extends RunTotals {
  formatVersion: number;
  runId: string;
  mailboxId: string;
  mailbox: string;
  startedAt: string;
  finishedAt: string;
  folders: number;
  /** Path of the run manifest relative to the store root. */
  manifest: string;
  /** A few failures, for a quick look; the manifest has them all. */
  failures: Array<{ itemId: string; folderId: string; error: { code: string; message: string } }>;
}

/** Batch split marker: a batch that keeps failing as a whole throws this so the orchestrator splits it. */
export const BATCH_FAILED = "BatchFailed";

const pagePlanPath = (mailboxId: string, runId: string, pageNo: number) => `${runRoot(mailboxId, runId)}/work/page-${pad(pageNo)}.json`;
const pagePartPath = (mailboxId: string, runId: string, pageNo: number, batchNo: number, itemIndex?: number) =>
  `${runRoot(mailboxId, runId)}/work/page-${pad(pageNo)}/batch-${pad(batchNo)}${itemIndex === undefined ? "" : `-item-${pad(itemIndex)}`}.jsonl`;
const pageManifestPath = (mailboxId: string, runId: string, pageNo: number) => `${runRoot(mailboxId, runId)}/work/page-${pad(pageNo)}.jsonl`;
const foldersPath = (mailboxId: string, runId: string) => `${runRoot(mailboxId, runId)}/folders.json`;

function pad(n: number): string {
  return String(n).padStart(5, "0");
}

export async function startRun(svc: Services, input: StartRunInput, signal?: AbortSignal): Promise<StartRunResult> {
  const folders: RunFolder[] = [];
  for await (const f of svc.mailbox.walkFolders(input.mailboxId, signal)) folders.push(toRunFolder(f));
  await svc.store.writeText(foldersPath(input.mailboxId, input.runId), JSON.stringify({ formatVersion: FORMAT_VERSION, folders }));
  await recordMailbox(svc, input.mailboxId, input.requested);
  return { folderCount: folders.length, estimatedItems: folders.reduce((n, f) => n + (f.totalItemCount ?? 0), 0) };
}

function toRunFolder(f: MailboxFolder): RunFolder {
  return { id: f.id, displayName: f.displayName, parentFolderId: f.parentFolderId, type: f.type, wellKnownName: f.wellKnownName ?? null, totalItemCount: f.totalItemCount };
}

/** mailbox.json: which ids and addresses this folder of the store belongs to. */
async function recordMailbox(svc: Services, mailboxId: string, requested: string): Promise<void> {
  const path = `${mailboxRoot(mailboxId)}/mailbox.json`;
  const prev = await svc.store.readText(path);
  const known = prev ? (JSON.parse(prev) as { addresses?: string[] }).addresses ?? [] : [];
  const addresses = [...new Set([...known, requested].filter((a) => a !== mailboxId))].sort();
  const next = JSON.stringify({ formatVersion: FORMAT_VERSION, mailboxId, addresses });
  if (next !== prev) await svc.store.writeText(path, next);
}

export async function readFolders(svc: Services, mailboxId: string, runId: string): Promise<RunFolder[]> {
  const text = await svc.store.readText(foldersPath(mailboxId, runId));
  if (text === undefined) throw new InvalidInputError(`run ${runId} has no folder list`, "RunNotFound");
  return (JSON.parse(text) as { folders: RunFolder[] }).folders;
}

export async function planPage(svc: Services, input: PlanPageInput, signal?: AbortSignal): Promise<PlanPageResult> {
  const folders = await cachedFolders(svc, input.mailboxId, input.runId);
  const items: ExportItemRef[] = [];
  const types: Record<string, string> = {};
  const deleted: PagePlan["deleted"] = [];
  let cursor: Cursor | undefined = { ...input.cursor };
  const startFolder = cursor.folderIndex;
  while (cursor && items.length < input.pageItems) {
    const folder = folders[cursor.folderIndex];
    if (!folder) {
      cursor = undefined;
      break;
    }
    const page = await svc.mailbox.itemsDeltaPage(input.mailboxId, folder.id, cursor.link, {
      pageSize: Math.min(1000, Math.max(10, input.pageItems - items.length)),
      signal,
    });
    for (const it of page.items) {
      items.push({ itemId: it.id, folderId: folder.id, changeKey: it.changeKey, size: it.size });
      if (it.type) types[it.id] = it.type;
    }
    for (const id of page.removed) deleted.push({ itemId: id, folderId: folder.id });
    if (page.nextLink) cursor = { folderIndex: cursor.folderIndex, link: page.nextLink };
    else cursor = cursor.folderIndex + 1 < folders.length ? { folderIndex: cursor.folderIndex + 1 } : undefined;
  }
  // The same item can be listed twice within a round (changed while we paged): keep the last listing.
  const unique = [...new Map(items.map((i) => [i.itemId, i])).values()];
  const plan: PagePlan = { formatVersion: FORMAT_VERSION, pageNo: input.pageNo, batches: planBatches(unique, input.batchMaxBytes), types, deleted };
  await svc.store.writeText(pagePlanPath(input.mailboxId, input.runId, input.pageNo), JSON.stringify(plan));
  const foldersDone = (cursor ? cursor.folderIndex : folders.length) - startFolder;
  const batchBytes = plan.batches.map((b) => b.reduce((n, i) => n + (i.size ?? 0), 0));
  return { batchCount: plan.batches.length, batchBytes, batchSizes: plan.batches.map((b) => b.length), itemCount: unique.length, next: cursor, foldersDone };
}

export async function exportPlanned(svc: Services, input: ExportPlannedInput, signal?: AbortSignal): Promise<ExportCounts> {
  const plan = await cachedPlan(svc, input.mailboxId, input.runId, input.pageNo);
  const batch = plan.batches[input.batchNo];
  if (!batch) throw new InvalidInputError(`page ${input.pageNo} has no batch ${input.batchNo}`);
  const items = input.itemIndex === undefined ? batch : [batch[input.itemIndex]].filter(Boolean);
  if (items.length === 0) throw new InvalidInputError(`batch ${input.batchNo} has no item ${input.itemIndex}`);
  const outcomes = await exportBatch({ mailbox: svc.mailbox, store: svc.store, logger: svc.logger }, { mailboxId: input.mailboxId, items }, { signal, retryDelayMs: svc.timing.exportRetryDelayMs });
  const callFailures = outcomes.filter((o) => o.status === "failed" && o.scope === "call");
  if (items.length > 1 && callFailures.length > 0) {
    // The call itself kept failing: let Durable retry the batch, then split it so that one poison item
    // cannot take nineteen good ones down with it. Items already stored are kept and found again.
    const first = callFailures[0];
    const why = first.status === "failed" ? `${first.error.code}: ${first.error.message}` : "";
    throw new Error(`${BATCH_FAILED}: ${callFailures.length} of ${items.length} items got no answer (${why})`);
  }
  const lines = outcomes.map((o) => outcomeToLine(o, plan.types[o.itemId]));
  await svc.store.writeText(pagePartPath(input.mailboxId, input.runId, input.pageNo, input.batchNo, input.itemIndex), toJsonl(lines));
  return {
    exported: outcomes.filter((o) => o.status === "exported").length,
    failed: outcomes.filter((o) => o.status === "failed").length,
    bytes: outcomes.reduce((n, o) => n + (o.status === "exported" ? o.size : 0), 0),
  };
}

export async function finishPage(svc: Services, input: FinishPageInput): Promise<RunTotals> {
  const plan = await cachedPlan(svc, input.mailboxId, input.runId, input.pageNo);
  const lines: ManifestLine[] = [];
  const split = new Set(input.splitBatches);
  for (let b = 0; b < plan.batches.length; b++) {
    const batch = plan.batches[b];
    if (!split.has(b)) {
      lines.push(...(await readPart(svc, pagePartPath(input.mailboxId, input.runId, input.pageNo, b), batch)));
      continue;
    }
    for (let i = 0; i < batch.length; i++) {
      const lost = input.lost.find((l) => l.batchNo === b && l.itemIndex === i);
      if (lost) {
        const ref = batch[i];
        lines.push({ itemId: ref.itemId, changeKey: ref.changeKey, folderId: ref.folderId, status: "failed", error: { code: "ExportActivityFailed", message: lost.error.slice(0, 2000) } });
        continue;
      }
      lines.push(...(await readPart(svc, pagePartPath(input.mailboxId, input.runId, input.pageNo, b, i), [batch[i]])));
    }
  }
  for (const d of plan.deleted) lines.push({ itemId: d.itemId, folderId: d.folderId, status: "deleted" });
  await svc.store.writeText(pageManifestPath(input.mailboxId, input.runId, input.pageNo), toJsonl(lines));
  return totalsOf(lines);
}

/** A part written by exportPlanned; an item missing from it (should not happen) is recorded as failed, never dropped. */
async function readPart(svc: Services, path: string, expected: ExportItemRef[]): Promise<ManifestLine[]> {
  const text = (await svc.store.readText(path)) ?? "";
  const got = new Map<string, ManifestLine>();
  for (const raw of text.split("\n")) if (raw.trim()) {
    const l = JSON.parse(raw) as ManifestLine;
    got.set(l.itemId, l);
  }
  return expected.map(
    (ref) =>
      got.get(ref.itemId) ?? {
        itemId: ref.itemId,
        changeKey: ref.changeKey,
        folderId: ref.folderId,
        status: "failed" as const,
        error: { code: "NoOutcome", message: "the export step left no record for this item" },
      },
  );
}

function totalsOf(lines: readonly ManifestLine[]): RunTotals {
  const t: RunTotals = { exported: 0, unchanged: 0, failed: 0, deleted: 0, bytes: 0 };
  for (const l of lines) {
    t[l.status]++;
    if (l.status === "exported") t.bytes += l.size ?? 0;
  }
  return t;
}

export async function finishRun(svc: Services, input: FinishRunInput): Promise<RunSummary> {
  const root = runRoot(input.mailboxId, input.runId);
  const manifest = manifestPath(input.mailboxId, input.runId);
  const totals: RunTotals = { exported: 0, unchanged: 0, failed: 0, deleted: 0, bytes: 0 };
  const failures: RunSummary["failures"] = [];
  const store = svc.store;
  async function* concat(): AsyncGenerator<Buffer> {
    for (let p = 0; p < input.pageCount; p++) {
      const path = pageManifestPath(input.mailboxId, input.runId, p);
      if ((await store.statObject(path)) === undefined) continue;
      for await (const l of readManifest(store, path)) {
        totals[l.status]++;
        if (l.status === "exported") totals.bytes += l.size ?? 0;
        if (l.status === "failed" && failures.length < 20 && l.error) failures.push({ itemId: l.itemId, folderId: l.folderId, error: l.error });
        yield Buffer.from(JSON.stringify(l) + "\n");
      }
    }
  }
  const stored = await store.putObject(manifest, concat());
  if (stored.existed) {
    // A retried finishRun: the manifest is already complete; count from it instead.
    for await (const l of readManifest(store, manifest)) {
      totals[l.status]++;
      if (l.status === "exported") totals.bytes += l.size ?? 0;
      if (l.status === "failed" && failures.length < 20 && l.error) failures.push({ itemId: l.itemId, folderId: l.folderId, error: l.error });
    }
  }
  const summary: RunSummary = {
    formatVersion: FORMAT_VERSION,
    runId: input.runId,
    mailboxId: input.mailboxId,
    mailbox: input.requested,
    startedAt: input.startedAt,
    finishedAt: input.finishedAt,
    folders: input.folderCount,
    ...totals,
    manifest,
    failures,
  };
  await store.writeText(summaryPath(input.mailboxId, input.runId), JSON.stringify(summary, null, 2));
  // The work files are scaffolding: the manifest now holds everything they said.
  for await (const p of store.listObjects(`${root}/work/`)) await store.deleteObject(p);
  return summary;
}

// Export activities of one page all read the same plan: keep the last few in memory.
const planCache = new Map<string, Promise<PagePlan>>();
const folderCache = new Map<string, Promise<RunFolder[]>>();

function remember<T>(cache: Map<string, Promise<T>>, key: string, load: () => Promise<T>): Promise<T> {
  let p = cache.get(key);
  if (!p) {
    p = load();
    p.catch(() => cache.delete(key));
    cache.set(key, p);
    while (cache.size > 16) cache.delete(cache.keys().next().value as string);
  }
  return p;
}

function cachedPlan(svc: Services, mailboxId: string, runId: string, pageNo: number): Promise<PagePlan> {
  const path = pagePlanPath(mailboxId, runId, pageNo);
  return remember(planCache, `${svc.store.location}|${path}`, async () => {
    const text = await svc.store.readText(path);
    if (text === undefined) throw new Error(`page plan missing: ${path}`);
    return JSON.parse(text) as PagePlan;
  });
}

function cachedFolders(svc: Services, mailboxId: string, runId: string): Promise<RunFolder[]> {
  return remember(folderCache, `${svc.store.location}|${mailboxId}|${runId}`, () => readFolders(svc, mailboxId, runId));
}

