import { GraphError, InvalidInputError } from "../errors";
import { type ExportItemRef, exportBatch } from "../export/exportBatch";
import type { DeltaPage, MailboxFolder } from "../graph/mailboxApi";
import type { Services } from "../services";
import { sourceFor } from "../source";
import { FORMAT_VERSION, itemObjectPath, mailboxRoot, manifestPath, runRoot, summaryPath } from "../store/naming";
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
  /** Where this run's item delta of the folder starts: the link committed by the base run, if any. */
  deltaLink?: string;
  displayName: string;
  parentFolderId?: string;
  type?: string;
  wellKnownName?: string | null;
  totalItemCount?: number;
}

export interface StartRunInput {
  mailboxId: string;
  /** Ignore committed delta links: enumerate every folder (unchanged versions are still not re-exported). */
  full?: boolean;
  /** What the user asked for (UPN, user id or MBX id): kept in mailbox.json for offline lookups. */
  requested: string;
  runId: string;
  startedAt: string;
}

export interface StartRunResult {
  folderCount: number;
  /** The last complete run, whose manifest this run builds on (undefined for a first run). */
  baseRunId?: string;
  /** Items that failed in the base run and are tried again in this one. */
  retryCount: number;
  /** Sum of the folders' totalItemCount: the progress bar's total, an estimate. */
  estimatedItems: number;
}

/** Where the item walk stands: folder index in folders.json, and the delta link to continue it. */
export interface Cursor {
  folderIndex: number;
  /** Undefined at the start of a folder: its committed deltaLink, or a full enumeration. */
  link?: string;
  /** The folder's current round started without a delta link (every item is listed). */
  full?: boolean;
}

export interface PlanPageInput {
  mailboxId: string;
  runId: string;
  baseRunId?: string;
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
  /** Listed items whose version the base run already stored: recorded as `unchanged`, not exported. */
  unchanged: Array<{ itemId: string; folderId: string; changeKey: string }>;
  /** Folders whose delta round ended in this page: the link to commit, and whether the round was a full enumeration. */
  rounds: FolderRound[];
}

