import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { backupOnHost } from "../cli/localRun";
import type { RunSummary } from "../shared/backup/backupRun";
import type { ManifestLine } from "../shared/backup/manifest";
import type { RestoreReport, RestoreRequest } from "../shared/restore/restoreRun";
import { prepareRestore, type RestoreBody } from "../shared/restore/prepare";
import type { ItemStore } from "../shared/store/itemStore";
import { ExchangeSimulator, type SimMailbox } from "./simulator";
import { manifestLines, startTestApp, tempStore, type TestApp } from "./support/apps";

/** Restore on the local host: back up, then import into the simulator's mailboxes. */

let sim: ExchangeSimulator;
let store: ItemStore;
let a: SimMailbox;
let first: RunSummary;
let firstLines: ManifestLine[];
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  sim = await ExchangeSimulator.start({ seed: 61, importSessionLifetimeMs: 60_000 });
  a = sim.generateMailbox({ upn: "source@contoso.com", folders: 4, maxDepth: 2, items: 40, seed: 9, size: (_i, r) => 500 + Math.floor(r() * 20_000) });
  const ts = await tempStore();
  store = ts.store;
  cleanups.push(ts.cleanup);
  first = await backup("source@contoso.com");
  firstLines = await manifestLines(store, first.manifest);
});
afterAll(async () => {
  for (const c of cleanups) await c();
  await sim.close();
});

async function withApp<T>(fn: (t: TestApp) => Promise<T>, pacing?: { bytesPerWindow: number; windowMs: number }): Promise<T> {
  const t = await startTestApp(sim, store, { importPacing: pacing });
  try {
    return await fn(t);
  } finally {
    await t.stop();
  }
}

async function backup(upn: string): Promise<RunSummary> {
  return withApp(async (t) => {
    const o = await backupOnHost(t.app, t.services, upn);
    if (!o.summary) throw new Error(JSON.stringify(o.error));
    return o.summary;
  });
}

async function restore(body: RestoreBody, options: { request?: RestoreRequest; pacing?: { bytesPerWindow: number; windowMs: number }; during?: (t: TestApp, id: string) => Promise<void> } = {}): Promise<{ report: RestoreReport; request: RestoreRequest }> {
  return withApp(async (t) => {
    const request = options.request ?? (await prepareRestore(t.services, "source@contoso.com", body, new Date()));
    const id = `restore-${request.restoreId}`;
    await t.app.host.startNew("restoreMailbox", { instanceId: id, input: request });
    if (options.during) await options.during(t, id);
    const s = await t.app.host.waitForCompletion(id, { timeoutMs: 60_000 });
    if (s.runtimeStatus !== "Completed") throw new Error(`restore ${s.runtimeStatus}: ${String(s.output)}`);
    return { report: s.output as RestoreReport, request };
  }, options.pacing);
}

/** Folder path of a folder, by display names, from the mailbox root. */
function folderPath(mailboxId: string, folderId: string, stopAt?: string): string {
  const names: string[] = [];
  for (let f = sim.getFolder(mailboxId, folderId); f && f.id !== stopAt && f.wellKnownName !== "msgfolderroot"; f = f.parentFolderId ? sim.getFolder(mailboxId, f.parentFolderId) : undefined) names.unshift(f.displayName);
  return names.join("/");
}

