import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { backupOnHost } from "../cli/localRun";
import type { RunSummary } from "../shared/backup/backupRun";
import type { ManifestLine } from "../shared/backup/manifest";
import { listRuns } from "../shared/catalog";
import type { ItemStore } from "../shared/store/itemStore";
import { verifyRun } from "../shared/verify";
import { ExchangeSimulator, type SimMailbox } from "./simulator";
import { manifestLines, startTestApp, tempStore } from "./support/apps";

/** Incremental runs on the local host: delta links, changeKeys, deletions, folder changes, recovery. */

let sim: ExchangeSimulator;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  sim = await ExchangeSimulator.start({ seed: 41 });
});
afterAll(async () => {
  for (const c of cleanups) await c();
  await sim.close();
});

async function run(store: ItemStore, mailbox: string, full = false): Promise<{ summary: RunSummary; lines: Map<string, ManifestLine>; exportCalls: number }> {
  const t = await startTestApp(sim, store);
  sim.resetStats();
  try {
    const o = await backupOnHost(t.app, t.services, mailbox, { full });
    if (!o.summary) throw new Error(JSON.stringify(o.error));
    const lines = new Map((await manifestLines(store, o.summary.manifest)).map((l) => [l.itemId, l]));
    return { summary: o.summary, lines, exportCalls: sim.stats.exportItemsCalls };
  } finally {
    await t.stop();
  }
}

async function fresh(upn: string, items = 120): Promise<{ mbx: SimMailbox; store: ItemStore }> {
  const mbx = sim.generateMailbox({ upn, folders: 6, maxDepth: 2, items, seed: upn.length, size: () => 1500 });
  const { store, cleanup } = await tempStore();
  cleanups.push(cleanup);
  return { mbx, store };
}

