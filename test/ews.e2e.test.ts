import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { backupOnHost } from "../cli/localRun";
import { EXIT, runCli } from "../cli/main";
import type { RunSummary } from "../shared/backup/backupRun";
import type { ManifestLine } from "../shared/backup/manifest";
import { prepareRestore, type RestoreBody } from "../shared/restore/prepare";
import type { RestoreReport } from "../shared/restore/restoreRun";
import type { ItemStore } from "../shared/store/itemStore";
import { ExchangeSimulator, type SimMailbox } from "./simulator";
import { manifestLines, startTestApp, tempStore, type TestApp } from "./support/apps";

/**
 * Exchange Server through EWS, end to end on the local host: the app's own HTTP trigger and
 * orchestrations, the product's SOAP client, and the simulator's EWS endpoint over real HTTP.
 * Backup (SyncFolderHierarchy, SyncFolderItems in pages of at most 512, ExportItems in batches),
 * incremental runs from the stored sync states, and restore through UploadItems (CreateNew,
 * Update, UpdateOrCreate).
 */

const KEY = "ews-test-function-key";
const MB = "onprem@contoso.local";
let sim: ExchangeSimulator;
let store: ItemStore;
let mbx: SimMailbox;
let bigFolder: string;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  sim = await ExchangeSimulator.start({ seed: 91, ewsBackOffMs: 150 });
  mbx = sim.generateMailbox({ upn: MB, folders: 6, maxDepth: 2, items: 300, seed: 4, size: (i, r) => (i % 97 === 0 ? 2_500_000 : 300 + Math.floor(r() * 30_000)) });
  // One folder with more items than one SyncFolderItems call returns (512).
  bigFolder = sim.addFolder(mbx.mailboxId, { displayName: "Big" }).id;
  for (let i = 0; i < 1100; i++) sim.addItem(mbx.mailboxId, bigFolder, { size: 200 + (i % 50) * 10 });
  const ts = await tempStore();
  store = ts.store;
  cleanups.push(ts.cleanup);
});
afterAll(async () => {
  for (const c of cleanups) await c();
  await sim.close();
});

async function withApp<T>(fn: (t: TestApp) => Promise<T>, env: Record<string, string> = {}): Promise<T> {
  const t = await startTestApp(sim, store, { functionKey: KEY, env: { ...sim.ewsEnv(), MAILVAULT_EWS_BATCH_ITEMS: "50", ...env } });
  try {
    return await fn(t);
  } finally {
    await t.stop();
    // Debug-level logs of everything the app did: never a token or password.
    const logs = t.logs.join("\n");
    expect(logs).not.toContain(sim.token);
    expect(logs).not.toContain(sim.ewsPassword);
  }
}

async function backup(t: TestApp, mailbox = `ews:${MB}`): Promise<RunSummary> {
  const o = await backupOnHost(t.app, t.services, mailbox);
  if (!o.summary) throw new Error(JSON.stringify(o.error));
  return o.summary;
}

/** Every stored item version equals the simulator's current bytes, and every item is in the manifest. */
function expectMirrors(lines: ManifestLine[]): void {
  const live = sim.listItems(mbx.mailboxId);
  const byId = new Map(lines.filter((l) => l.status === "exported" || l.status === "unchanged").map((l) => [l.itemId, l]));
  expect(byId.size).toBe(live.length);
  for (const item of live) {
    const l = byId.get(item.id);
    expect(l, item.id).toBeTruthy();
    expect(l?.sha256).toBe(sim.itemSha256(mbx.mailboxId, item.id));
    expect(l?.changeKey).toBe(item.changeKey);
  }
}

function graphRequests(): number {
  const r = sim.stats.requests as Record<string, number>;
  return Object.entries(r).filter(([k]) => !k.startsWith("ews")).reduce((n, [, v]) => n + v, 0);
}