describe("restore", () => {
  it("restores mailbox A into B under a new folder: same bytes, same folder tree", async () => {
    const b = sim.addMailbox({ upn: "target@contoso.com" });
    const { report } = await restore({ target: "target@contoso.com", targetFolderName: "From A" });
    expect(report).toMatchObject({ items: 40, imported: 40, failed: 0, targetMailboxId: b.mailboxId });
    const imported = sim.importedItems(b.mailboxId);
    expect(imported).toHaveLength(40);
    const root = sim.listFolders(b.mailboxId).find((f) => f.displayName === "From A");
    expect(root).toBeTruthy();
    const want = firstLines.map((l) => `${folderPath(a.mailboxId, l.folderId)} ${l.sha256}`).sort();
    const got = imported.map((i) => `${folderPath(b.mailboxId, i.folderId, root?.id)} ${i.sha256}`).sort();
    expect(got).toEqual(want);
    // The imported item exports again byte for byte.
    expect(sim.itemSha256(b.mailboxId, imported[0].itemId)).toBe(imported[0].sha256);
  });

  it("restores one folder, and three chosen items", async () => {
    const folder = firstLines[0].folderId;
    const c = sim.addMailbox({ upn: "one-folder@contoso.com" });
    const inFolder = firstLines.filter((l) => l.folderId === folder || sim.getFolder(a.mailboxId, l.folderId)?.parentFolderId === folder);
    const { report } = await restore({ target: "one-folder@contoso.com", folders: [folder] });
    expect(report.imported).toBe(inFolder.length);
    expect(sim.importedItems(c.mailboxId).map((i) => i.sha256).sort()).toEqual(inFolder.map((l) => l.sha256).sort());

    const d = sim.addMailbox({ upn: "three@contoso.com" });
    const three = [firstLines[3], firstLines[17], firstLines[33]];
    const r3 = await restore({ target: "three@contoso.com", items: three.map((l) => l.itemId) });
    expect(r3.report).toMatchObject({ items: 3, imported: 3 });
    expect(sim.importedItems(d.mailboxId).map((i) => i.sha256).sort()).toEqual(three.map((l) => l.sha256).sort());
  });

  it("brings back, from an older run, an item deleted since", async () => {
    const victim = firstLines[5];
    sim.deleteItem(a.mailboxId, victim.itemId);
    const second = await backup("source@contoso.com");
    expect(second.deleted).toBe(1);
    const before = sim.importedItems(a.mailboxId).length;
    const { report } = await restore({ run: first.runId, items: [victim.itemId] });
    expect(report).toMatchObject({ imported: 1, targetMailboxId: a.mailboxId });
    const back = sim.importedItems(a.mailboxId).slice(before);
    expect(back.map((i) => i.sha256)).toEqual([victim.sha256]);
    // The latest run no longer has it: asking the latest run for it is a clear error.
    await expect(withApp((t) => prepareRestore(t.services, "source@contoso.com", { items: [victim.itemId] }, new Date()))).rejects.toMatchObject({ code: "ItemNotInRun" });
  });

  it("a crash mid-restore and a re-run import no item twice", async () => {
    const e = sim.addMailbox({ upn: "crash@contoso.com" });
    sim.config.latencyMs = (route) => (route === "importItem" ? 10 : 0);
    let request: RestoreRequest | undefined;
    try {
      const firstTry = await restore(
        { target: "crash@contoso.com", run: first.runId },
        {
          during: async () => {
            // Once some items are in, the target starts failing every upload: the page dies midway.
            while (sim.importedItems(e.mailboxId).length < 10) await new Promise((r) => setTimeout(r, 5));
            sim.faults.add({ route: "importItem", kind: "status", status: 503, times: Infinity });
          },
        },
      );
      request = firstTry.request;
      expect(firstTry.report.imported).toBeGreaterThanOrEqual(10);
      expect(firstTry.report.failed).toBeGreaterThan(0);
      expect(firstTry.report.failures[0].error.code).toMatch(/NotAttempted|Http503|ServiceUnavailable|ImportNetworkError/);
    } finally {
      sim.faults.clear();
      sim.config.latencyMs = 0;
    }
    const importedBefore = sim.importedItems(e.mailboxId).length;
    const again = await restore({}, { request });
    expect(again.report.alreadyImported).toBe(importedBefore);
    expect(again.report).toMatchObject({ imported: 40, failed: 0 });
    const shas = sim.importedItems(e.mailboxId).map((i) => i.sha256);
    expect(shas).toHaveLength(40);
    expect(new Set(shas).size).toBe(new Set(firstLines.map((l) => l.sha256)).size);
  });

  it("renews an expired import session and paces uploads to the mailbox's budget", async () => {
    const f = sim.addMailbox({ upn: "renew@contoso.com" });
    sim.config.latencyMs = (route) => (route === "importItem" ? 15 : 0);
    try {
      const { report } = await restore(
        { target: "renew@contoso.com", run: first.runId },
        {
          during: async () => {
            while (sim.importedItems(f.mailboxId).length < 5) await new Promise((r) => setTimeout(r, 5));
            sim.expireImportSessions(f.mailboxId);
          },
        },
      );
      expect(report).toMatchObject({ imported: 40, failed: 0 });
      expect(sim.importSessions(f.mailboxId).length).toBeGreaterThanOrEqual(2);
    } finally {
      sim.config.latencyMs = 0;
    }
  });
});