export interface FolderRound {
  folderId: string;
  deltaLink: string;
  full: boolean;
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
  baseRunId?: string;
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
  /** The run this one was built on (incremental), if any. */
  baseRunId?: string;
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
const retryPath = (mailboxId: string, runId: string) => `${runRoot(mailboxId, runId)}/work/retry.json`;
/** Committed incremental state: the delta link per folder and the run it belongs to. */
export const deltaStatePath = (mailboxId: string) => `${mailboxRoot(mailboxId)}/state/delta.json`;

export interface DeltaState {
  formatVersion: number;
  /** The run whose manifest describes the mailbox as of these links. */
  runId: string;
  folders: Record<string, string>;
}

async function readDeltaState(svc: Services, mailboxId: string): Promise<DeltaState | undefined> {
  const text = await svc.store.readText(deltaStatePath(mailboxId));
  return text ? (JSON.parse(text) as DeltaState) : undefined;
}

function pad(n: number): string {
  return String(n).padStart(5, "0");
}

export async function startRun(svc: Services, input: StartRunInput, signal?: AbortSignal): Promise<StartRunResult> {
  const state = await readDeltaState(svc, input.mailboxId);
  const baseRunId = state && (await svc.store.statObject(manifestPath(input.mailboxId, state.runId))) ? state.runId : undefined;
  const links = baseRunId && !input.full ? (state as DeltaState).folders : {};
  const folders: RunFolder[] = [];
  for await (const f of sourceFor(svc.sources, input.mailboxId).walkFolders(input.mailboxId, signal)) {
    const folder = toRunFolder(f);
    if (links[f.id]) folder.deltaLink = links[f.id];
    folders.push(folder);
  }
  await svc.store.writeText(foldersPath(input.mailboxId, input.runId), JSON.stringify({ formatVersion: FORMAT_VERSION, folders }));
  // Items that failed last time are asked for again: the delta will not list them, they did not change.
  const retry: ExportItemRef[] = [];
  if (baseRunId) {
    for await (const l of readManifest(svc.store, manifestPath(input.mailboxId, baseRunId))) {
      if (l.status === "failed" && l.changeKey) retry.push({ itemId: l.itemId, folderId: l.folderId, changeKey: l.changeKey });
    }
  }
  await svc.store.writeText(retryPath(input.mailboxId, input.runId), JSON.stringify(retry));
  await recordMailbox(svc, input.mailboxId, input.requested);
  return { folderCount: folders.length, estimatedItems: folders.reduce((n, f) => n + (f.totalItemCount ?? 0), 0), baseRunId, retryCount: retry.length };
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
  const base = input.baseRunId ? await cachedBaseIndex(svc, input.mailboxId, input.baseRunId) : undefined;
  const listed: ExportItemRef[] = [];
  const types: Record<string, string> = {};
  const deleted: PagePlan["deleted"] = [];
  const rounds: FolderRound[] = [];
  const source = sourceFor(svc.sources, input.mailboxId);
  if (input.pageNo === 0) {
    const retry = JSON.parse((await svc.store.readText(retryPath(input.mailboxId, input.runId))) ?? "[]") as ExportItemRef[];
    listed.push(...retry);
  }
  let cursor: Cursor | undefined = { ...input.cursor };
  const startFolder = cursor.folderIndex;
  while (cursor && listed.length < input.pageItems) {
    const folder: RunFolder | undefined = folders[cursor.folderIndex];
    if (!folder) {
      cursor = undefined;
      break;
    }
    const starting: boolean = cursor.link === undefined;
    const link: string | undefined = starting ? folder.deltaLink : cursor.link;
    const full: boolean = starting ? !folder.deltaLink : Boolean(cursor.full);
    let page: DeltaPage;
    try {
      page = await source.itemsDeltaPage(input.mailboxId, folder.id, link, {
        pageSize: Math.min(source.maxDeltaPageSize, Math.max(10, input.pageItems - listed.length)),
        signal,
      });
    } catch (e) {
      if (link && isExpiredDelta(e)) {
        // The delta token expired or was rejected: enumerate the folder again from scratch. Versions
        // the base run stored are recognised by changeKey below, so nothing unchanged is exported.
        svc.logger.log("warn", "delta token rejected; enumerating the folder again", { folder: folder.displayName });
        cursor = { folderIndex: cursor.folderIndex, link: undefined, full: true };
        folder.deltaLink = undefined;
        continue;
      }
      if (isFolderNotFound(e) && !(await source.getFolder(input.mailboxId, folder.id, signal))) {
        // Deleted since the run listed it: its round ends empty, so finishRun records the items the
        // base run had there as deleted, and no cursor is kept for it.
        svc.logger.log("warn", "folder deleted during the run; its items are recorded as deleted", { folder: folder.displayName });
        rounds.push({ folderId: folder.id, deltaLink: "", full: true });
        cursor = cursor.folderIndex + 1 < folders.length ? { folderIndex: cursor.folderIndex + 1 } : undefined;
        continue;
      }
      throw e;
    }
    for (const it of page.items) {
      listed.push({ itemId: it.id, folderId: folder.id, changeKey: it.changeKey, size: it.size });
      if (it.type) types[it.id] = it.type;
    }
    for (const id of page.removed) deleted.push({ itemId: id, folderId: folder.id });
    if (page.nextLink) cursor = { folderIndex: cursor.folderIndex, link: page.nextLink, full };
    else {
      rounds.push({ folderId: folder.id, deltaLink: page.deltaLink as string, full });
      cursor = cursor.folderIndex + 1 < folders.length ? { folderIndex: cursor.folderIndex + 1 } : undefined;
    }
  }
  // The same item can be listed twice within a round (changed while we paged): keep the last listing.
  const unique = [...new Map(listed.map((i) => [i.itemId, i])).values()];
  const toExport: ExportItemRef[] = [];
  const unchanged: PagePlan["unchanged"] = [];
  for (const i of unique) {
    const known = base?.get(i.itemId);
    if (known !== undefined && i.changeKey !== undefined && known === i.changeKey) unchanged.push({ itemId: i.itemId, folderId: i.folderId, changeKey: i.changeKey });
    else toExport.push(i);
  }
  const plan: PagePlan = {
    formatVersion: FORMAT_VERSION,
    pageNo: input.pageNo,
    batches: planBatches(toExport, input.batchMaxBytes, source.maxExportIds),
    types,
    deleted,
    unchanged,
    rounds,
  };
  await svc.store.writeText(pagePlanPath(input.mailboxId, input.runId, input.pageNo), JSON.stringify(plan));
  planCache.delete(`${svc.store.location}|${pagePlanPath(input.mailboxId, input.runId, input.pageNo)}`);
  const foldersDone = (cursor ? cursor.folderIndex : folders.length) - startFolder;
  const batchBytes = plan.batches.map((b) => b.reduce((n, i) => n + (i.size ?? 0), 0));
  return { batchCount: plan.batches.length, batchBytes, batchSizes: plan.batches.map((b) => b.length), itemCount: unique.length, next: cursor, foldersDone };
}

/** A folder that is not there (any more): Graph 404, EWS ErrorFolderNotFound. */
function isFolderNotFound(e: unknown): boolean {
  if (!(e instanceof GraphError)) return false;
  return e.status === 404 || /^(ErrorFolderNotFound|ErrorItemNotFound|ErrorSyncFolderNotFound)$/.test(e.code);
}

/** The answer to a delta link (Graph) or sync state (EWS ErrorInvalidSyncStateData) no longer honoured. */
function isExpiredDelta(e: unknown): boolean {
  if (!(e instanceof GraphError)) return false;
  return e.status === 410 || /syncstate|resyncrequired|invaliddelta|deltatoken/i.test(e.code);
}

export async function exportPlanned(svc: Services, input: ExportPlannedInput, signal?: AbortSignal): Promise<ExportCounts> {
  const plan = await cachedPlan(svc, input.mailboxId, input.runId, input.pageNo);
  const batch = plan.batches[input.batchNo];
  if (!batch) throw new InvalidInputError(`page ${input.pageNo} has no batch ${input.batchNo}`);
  const items = input.itemIndex === undefined ? batch : [batch[input.itemIndex]].filter(Boolean);
  if (items.length === 0) throw new InvalidInputError(`batch ${input.batchNo} has no item ${input.itemIndex}`);
  const outcomes = await exportBatch({ mailbox: sourceFor(svc.sources, input.mailboxId), store: svc.store, logger: svc.logger }, { mailboxId: input.mailboxId, items }, { signal, retryDelayMs: svc.timing.exportRetryDelayMs });
  // Only failures that splitting could cure: a whole-call answer that asking again will not change
  // (no permission, token rejected) is recorded for every item instead of churning through retries.
  const callFailures = outcomes.filter((o) => o.status === "failed" && o.scope === "call" && o.retryable);
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
  for (const u of plan.unchanged) {
    lines.push({ itemId: u.itemId, changeKey: u.changeKey, folderId: u.folderId, status: "unchanged", path: itemObjectPath(input.mailboxId, u.itemId, u.changeKey) });
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

/**
 * Writes the run manifest (one line per item of the mailbox as of this run) and the summary, then
 * commits the folders' delta links. The manifest merges this run's pages with the base run's
 * manifest: an item this run did not list is `unchanged` (pointing at the version stored before),
 * unless its folder is gone or was enumerated in full without it, in which case it is `deleted`.
 * Links are committed last, so a run that dies earlier leaves the previous state to start from.
 */
export async function finishRun(svc: Services, input: FinishRunInput): Promise<RunSummary> {
  const root = runRoot(input.mailboxId, input.runId);
  const manifest = manifestPath(input.mailboxId, input.runId);
  const store = svc.store;
  const totals: RunTotals = { exported: 0, unchanged: 0, failed: 0, deleted: 0, bytes: 0 };
  const failures: RunSummary["failures"] = [];
  const count = (l: ManifestLine) => {
    totals[l.status]++;
    if (l.status === "exported") totals.bytes += l.size ?? 0;
    if (l.status === "failed" && failures.length < 20 && l.error) failures.push({ itemId: l.itemId, folderId: l.folderId, error: l.error });
  };
  const plans: PagePlan[] = [];
  for (let p = 0; p < input.pageCount; p++) plans.push(await cachedPlan(svc, input.mailboxId, input.runId, p));
  const folders = await cachedFolders(svc, input.mailboxId, input.runId);

  async function* thisRun(): AsyncGenerator<ManifestLine> {
    for (let p = 0; p < input.pageCount; p++) {
      const path = pageManifestPath(input.mailboxId, input.runId, p);
      if ((await store.statObject(path)) !== undefined) yield* readManifest(store, path);
    }
  }

  async function* merged(): AsyncGenerator<ManifestLine> {
    if (!input.baseRunId) {
      yield* thisRun();
      return;
    }
    // This run's lines by item (small for an incremental run); a deletion seen in one folder does
    // not undo the same item listed in another (a move).
    const current = new Map<string, ManifestLine>();
    for await (const l of thisRun()) {
      const prev = current.get(l.itemId);
      if (!prev || prev.status === "deleted" || l.status !== "deleted") current.set(l.itemId, l);
    }
    const present = new Set(folders.map((f) => f.id));
    const enumerated = new Set(plans.flatMap((p) => p.rounds.filter((r) => r.full).map((r) => r.folderId)));
    for await (const b of readManifest(store, manifestPath(input.mailboxId, input.baseRunId))) {
      if (b.status === "deleted") continue;
      const l = current.get(b.itemId);
      if (l) {
        current.delete(b.itemId);
        yield l.status === "unchanged" && b.sha256 && l.changeKey === b.changeKey ? { ...b, ...l, size: b.size, sha256: b.sha256 } : l;
      } else if (b.status === "failed") {
        yield b; // was to be retried and was not reached: keep the failure on record
      } else if (!present.has(b.folderId) || enumerated.has(b.folderId)) {
        yield { itemId: b.itemId, changeKey: b.changeKey, folderId: b.folderId, status: "deleted" };
      } else {
        yield { ...b, status: "unchanged" };
      }
    }
    for (const l of current.values()) if (l.status !== "deleted" || !input.baseRunId) yield l;
  }

  async function* lines(): AsyncGenerator<Buffer> {
    for await (const l of merged()) {
      count(l);
      yield Buffer.from(JSON.stringify(l) + "\n");
    }
  }
  const stored = await store.putObject(manifest, lines());
  if (stored.existed) {
    // A retried finishRun: the manifest is already complete; count from it instead.
    for await (const l of readManifest(store, manifest)) count(l);
  }
  const summary: RunSummary = {
    formatVersion: FORMAT_VERSION,
    runId: input.runId,
    mailboxId: input.mailboxId,
    mailbox: input.requested,
    startedAt: input.startedAt,
    finishedAt: input.finishedAt,
    folders: input.folderCount,
    ...(input.baseRunId ? { baseRunId: input.baseRunId } : {}),
    ...totals,
    manifest,
    failures,
  };
  await store.writeText(summaryPath(input.mailboxId, input.runId), JSON.stringify(summary, null, 2));

  // Commit: every folder's round ended in this run and its items are stored or recorded as failed
  // (failures are tried again next run), so the links may move on. Folders that are gone drop out.
  const links: Record<string, string> = {};
  for (const f of folders) if (f.deltaLink) links[f.id] = f.deltaLink;
  for (const p of plans) for (const r of p.rounds) {
    if (r.deltaLink) links[r.folderId] = r.deltaLink;
    else delete links[r.folderId]; // the folder went away during the run
  }
  const state: DeltaState = { formatVersion: FORMAT_VERSION, runId: input.runId, folders: links };
  await store.writeText(deltaStatePath(input.mailboxId), JSON.stringify(state));

  // The work files are scaffolding: the manifest now holds everything they said.
  for await (const p of store.listObjects(`${root}/work/`)) await store.deleteObject(p);
  return summary;
}

// Export activities of one page all read the same plan: keep the last few in memory.
const planCache = new Map<string, Promise<PagePlan>>();
const baseCache = new Map<string, Promise<Map<string, string>>>();
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

/** itemId -> changeKey of every version the base run had stored: how unchanged items are recognised. */
function cachedBaseIndex(svc: Services, mailboxId: string, baseRunId: string): Promise<Map<string, string>> {
  return remember(baseCache, `${svc.store.location}|${mailboxId}|${baseRunId}`, async () => {
    const index = new Map<string, string>();
    for await (const l of readManifest(svc.store, manifestPath(mailboxId, baseRunId))) {
      if ((l.status === "exported" || l.status === "unchanged") && l.changeKey) index.set(l.itemId, l.changeKey);
    }
    return index;
  });
}