describe("EWS backup on the local host", () => {
  let first: RunSummary;

  it("backs up an Exchange Server mailbox through the HTTP trigger: every item stored and verified, within the limits", async () => {
    sim.resetStats();
    first = await withApp(async (t) => {
      const res = await fetch(`${t.app.host.baseUrl}/api/mailboxes/${encodeURIComponent(`ews:${MB}`)}/backups`, { method: "POST", headers: { "x-functions-key": KEY } });
      expect(res.status).toBe(202);
      const { id } = (await res.json()) as { id: string };
      const s = await t.app.host.waitForCompletion(id, { timeoutMs: 120_000 });
      expect(s.runtimeStatus).toBe("Completed");
      return s.output as RunSummary;
    });
    const total = sim.listItems(mbx.mailboxId).length;
    expect(first).toMatchObject({ mailboxId: `EWS:${MB}`, exported: total, failed: 0, unchanged: 0, deleted: 0 });
    const lines = await manifestLines(store, first.manifest);
    expectMirrors(lines);
    // Folders as the simulator has them; every item's folder is one of them.
    const folders = new Set(sim.listFolders(mbx.mailboxId).map((f) => f.id));
    expect(first.folders).toBe(folders.size);
    for (const l of lines) expect(folders.has(l.folderId)).toBe(true);
    // EWS only, in batches of at most 50, sync pages of at most 512, never more than 4 calls in flight.
    expect(graphRequests()).toBe(0);
    const ews = sim.stats.ews;
    expect(ews.requests.ExportItems).toBeGreaterThanOrEqual(Math.ceil(total / 50));
    expect(ews.requests.ExportItems).toBeLessThan(Math.ceil(total / 50) + 20);
    expect(ews.requests.SyncFolderItems).toBeGreaterThanOrEqual(3); // the 1,100-item folder alone needs 3
    expect(ews.peakInFlight[mbx.mailboxId.toLowerCase()] ?? Math.max(0, ...Object.values(ews.peakInFlight))).toBeLessThanOrEqual(4);
  });

  it("is incremental: only changed and new items are exported again, deletions are recorded, moves are not re-exported", async () => {
    const items = sim.listItems(mbx.mailboxId, bigFolder);
    const other = sim.listFolders(mbx.mailboxId).find((f) => f.id !== bigFolder && f.displayName !== "Big" && !f.wellKnownName)?.id ?? mbx.wellKnownFolders.inbox;
    for (const i of items.slice(0, 3)) sim.modifyItem(mbx.mailboxId, i.id);
    sim.deleteItem(mbx.mailboxId, items[3].id);
    sim.moveItem(mbx.mailboxId, items[4].id, other);
    sim.addItem(mbx.mailboxId, bigFolder, { size: 1234 });
    sim.addItem(mbx.mailboxId, other, { size: 4321 });
    sim.resetStats();
    const second = await withApp((t) => backup(t));
    expect(second).toMatchObject({ baseRunId: first.runId, exported: 5, deleted: 1, failed: 0 });
    expect(sim.stats.ews.requests.ExportItems).toBe(1);
    expectMirrors(await manifestLines(store, second.manifest));

    // Nothing changed: no export at all.
    sim.resetStats();
    const third = await withApp((t) => backup(t));
    expect(third).toMatchObject({ exported: 0, failed: 0, deleted: 0 });
    expect(sim.stats.ews.requests.ExportItems ?? 0).toBe(0);
  });

  it("an invalidated sync state: the folders are read again, nothing unchanged is exported", async () => {
    sim.invalidateDeltaTokens(mbx.mailboxId);
    sim.resetStats();
    const run = await withApp((t) => backup(t));
    expect(run).toMatchObject({ exported: 0, failed: 0, deleted: 0 });
    expect(sim.stats.ews.requests.ExportItems ?? 0).toBe(0);
    expectMirrors(await manifestLines(store, run.manifest));
  });

  it("per-item errors: ErrorServerBusy waits its BackOffMilliseconds and succeeds, ErrorItemNotFound is recorded as failed; the run goes on", async () => {
    const items = sim.listItems(mbx.mailboxId, bigFolder);
    const busy = items[10].id;
    const gone = items[11].id;
    sim.modifyItem(mbx.mailboxId, busy);
    sim.modifyItem(mbx.mailboxId, gone);
    sim.modifyItem(mbx.mailboxId, items[12].id);
    sim.faults.add({ route: "ewsExportItems", kind: "itemError", itemId: busy, code: "ErrorServerBusy", message: "The server cannot service this request right now. Try again later.", backOffMs: 300, times: 1 });
    sim.faults.add({ route: "ewsExportItems", kind: "itemError", itemId: gone, code: "ErrorItemNotFound", message: "The specified object was not found in the store.", times: Infinity });
    sim.resetStats();
    const run = await withApp((t) => backup(t));
    sim.faults.clear();
    expect(run).toMatchObject({ exported: 2, failed: 1 });
    const lines = await manifestLines(store, run.manifest);
    expect(lines.find((l) => l.itemId === gone)).toMatchObject({ status: "failed", error: { code: "ErrorItemNotFound" } });
    expect(lines.find((l) => l.itemId === busy)).toMatchObject({ status: "exported", sha256: sim.itemSha256(mbx.mailboxId, busy) });
    // The retry of the busy item came at least BackOffMilliseconds after the answer that asked for it.
    const calls = sim.stats.ews.log.filter((e) => e.operation === "ExportItems");
    expect(calls.length).toBe(2);
    expect(calls[1].at - calls[0].at).toBeGreaterThanOrEqual(300);
  });
});

