import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { backupOnHost } from "../cli/localRun";
import type { RunSummary } from "../shared/backup/backupRun";
import type { ItemStore, PutObjectOptions, StoredObject } from "../shared/store/itemStore";
import { verifyRun } from "../shared/verify";
import { DEFAULT_PAGE_ITEMS } from "../shared/backup/orchestration";
import { ExchangeSimulator } from "./simulator";
import { azuriteStore, manifestLines, startTestApp, tempStore } from "./support/apps";

/**
 * End to end on the local durable host: the app's real registrations and the real replay engine,
 * the real Graph client against the Exchange simulator over HTTP, real stores (Azurite, folders).
 */

let sim: ExchangeSimulator;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  sim = await ExchangeSimulator.start({ seed: 11 });
});
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await sim.close();
});

async function backup(store: ItemStore, mailbox: string, options: { pageItems?: number; maxEventsPerEpisode?: number } = {}) {
  const t = await startTestApp(sim, store, { maxEventsPerEpisode: options.maxEventsPerEpisode });
  try {
    const outcome = await backupOnHost(t.app, t.services, mailbox, { pageItems: options.pageItems });
    if (!outcome.summary) throw new Error(`run failed: ${JSON.stringify(outcome.error)}`);
    const instances = t.app.host.listInstances();
    const metrics = instances.map((i) => ({ id: i.instanceId, ...t.app.host.metrics(i.instanceId) }));
    return { summary: outcome.summary, metrics, logs: t.logs };
  } finally {
    await t.stop();
  }
}

