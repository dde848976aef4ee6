import { describeError, InvalidInputError } from "../errors";
import { EwsError } from "../ews/soap";
import { readManifest, type ManifestLine } from "../backup/manifest";
import { readFolders, type RunFolder } from "../backup/backupRun";
import type { Services } from "../services";
import { mailboxRoot, FORMAT_VERSION, isRunId } from "../store/naming";
import { type ImportMode, resolveMailboxArg, sourceFor } from "../source";

/**
 * Restore: stored item versions of one run back into a mailbox (the same one or another), through
 * Graph import sessions or EWS UploadItems (the target mailbox id says which). Each step is one Durable activity and safe to repeat: what a page has
 * imported is recorded item by item, so a re-run after a crash skips it instead of importing twice.
 *
 *   startRestore   resolve the target, select the items (scope), write pages of work
 *   makeFolders    re-create the folder tree in the target (under a new folder by default)
 *   restorePage    import one page of items, recording each import
 *   finishRestore  the restore report
 *
 * Layout: mailboxes/<source>/restores/<restoreId>/{request.json, folders.json, pages/…, done/…, report.json}
 */

export interface RestoreRequest {
  restoreId: string;
  /** The source mailbox's `MBX:` id (as stored). */
  sourceMailboxId: string;
  /** The run to restore from. */
  runId: string;
  /** Target mailbox as given (UPN or MBX id); resolved by startRestore. */
  target: string;
  /** Only these source folders (and their subfolders); empty: all. */
  folders?: string[];
  /** Only these items; empty: all (within the folders). */
  items?: string[];
  /** Name of the folder the restore goes under (default "Restored <date> (<runId>)"); ignored with intoOriginalFolders. */
  targetFolderName?: string;
  /** Put items back into folders of the same path (well-known folders by their role), creating missing ones. */
  intoOriginalFolders?: boolean;
  /**
   * create (default): new items. update / upsert (EWS targets: UploadItems Update / UpdateOrCreate):
   * overwrite the backed-up item in place, and with upsert re-create it when it is gone. Both
   * restore into the original folders.
   */
  mode?: ImportMode;
}

export interface StartRestoreResult {
  targetMailboxId: string;
  itemCount: number;
  pageCount: number;
  bytes: number;
}

export interface RestorePageResult {
  imported: number;
  /** Imported by an earlier attempt of this restore: not imported again. */
  alreadyImported: number;
  failed: number;
  bytes: number;
}

export interface RestoreReport extends RestorePageResult {
  formatVersion: number;
  restoreId: string;
  sourceMailboxId: string;
  runId: string;
  targetMailboxId: string;
  items: number;
  startedAt: string;
  finishedAt: string;
  failures: Array<{ itemId: string; error: { code: string; message: string } }>;
}

interface PageItem {
  itemId: string;
  folderId: string;
  path: string;
  size: number;
}

interface DoneLine {
  itemId: string;
  status: "imported" | "failed";
  newItemId?: string;
  size?: number;
  error?: { code: string; message: string };
}

const PAGE_ITEMS = 200;
const root = (r: { sourceMailboxId: string; restoreId: string }) => {
  if (!isRunId(r.restoreId)) throw new InvalidInputError(`not a restore id: ${r.restoreId}`);
  return `${mailboxRoot(r.sourceMailboxId)}/restores/${r.restoreId}`;
};
const pagePath = (r: RestoreRequest, n: number) => `${root(r)}/pages/${String(n).padStart(5, "0")}.json`;
const donePath = (r: RestoreRequest, n: number) => `${root(r)}/done/${String(n).padStart(5, "0")}.jsonl`;
const folderMapPath = (r: RestoreRequest) => `${root(r)}/folders.json`;
export const restoreReportPath = (r: { sourceMailboxId: string; restoreId: string }) => `${root(r)}/report.json`;