describe("EWS restore on the local host (UploadItems)", () => {
  async function restore(body: RestoreBody, env?: Record<string, string>): Promise<RestoreReport> {
    return withApp(async (t) => {
      const r = await prepareRestore(t.services, `ews:${MB}`, body, new Date());
      const id = `restore-${r.restoreId}`;
      await t.app.host.startNew("restoreMailbox", { instanceId: id, input: r });
      const s = await t.app.host.waitForCompletion(id, { timeoutMs: 120_000 });
      if (s.runtimeStatus !== "Completed") throw new Error(`restore ${s.runtimeStatus}: ${String(s.output)}`);
      return s.output as RestoreReport;
    }, env);
  }

  it("into another Exchange Server mailbox under a new folder (CreateNew): the same bytes in the same folder tree", async () => {
    const target = sim.addMailbox({ upn: "second@contoso.local" });
    const folder = sim.listFolders(mbx.mailboxId).find((f) => f.id !== bigFolder && !f.wellKnownName && sim.listItems(mbx.mailboxId, f.id).length > 0) as { id: string };
    const report = await restore({ target: `ews:second@contoso.local`, folders: [folder.id], targetFolderName: "From on-prem" });
    expect(report.failed).toBe(0);
    expect(report.imported).toBeGreaterThan(0);
    const imported = sim.importedItems(target.mailboxId);
    expect(imported).toHaveLength(report.imported);
    expect(imported.every((i) => i.mode === "create")).toBe(true);
    const want = sim.listItems(mbx.mailboxId).filter((i) => isUnder(mbx.mailboxId, i.folderId, folder.id)).map((i) => sim.itemSha256(mbx.mailboxId, i.id)).sort();
    expect(imported.map((i) => i.sha256).sort()).toEqual(want);
    expect(sim.listFolders(target.mailboxId).some((f) => f.displayName === "From on-prem")).toBe(true);
  });

  it("update puts the backed-up version back in place (same item id); upsert also re-creates a deleted item", async () => {
    // The latest run holds these versions; then the mailbox changes under us.
    const items = sim.listItems(mbx.mailboxId, bigFolder).slice(20, 23);
    const backedUp = items.map((i) => sim.itemSha256(mbx.mailboxId, i.id));
    sim.modifyItem(mbx.mailboxId, items[0].id);
    sim.modifyItem(mbx.mailboxId, items[1].id);
    sim.deleteItem(mbx.mailboxId, items[2].id);
    expect(sim.itemSha256(mbx.mailboxId, items[0].id)).not.toBe(backedUp[0]);

    const upd = await restore({ items: [items[0].id], mode: "update" });
    expect(upd).toMatchObject({ imported: 1, failed: 0 });
    expect(sim.itemSha256(mbx.mailboxId, items[0].id)).toBe(backedUp[0]);

    const ups = await restore({ items: [items[1].id, items[2].id], mode: "upsert" });
    expect(ups).toMatchObject({ imported: 2, failed: 0 });
    expect(sim.itemSha256(mbx.mailboxId, items[1].id)).toBe(backedUp[1]);
    const recreated = sim.importedItems(mbx.mailboxId).at(-1);
    expect(recreated?.mode).toBe("create");
    expect(recreated?.sha256).toBe(backedUp[2]);
    expect(recreated?.folderId).toBe(bigFolder);

    // update of an item that is gone is a per-item failure, not a crash.
    const gone = await restore({ items: [items[2].id], mode: "update" });
    expect(gone).toMatchObject({ imported: 0, failed: 1 });
    expect(gone.failures[0].error.code).toBe("ErrorItemNotFound");
  });

  it("a stored object that went missing fails that item as NotFound at once, the rest is restored", async () => {
    const target = sim.addMailbox({ upn: "third@contoso.local" });
    // (This backup also asks again for the item that failed with ErrorItemNotFound above: stored now.)
    const run = await withApp(async (t) => (await backup(t)));
    expect(run.failed).toBe(0);
    expect(run.exported).toBeGreaterThanOrEqual(1);
    const lines = (await manifestLines(store, run.manifest)).filter((l) => l.path && l.folderId === bigFolder).slice(0, 3);
    // A copy of the store without one object (the shared store stays whole for the other tests).
    const copy = await tempStore();
    cleanups.push(copy.cleanup);
    for await (const p of store.listObjects("mailboxes/")) {
      if (p === lines[0].path) continue;
      await copy.store.putObject(p, await store.openObject(p));
    }
    const t = await startTestApp(sim, copy.store, { functionKey: KEY, env: { ...sim.ewsEnv() } });
    try {
      const r = await prepareRestore(t.services, `ews:${MB}`, { target: "ews:third@contoso.local", items: lines.map((l) => l.itemId) }, new Date());
      const started = Date.now();
      await t.app.host.startNew("restoreMailbox", { instanceId: `restore-${r.restoreId}`, input: r });
      const s = await t.app.host.waitForCompletion(`restore-${r.restoreId}`, { timeoutMs: 60_000 });
      const report = s.output as RestoreReport;
      expect(report).toMatchObject({ imported: 2, failed: 1 });
      expect(report.failures[0]).toMatchObject({ itemId: lines[0].itemId, error: { code: "NotFound" } });
      expect(Date.now() - started).toBeLessThan(10_000);
      expect(sim.importedItems(target.mailboxId)).toHaveLength(2);
    } finally {
      await t.stop();
    }
  });

  it("update/upsert into another mailbox is refused up front with a clear error (item ids name their mailbox)", async () => {
    sim.addMailbox({ upn: "cloud@contoso.com" });
    await expect(restore({ target: "cloud@contoso.com", mode: "update" })).rejects.toThrow(/target must be the backed-up mailbox itself/);
    await expect(restore({ target: "ews:second@contoso.local", mode: "upsert" })).rejects.toThrow(/target must be the backed-up mailbox itself/);
  });
});