describe("incremental backups", () => {
  it("makes no export call when nothing changed, and the manifest still lists every item", async () => {
    const { store } = await fresh("same@contoso.com");
    const first = await run(store, "same@contoso.com");
    expect(first.summary).toMatchObject({ exported: 120, unchanged: 0 });
    const second = await run(store, "same@contoso.com");
    expect(second.exportCalls).toBe(0);
    expect(second.summary).toMatchObject({ exported: 0, unchanged: 120, deleted: 0, failed: 0, baseRunId: first.summary.runId });
    for (const [id, l] of second.lines) {
      expect(l.status).toBe("unchanged");
      expect(l.sha256).toBe(first.lines.get(id)?.sha256);
      expect(l.path).toBe(first.lines.get(id)?.path);
    }
    expect(sim.stats.requests.itemsDelta).toBeGreaterThan(0);
  });

  it("exports exactly the changes: 3 added, 2 modified, 1 deleted, a folder moved", async () => {
    const { mbx, store } = await fresh("changes@contoso.com");
    const first = await run(store, "changes@contoso.com");
    const items = sim.listItems(mbx.mailboxId);
    const folders = sim.listFolders(mbx.mailboxId).filter((f) => !f.wellKnownName);
    const added = [0, 1, 2].map(() => sim.addItem(mbx.mailboxId, folders[0].id, { size: 2222 }).id);
    const modified = [items[10].id, items[20].id];
    for (const id of modified) sim.modifyItem(mbx.mailboxId, id);
    sim.deleteItem(mbx.mailboxId, items[30].id);
    const moved = folders[1];
    sim.moveFolder(mbx.mailboxId, moved.id, mbx.wellKnownFolders.archive);

    const second = await run(store, "changes@contoso.com");
    expect(second.summary).toMatchObject({ exported: 5, deleted: 1, unchanged: 117, failed: 0 });
    expect(second.exportCalls).toBe(1);
    const exported = [...second.lines.values()].filter((l) => l.status === "exported").map((l) => l.itemId).sort();
    expect(exported).toEqual([...added, ...modified].sort());
    expect(second.lines.get(items[30].id)?.status).toBe("deleted");
    for (const id of modified) {
      expect(second.lines.get(id)?.sha256).toBe(sim.itemSha256(mbx.mailboxId, id));
      expect(second.lines.get(id)?.path).not.toBe(first.lines.get(id)?.path);
    }
    // Point in time: the first run's versions are all still there, byte for byte.
    const report = await verifyRun(store, { mailboxId: mbx.mailboxId, runId: first.summary.runId, manifest: first.summary.manifest });
    expect(report).toMatchObject({ checked: 120, ok: 120, problems: [] });
    const runs = await listRuns(store, mbx.mailboxId);
    expect(runs.map((r) => r.runId)).toEqual([first.summary.runId, second.summary.runId]);

    // A third run after the deletion no longer lists the deleted item.
    const third = await run(store, "changes@contoso.com");
    expect(third.exportCalls).toBe(0);
    expect(third.lines.has(items[30].id)).toBe(false);
    expect(third.summary).toMatchObject({ exported: 0, unchanged: 122, deleted: 0 });
  });

  it("recovers from an invalidated delta token without re-exporting unchanged items", async () => {
    const { mbx, store } = await fresh("expired@contoso.com");
    await run(store, "expired@contoso.com");
    const items = sim.listItems(mbx.mailboxId);
    sim.deleteItem(mbx.mailboxId, items[5].id);
    sim.modifyItem(mbx.mailboxId, items[6].id);
    sim.invalidateDeltaTokens(mbx.mailboxId);
    const second = await run(store, "expired@contoso.com");
    expect(second.summary).toMatchObject({ exported: 1, deleted: 1, unchanged: 118, failed: 0 });
    expect(second.exportCalls).toBe(1);
    expect(sim.stats.statuses?.["410"] ?? 1).toBeGreaterThan(0);
    const third = await run(store, "expired@contoso.com");
    expect(third.exportCalls).toBe(0);
  });

  it("handles new, renamed and deleted folders", async () => {
    const { mbx, store } = await fresh("folders@contoso.com");
    await run(store, "folders@contoso.com");
    const userFolders = sim.listFolders(mbx.mailboxId).filter((f) => !f.wellKnownName);
    const gone = userFolders.find((f) => sim.listItems(mbx.mailboxId, f.id).length > 0) as (typeof userFolders)[number];
    const goneItems = sim.listItems(mbx.mailboxId, gone.id).map((i) => i.id);
    const renamed = userFolders.find((f) => f.id !== gone.id && f.parentFolderId !== gone.id) as { id: string };
    sim.renameFolder(mbx.mailboxId, renamed.id, "Renamed folder");
    const created = sim.addFolder(mbx.mailboxId, { displayName: "Brand new" });
    const newItems = [sim.addItem(mbx.mailboxId, created.id, { size: 900 }).id, sim.addItem(mbx.mailboxId, created.id, { size: 901 }).id];
    const nestedGone = sim.listFolders(mbx.mailboxId).filter((f) => f.parentFolderId === gone.id).flatMap((f) => sim.listItems(mbx.mailboxId, f.id).map((i) => i.id));
    sim.deleteFolder(mbx.mailboxId, gone.id);

    const second = await run(store, "folders@contoso.com");
    expect(second.summary.exported).toBe(2);
    for (const id of newItems) expect(second.lines.get(id)).toMatchObject({ status: "exported", folderId: created.id });
    for (const id of [...goneItems, ...nestedGone]) expect(second.lines.get(id)?.status).toBe("deleted");
    expect(second.summary.deleted).toBe(goneItems.length + nestedGone.length);
    expect(second.exportCalls).toBe(1);
    const tree = JSON.parse((await store.readText(second.summary.manifest.replace("manifest.jsonl", "folders.json"))) as string) as { folders: Array<{ id: string; displayName: string }> };
    expect(tree.folders.find((f) => f.id === renamed.id)?.displayName).toBe("Renamed folder");
  });

  it("tries items that failed last time again, and a full pass re-reads everything without re-exporting", async () => {
    const { mbx, store } = await fresh("retry@contoso.com", 40);
    const bad = sim.listItems(mbx.mailboxId)[7].id;
    sim.faults.add({ route: "exportItems", kind: "itemError", itemId: bad, code: "ErrorCorruptData", times: Infinity });
    const first = await run(store, "retry@contoso.com");
    sim.faults.clear();
    expect(first.summary).toMatchObject({ exported: 39, failed: 1 });
    const second = await run(store, "retry@contoso.com");
    expect(second.summary).toMatchObject({ exported: 1, failed: 0, unchanged: 39 });
    expect(second.lines.get(bad)).toMatchObject({ status: "exported", sha256: sim.itemSha256(mbx.mailboxId, bad) });

    const full = await run(store, "retry@contoso.com", true);
    expect(full.exportCalls).toBe(0);
    expect(full.summary).toMatchObject({ exported: 0, unchanged: 40, deleted: 0 });
    expect(sim.stats.requests.itemsDelta).toBeGreaterThanOrEqual(6);
  });
});