export async function startRestore(svc: Services, r: RestoreRequest): Promise<StartRestoreResult> {
  const target = await resolveMailboxArg(svc.sources, r.target);
  const mode = r.mode ?? "create";
  if (mode !== "create" && target.mailboxId !== r.sourceMailboxId) {
    // Item ids name their mailbox: overwriting "the same item" only means something in the same one.
    throw new InvalidInputError(`restore mode ${mode} overwrites items in place, so the target must be the backed-up mailbox itself (${r.sourceMailboxId}); use mode create for another mailbox`, "UnsupportedRestoreMode");
  }
  if (!sourceFor(svc.sources, target.mailboxId).importModes.includes(mode)) {
    throw new InvalidInputError(`restore mode ${mode} needs an Exchange Server (EWS) target mailbox; Graph import sessions restore with mode create`, "UnsupportedRestoreMode");
  }
  const folders = await readFolders(svc, r.sourceMailboxId, r.runId);
  const wantedFolders = r.folders?.length ? withDescendants(folders, r.folders) : undefined;
  const wantedItems = r.items?.length ? new Set(r.items) : undefined;
  if (wantedFolders && wantedFolders.size === 0) throw new InvalidInputError("none of the requested folders is in that run", "FolderNotInRun");
  const manifest = `${mailboxRoot(r.sourceMailboxId)}/runs/${r.runId}/manifest.jsonl`;
  let page: PageItem[] = [];
  let pageCount = 0;
  let itemCount = 0;
  let bytes = 0;
  const found = new Set<string>();
  const flush = async () => {
    if (!page.length) return;
    await svc.store.writeText(pagePath(r, pageCount), JSON.stringify(page));
    pageCount++;
    page = [];
  };
  for await (const l of readManifest(svc.store, manifest)) {
    if (!isRestorable(l)) continue;
    if (wantedFolders && !wantedFolders.has(l.folderId)) continue;
    if (wantedItems && !wantedItems.has(l.itemId)) continue;
    found.add(l.itemId);
    page.push({ itemId: l.itemId, folderId: l.folderId, path: l.path as string, size: l.size ?? 0 });
    itemCount++;
    bytes += l.size ?? 0;
    if (page.length >= PAGE_ITEMS) await flush();
  }
  await flush();
  if (wantedItems) {
    const missing = [...wantedItems].filter((i) => !found.has(i));
    if (missing.length) throw new InvalidInputError(`${missing.length} requested item(s) are not stored in run ${r.runId}, e.g. ${missing[0].slice(0, 40)}`, "ItemNotInRun");
  }
  await svc.store.writeText(`${root(r)}/request.json`, JSON.stringify({ formatVersion: FORMAT_VERSION, ...r, targetMailboxId: target.mailboxId }));
  return { targetMailboxId: target.mailboxId, itemCount, pageCount, bytes };
}

function isRestorable(l: ManifestLine): boolean {
  return (l.status === "exported" || l.status === "unchanged") && typeof l.path === "string";
}

function withDescendants(folders: RunFolder[], roots: string[]): Set<string> {
  const known = new Set(folders.map((f) => f.id));
  const out = new Set(roots.filter((id) => known.has(id)));
  let grew = true;
  while (grew) {
    grew = false;
    for (const f of folders) if (f.parentFolderId && out.has(f.parentFolderId) && !out.has(f.id)) (out.add(f.id), (grew = true));
  }
  return out;
}

/**
 * Re-creates the source folders the selected items live in (with their ancestors) in the target:
 * under a new restore folder by default, or at their original paths. Returns nothing big: the
 * source-to-target folder map goes to the store.
 */
export async function makeFolders(svc: Services, r: RestoreRequest & { targetMailboxId: string; startedAt: string }): Promise<number> {
  const existing = await svc.store.readText(folderMapPath(r));
  if (existing) return Object.keys(JSON.parse(existing) as Record<string, string>).length;
  const folders = await readFolders(svc, r.sourceMailboxId, r.runId);
  const byId = new Map(folders.map((f) => [f.id, f]));
  const needed = new Set<string>();
  for (let n = 0; ; n++) {
    const text = await svc.store.readText(pagePath(r, n));
    if (!text) break;
    for (const i of JSON.parse(text) as PageItem[]) {
      for (let f = byId.get(i.folderId); f && !needed.has(f.id); f = f.parentFolderId ? byId.get(f.parentFolderId) : undefined) needed.add(f.id);
    }
  }
  const map: Record<string, string> = {};
  let restoreRootId: string | undefined;
  const target = sourceFor(svc.sources, r.targetMailboxId);
  const inPlace = r.intoOriginalFolders || (r.mode ?? "create") !== "create";
  if (!inPlace) {
    const name = r.targetFolderName ?? `Restored ${r.startedAt.slice(0, 10)} (${r.runId})`;
    restoreRootId = (await target.createFolder(r.targetMailboxId, undefined, { displayName: name })).id;
  }
  // Parents before children: folders.json lists the tree breadth first.
  for (const f of folders) {
    if (!needed.has(f.id)) continue;
    const parent = f.parentFolderId && map[f.parentFolderId];
    if (inPlace && r.targetMailboxId === r.sourceMailboxId && (await target.getFolder(r.targetMailboxId, f.id))) {
      // The same mailbox and the folder still exists: the item goes back where it was.
      map[f.id] = f.id;
      continue;
    }
    if (inPlace && f.wellKnownName) {
      const wk = await target.getFolder(r.targetMailboxId, f.wellKnownName);
      if (wk) {
        map[f.id] = wk.id;
        continue;
      }
    }
    const created = await target.createFolder(r.targetMailboxId, parent || restoreRootId, { displayName: f.displayName, type: f.type });
    map[f.id] = created.id;
  }
  await svc.store.writeText(folderMapPath(r), JSON.stringify(map));
  return Object.keys(map).length;
}