describe("EWS from the CLI and the HTTP trigger's input checks", () => {
  it("mailvault backup --ews-url ... --mailbox ews:<address> with Basic sign-in, --json", async () => {
    const out: string[] = [];
    const err: string[] = [];
    const code = await runCli(["backup", "--ews-url", sim.ewsUrl, "--mailbox", `ews:${MB}`, "--store", (store as { location: string }).location, "--json"], {
      stdout: (s) => out.push(s),
      stderr: (s) => err.push(s),
      env: { ...sim.env("v1.0"), MAILVAULT_EWS_AUTH: "basic", MAILVAULT_EWS_USERNAME: sim.ewsUsername, MAILVAULT_EWS_PASSWORD: sim.ewsPassword },
      tty: false,
    });
    expect(err.join("")).not.toContain(sim.ewsPassword);
    expect(code, err.join("")).toBe(EXIT.ok);
    const [r] = JSON.parse(out.join("")) as Array<{ mailboxId: string; exported: number; failed: number; manifest: string }>;
    expect(r).toMatchObject({ mailboxId: `EWS:${MB}`, failed: 0 });
    expectMirrors(await manifestLines(store, r.manifest));
  });

  it("an alias resolves to the mailbox's primary address: one id, one history, no second backup", async () => {
    sim.addEmailAlias(mbx.mailboxId, "legacy.name@contoso.local");
    const run = await withApp((t) => backup(t, "ews:Legacy.Name@contoso.local"));
    expect(run.mailboxId).toBe(`EWS:${MB}`);
    expect(run.failed).toBe(0);
    const entry = JSON.parse((await store.readText(`${run.manifest.split("/runs/")[0]}/mailbox.json`)) as string) as { addresses: string[] };
    expect(entry.addresses).toContain("ews:Legacy.Name@contoso.local");
    expect(sim.stats.ews.requests.ResolveNames).toBeGreaterThanOrEqual(1);
    // ResolveNames matches prefixes: a mistyped address that only starts another mailbox's address
    // is not taken for it (the resolved mailbox must be the one the typed address opens).
    await withApp(async (t) => {
      const res = await fetch(`${t.app.host.baseUrl}/api/mailboxes/${encodeURIComponent("ews:onprem@contoso.loc")}/backups`, { method: "POST", headers: { "x-functions-key": KEY } });
      expect(res.status).toBe(404);
    });
  });

  it("restore through the HTTP trigger into an EWS mailbox (upsert), then runs and verify from the CLI", async () => {
    const some = sim.listItems(mbx.mailboxId, bigFolder).slice(40, 42);
    sim.deleteItem(mbx.mailboxId, some[0].id);
    const report = await withApp(async (t) => {
      const res = await fetch(`${t.app.host.baseUrl}/api/mailboxes/${encodeURIComponent(`ews:${MB}`)}/restores`, {
        method: "POST",
        headers: { "x-functions-key": KEY, "content-type": "application/json" },
        body: JSON.stringify({ items: some.map((i) => i.id), mode: "upsert" }),
      });
      expect(res.status).toBe(202);
      const { id } = (await res.json()) as { id: string };
      const s = await t.app.host.waitForCompletion(id, { timeoutMs: 60_000 });
      return s.output as RestoreReport;
    });
    expect(report).toMatchObject({ imported: 2, failed: 0 });
    expect(sim.importedItems(mbx.mailboxId).slice(-2).map((i) => i.mode).sort()).toEqual(["create", "update"]);
    const io = (out: string[]) => ({ stdout: (s: string) => void out.push(s), stderr: () => {}, env: {}, tty: false });
    const runsOut: string[] = [];
    expect(await runCli(["runs", "--mailbox", `ews:${MB}`, "--store", (store as { location: string }).location, "--json"], io(runsOut))).toBe(EXIT.ok);
    expect((JSON.parse(runsOut.join("")) as { mailboxId: string; runs: unknown[] }).mailboxId).toBe(`EWS:${MB}`);
    const verifyOut: string[] = [];
    expect(await runCli(["verify", "--mailbox", `ews:${MB}`, "--store", (store as { location: string }).location, "--json"], io(verifyOut))).toBe(EXIT.ok);
    expect((JSON.parse(verifyOut.join("")) as { problems: unknown[] }).problems).toEqual([]);
  });

  it("NTLM sign-in (the on-premises default): one handshake per connection, then the connection carries the calls; a wrong password is a clear error", async () => {
    const ntlmEnv = { MAILVAULT_EWS_AUTH: "ntlm", MAILVAULT_EWS_USERNAME: `CONTOSO\\${sim.ewsUsername}`, MAILVAULT_EWS_PASSWORD: sim.ewsPassword };
    sim.resetStats();
    const run = await withApp((t) => backup(t), { ...ntlmEnv, EWS_ACCESS_TOKEN: "" });
    expect(run).toMatchObject({ mailboxId: `EWS:${MB}`, failed: 0 });
    const calls = Object.values(sim.stats.ews.requests).reduce((n, v) => n + v, 0);
    expect(calls).toBeGreaterThan(10);
    // Connections are reused: far fewer handshakes than calls, at most one per connection in flight.
    expect(sim.stats.ews.ntlmHandshakes).toBeGreaterThanOrEqual(1);
    expect(sim.stats.ews.ntlmHandshakes).toBeLessThanOrEqual(8);
    await expect(
      withApp((t) => backup(t), { ...ntlmEnv, MAILVAULT_EWS_PASSWORD: "not-the-password", EWS_ACCESS_TOKEN: "" }),
    ).rejects.toThrow(/HTTP 401: check the EWS credentials/);
  });

  it("unknown mailbox, malformed address, missing EWS setup: clear errors", async () => {
    await withApp(async (t) => {
      const post = (m: string, body?: unknown) => fetch(`${t.app.host.baseUrl}/api/mailboxes/${encodeURIComponent(m)}/backups`, { method: "POST", headers: { "x-functions-key": KEY, "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
      expect((await post("ews:nobody@contoso.local")).status).toBe(404);
      expect((await post("ews:not-an-address")).status).toBe(400);
      const started = await post(MB, { source: "ews" });
      expect(started.status).toBe(202);
      const { id } = (await started.json()) as { id: string };
      expect((await t.app.host.waitForCompletion(id, { timeoutMs: 60_000 })).runtimeStatus).toBe("Completed");
      expect((await post(MB, { source: "exchange" })).status).toBe(400);
    });
    await withApp(async (t) => {
      const res = await fetch(`${t.app.host.baseUrl}/api/mailboxes/${encodeURIComponent(`ews:${MB}`)}/backups`, { method: "POST", headers: { "x-functions-key": KEY } });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe("EwsNotConfigured");
    }, { MAILVAULT_EWS_URL: "" });
  });
});

function isUnder(mailboxId: string, folderId: string, root: string): boolean {
  for (let f = sim.getFolder(mailboxId, folderId); f; f = f.parentFolderId ? sim.getFolder(mailboxId, f.parentFolderId) : undefined) if (f.id === root) return true;
  return false;
}