describe("backup orchestration", () => {
  it("stores and verifies a 5,000-item mailbox across 30 folders in Azurite, within the per-mailbox request limit", async () => {
    const mbx = sim.generateMailbox({ upn: "big@contoso.com", folders: 30, maxDepth: 3, items: 5000, seed: 5, size: (_i, r) => 200 + Math.floor(r() * 3000) });
    const store = await azuriteStore(inject("azuriteConnectionString"));
    sim.resetStats();
    const { summary } = await backup(store, "big@contoso.com");

    expect(summary).toMatchObject({ exported: 5000, failed: 0, unchanged: 0, deleted: 0 });
    expect(sim.stats.maxInFlight.get(mbx.mailboxId)).toBeLessThanOrEqual(4);
    expect(sim.stats.throttledByConcurrency).toBe(0);

    const lines = await manifestLines(store, summary.manifest);
    expect(lines).toHaveLength(5000);
    expect(new Set(lines.map((l) => l.itemId)).size).toBe(5000);
    const folders = new Set(sim.listFolders(mbx.mailboxId).map((f) => f.id));
    for (const l of lines) {
      expect(l.status).toBe("exported");
      expect(folders.has(l.folderId)).toBe(true);
      expect(l.sha256).toBe(sim.itemSha256(mbx.mailboxId, l.itemId));
    }
    const report = await verifyRun(store, { mailboxId: mbx.mailboxId, runId: summary.runId, manifest: summary.manifest }, { concurrency: 16 });
    expect(report).toMatchObject({ checked: 5000, ok: 5000, problems: [] });
  }, 240_000);

  it("slows down under a 429 storm but loses nothing", async () => {
    const mbx = sim.generateMailbox({ upn: "storm@contoso.com", folders: 4, items: 400, seed: 6, size: () => 2000 });
    const { store, cleanup } = await tempStore();
    cleanups.push(cleanup);
    sim.resetStats();
    sim.faults.seed(3);
    sim.faults.add({ route: "exportItems", mailboxId: mbx.mailboxId, kind: "status", status: 429, retryAfterSeconds: 0, probability: 0.5, times: 40 });
    sim.faults.add({ route: "itemsDelta", mailboxId: mbx.mailboxId, kind: "status", status: 503, retryAfterSeconds: 0, probability: 0.3, times: 5 });
    const { summary } = await backup(store, "storm@contoso.com");
    sim.faults.clear();
    expect(sim.stats.throttledByFault).toBeGreaterThan(10);
    expect(summary).toMatchObject({ exported: 400, failed: 0 });
    const report = await verifyRun(store, { mailboxId: mbx.mailboxId, runId: summary.runId, manifest: summary.manifest });
    expect(report.ok).toBe(400);
  });

  it("retries an activity that dies after storing items but before reporting, and ends as a clean run does", async () => {
    const mbx = sim.generateMailbox({ upn: "crash@contoso.com", folders: 3, items: 240, seed: 7, size: () => 3000 });
    const clean = await tempStore();
    const crashy = await tempStore();
    cleanups.push(clean.cleanup, crashy.cleanup);
    // The export activity writes its manifest part after storing its items: fail that write once per batch.
    const failed = new Set<string>();
    const store = new FailingWrites(crashy.store, (path) => {
      if (!/\/work\/page-\d+\/batch-\d+\.jsonl$/.test(path) || failed.has(path)) return false;
      failed.add(path);
      return true;
    });

    const a = (await backup(clean.store, "crash@contoso.com")).summary;
    const b = (await backup(store, "crash@contoso.com")).summary;
    expect(failed.size).toBeGreaterThan(5);
    expect(b).toMatchObject({ exported: 240, failed: 0 });
    const key = (s: RunSummary, st: ItemStore) => manifestLines(st, s.manifest).then((ls) => ls.map((l) => `${l.itemId} ${l.status} ${l.path} ${l.sha256}`).sort());
    expect(await key(b, crashy.store)).toEqual(await key(a, clean.store));
    // No duplicate versions: one object per item.
    const objects: string[] = [];
    for await (const p of crashy.store.listObjects(`mailboxes/`)) if (p.includes("/items/")) objects.push(p);
    expect(objects).toHaveLength(240);
    expect(sim.getMailbox("crash@contoso.com")?.mailboxId).toBe(mbx.mailboxId);
  });

  it("fails a poison item alone: its batch is split and the other nineteen are stored", async () => {
    const mbx = sim.generateMailbox({ upn: "poison@contoso.com", folders: 1, items: 60, seed: 8, size: () => 1500 });
    const poison = sim.listItems(mbx.mailboxId)[25].id;
    const { store, cleanup } = await tempStore();
    cleanups.push(cleanup);
    sim.faults.add({ route: "exportItems", kind: "resetMidBody", afterBytes: 10, containsItemId: poison, times: Infinity });
    const { summary } = await backup(store, "poison@contoso.com");
    sim.faults.clear();
    expect(summary).toMatchObject({ exported: 59, failed: 1 });
    const lines = await manifestLines(store, summary.manifest);
    const bad = lines.filter((l) => l.status === "failed");
    expect(bad.map((l) => l.itemId)).toEqual([poison]);
    expect(bad[0].error?.code).toBeTruthy();
    expect(summary.failures[0].itemId).toBe(poison);
  });

  it("records per-item errors and keeps the rest of the batch", async () => {
    const mbx = sim.generateMailbox({ upn: "itemerr@contoso.com", folders: 1, items: 30, seed: 9, size: () => 1000 });
    const items = sim.listItems(mbx.mailboxId);
    const { store, cleanup } = await tempStore();
    cleanups.push(cleanup);
    sim.faults.add(
      { route: "exportItems", kind: "itemError", itemId: items[3].id, code: "ErrorCorruptData", message: "Data is corrupt.", times: Infinity },
      { route: "exportItems", kind: "itemError", itemId: items[7].id, code: "ErrorServerBusy", times: 1 },
      { route: "exportItems", kind: "invalidBase64", itemId: items[11].id, times: 1 },
    );
    const { summary } = await backup(store, "itemerr@contoso.com");
    sim.faults.clear();
    expect(summary).toMatchObject({ exported: 29, failed: 1 });
    expect(summary.failures).toEqual([{ itemId: items[3].id, folderId: items[3].folderId, error: { code: "ErrorCorruptData", message: "Data is corrupt." } }]);
  });

  it("replays deterministically and keeps every instance's history bounded at 1,000 and 10,000 items", async () => {
    // The bound is set by the page size (2,000 items = 100 calls over 4 lanes), not by the mailbox.
    const bound = { events: 150 };
    const results: Record<number, number> = {};
    for (const n of [1000, 10000]) {
      sim.generateMailbox({ upn: `hist${n}@contoso.com`, folders: 10, items: n, seed: n, size: () => 200 });
      const { store, cleanup } = await tempStore();
      cleanups.push(cleanup);
      // One event per episode: every completion replays the whole history, the strictest determinism check.
      const { summary, metrics } = await backup(store, `hist${n}@contoso.com`, { maxEventsPerEpisode: n === 1000 ? 1 : 32 });
      expect(summary).toMatchObject({ exported: n, failed: 0 });
      const worst = Math.max(...metrics.map((m) => m.maxHistoryLength));
      results[n] = worst;
      expect(worst).toBeLessThanOrEqual(bound.events);
      const root = metrics.find((m) => m.id.startsWith("backup-") && !m.id.includes(":"));
      expect(root?.executions).toBe(Math.ceil(n / DEFAULT_PAGE_ITEMS));
    }
    // Ten times the items, no instance's history longer than a full page's.
    expect(results[10000]).toBeLessThanOrEqual(bound.events);
    expect(results[1000]).toBeLessThanOrEqual(results[10000]);
  }, 120_000);
});

/** A real store whose writeText fails on chosen paths: an activity dying midway. */
class FailingWrites implements ItemStore {
  constructor(private readonly inner: ItemStore, private readonly shouldFail: (path: string) => boolean) {}
  get location() {
    return this.inner.location;
  }
  putObject(path: string, body: AsyncIterable<Uint8Array>, options?: PutObjectOptions): Promise<StoredObject> {
    return this.inner.putObject(path, body, options);
  }
  openObject(path: string, options?: { signal?: AbortSignal }) {
    return this.inner.openObject(path, options);
  }
  statObject(path: string) {
    return this.inner.statObject(path);
  }
  listObjects(prefix: string) {
    return this.inner.listObjects(prefix);
  }
  async writeText(path: string, text: string): Promise<void> {
    if (this.shouldFail(path)) throw new Error(`worker died before reporting (${path})`);
    return this.inner.writeText(path, text);
  }
  readText(path: string) {
    return this.inner.readText(path);
  }
  deleteObject(path: string) {
    return this.inner.deleteObject(path);
  }
}