export async function restorePage(svc: Services, r: RestoreRequest & { targetMailboxId: string; pageNo: number }): Promise<RestorePageResult> {
  const page = JSON.parse((await svc.store.readText(pagePath(r, r.pageNo))) ?? "[]") as PageItem[];
  const map = JSON.parse((await svc.store.readText(folderMapPath(r))) ?? "{}") as Record<string, string>;
  const donePathN = donePath(r, r.pageNo);
  const done = new Map<string, DoneLine>();
  for (const raw of ((await svc.store.readText(donePathN)) ?? "").split("\n")) {
    if (!raw.trim()) continue;
    const l = JSON.parse(raw) as DoneLine;
    done.set(l.itemId, l);
  }
  const target = sourceFor(svc.sources, r.targetMailboxId);
  const mode = r.mode ?? "create";
  const result: RestorePageResult = { imported: 0, alreadyImported: 0, failed: 0, bytes: 0 };
  const write = () => svc.store.writeText(donePathN, [...done.values()].map((l) => JSON.stringify(l) + "\n").join(""));
  for (const item of page) {
    if (done.get(item.itemId)?.status === "imported") {
      result.alreadyImported++;
      continue;
    }
    const folderId = map[item.folderId];
    let line: DoneLine;
    try {
      if (!folderId) throw new InvalidInputError("no target folder for this item's folder", "NoTargetFolder");
      const imported = await target.importItem(r.targetMailboxId, { folderId, size: item.size, open: () => svc.store.openObject(item.path), mode, ...(mode === "create" ? {} : { itemId: item.itemId }) });
      line = { itemId: item.itemId, status: "imported", newItemId: imported.itemId, size: item.size };
      result.imported++;
      result.bytes += item.size;
    } catch (e) {
      if (isFatalForPage(e)) throw e;
      line = { itemId: item.itemId, status: "failed", error: describeError(e) };
      result.failed++;
      svc.logger.log("warn", "item not restored", { code: line.error?.code });
    }
    done.set(item.itemId, line);
    // Recorded before the next item: a crash after this point never imports this item again.
    await write();
  }
  return result;
}

/** Failures that will hit every item of the page alike: let Durable retry the page instead. */
function isFatalForPage(e: unknown): boolean {
  const code = describeError(e).code;
  if (e instanceof EwsError && e.retryable) return true; // the server or the link is down: every item would fail alike
  return code === "ImportNetworkError" || /^Http5|ServiceUnavailable|InternalServerError/.test(code) || (e as { status?: number }).status === 503;
}

export async function finishRestore(
  svc: Services,
  r: RestoreRequest & { targetMailboxId: string; startedAt: string; finishedAt: string; pageCount: number; items: number; alreadyImported: number },
): Promise<RestoreReport> {
  const report: RestoreReport = {
    formatVersion: FORMAT_VERSION,
    restoreId: r.restoreId,
    sourceMailboxId: r.sourceMailboxId,
    runId: r.runId,
    targetMailboxId: r.targetMailboxId,
    items: r.items,
    startedAt: r.startedAt,
    finishedAt: r.finishedAt,
    // Imported over every attempt of this restore; alreadyImported of them by an earlier one.
    imported: 0,
    alreadyImported: r.alreadyImported,
    failed: 0,
    bytes: 0,
    failures: [],
  };
  for (let n = 0; n < r.pageCount; n++) {
    const lines = new Map<string, DoneLine>();
    for (const raw of ((await svc.store.readText(donePath(r, n))) ?? "").split("\n")) {
      if (!raw.trim()) continue;
      const l = JSON.parse(raw) as DoneLine;
      lines.set(l.itemId, l);
    }
    // An item of a page that kept failing as a whole has no record: it is reported, never dropped.
    for (const i of JSON.parse((await svc.store.readText(pagePath(r, n))) ?? "[]") as PageItem[]) {
      if (!lines.has(i.itemId)) lines.set(i.itemId, { itemId: i.itemId, status: "failed", error: { code: "NotAttempted", message: "its page failed before this item was imported; run the restore again" } });
    }
    for (const l of lines.values()) {
      if (l.status === "imported") {
        report.imported++;
        report.bytes += l.size ?? 0;
      } else {
        report.failed++;
        if (report.failures.length < 50 && l.error) report.failures.push({ itemId: l.itemId, error: l.error });
      }
    }
  }
  await svc.store.writeText(restoreReportPath(r), JSON.stringify(report, null, 2));
  return report;
}
