import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { exportBatch, type ExportItemRef, type ItemOutcome } from "../shared/export/exportBatch";
import { planBatches } from "../shared/backup/plan";
import { GraphClient, StaticTokenCredential } from "../shared/graph/graphClient";
import { MailboxApi } from "../shared/graph/mailboxApi";
import { GraphSource } from "../shared/graph/graphSource";
import type { ItemStore } from "../shared/store/itemStore";
import { itemObjectPath } from "../shared/store/naming";
import { hashObject } from "../shared/verify";
import { Semaphore } from "../shared/util/semaphore";
import { InvalidInputError } from "../shared/errors";
import { ExchangeSimulator, type SimMailbox } from "./simulator";
import { azuriteStore, tempStore } from "./support/apps";

/**
 * The foundation's export path without the orchestrator: exportBatch against the simulator over
 * real HTTP, into real stores. Every stored object's sha256 must equal the simulator's bytes.
 */

let sim: ExchangeSimulator;
let api: MailboxApi;
let source: GraphSource;
let big: SimMailbox;
const MB = 1024 * 1024;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  sim = await ExchangeSimulator.start({ seed: 21 });
  api = new MailboxApi(new GraphClient({ endpoint: sim.url, apiVersion: "v1.0", credential: new StaticTokenCredential(sim.token), baseRetryDelayMs: 5, maxRetryDelayMs: 50 }));
  source = new GraphSource(api);
  // 2,000 items from 1 KB to 40 MB: mostly small, some attachments, two at 40 MB.
  big = sim.generateMailbox({
    upn: "sizes@contoso.com",
    folders: 12,
    maxDepth: 4,
    items: 2000,
    seed: 4,
    size: (i, r) => (i === 100 || i === 1500 ? 40 * MB : i % 250 === 7 ? 1 * MB + Math.floor(r() * 4 * MB) : 1024 + Math.floor(r() * 20 * 1024)),
  });
});
afterAll(async () => {
  for (const c of cleanups) await c();
  await sim.close();
});

function refs(mailboxId: string): ExportItemRef[] {
  return sim.listItems(mailboxId).map((i) => ({ itemId: i.id, folderId: i.folderId, changeKey: i.changeKey, size: i.size }));
}

async function exportAll(store: ItemStore, mailboxId: string): Promise<ItemOutcome[]> {
  const sem = new Semaphore(4);
  const batches = planBatches(refs(mailboxId), 100 * MB);
  const results = await Promise.all(batches.map((items) => sem.run(() => exportBatch({ mailbox: source, store }, { mailboxId, items }, { retryDelayMs: 5 }))));
  return results.flat();
}

async function expectStoredExactly(store: ItemStore, mailboxId: string, outcomes: ItemOutcome[]) {
  for (const o of outcomes) {
    if (o.status !== "exported") throw new Error(`${o.itemId} failed: ${JSON.stringify(o.error)}`);
    const expected = sim.itemSha256(mailboxId, o.itemId);
    expect(o.sha256).toBe(expected);
    const actual = await hashObject(store, o.path);
    expect(actual.sha256).toBe(expected);
    expect(actual.size).toBe(o.size);
  }
}

describe("exportBatch", () => {
  it("exports 2,000 items (1 KB to 40 MB) to Azurite, each stored object equal to Exchange's bytes", async () => {
    const store = await azuriteStore(inject("azuriteConnectionString"));
    const outcomes = await exportAll(store, big.mailboxId);
    expect(outcomes).toHaveLength(2000);
    await expectStoredExactly(store, big.mailboxId, outcomes);
    expect(Math.max(...outcomes.map((o) => (o.status === "exported" ? o.size : 0)))).toBe(40 * MB);
  }, 240_000);

  it("exports the same mailbox to a local folder", async () => {
    const { store, cleanup } = await tempStore();
    cleanups.push(cleanup);
    const outcomes = await exportAll(store, big.mailboxId);
    expect(outcomes.filter((o) => o.status === "exported")).toHaveLength(2000);
    await expectStoredExactly(store, big.mailboxId, outcomes);
  }, 120_000);

  it("records per-item errors and stores the rest of the batch", async () => {
    const mbx = sim.generateMailbox({ upn: "errs@contoso.com", folders: 1, items: 20, seed: 5, size: () => 4096 });
    const { store, cleanup } = await tempStore();
    cleanups.push(cleanup);
    const items = refs(mbx.mailboxId);
    sim.faults.add({ route: "exportItems", kind: "itemError", itemId: items[4].itemId, code: "ErrorCorruptData", message: "corrupt", times: Infinity });
    const missing = { itemId: "AAMkAGNvbnRvc28gbWlzc2luZyBpdGVt+/==", folderId: items[0].folderId, changeKey: "x" };
    const out = await exportBatch({ mailbox: source, store }, { mailboxId: mbx.mailboxId, items: [...items.slice(0, 19), missing] }, { retryDelayMs: 5 });
    sim.faults.clear();
    expect(out.filter((o) => o.status === "exported")).toHaveLength(18);
    expect(out[4]).toMatchObject({ status: "failed", error: { code: "ErrorCorruptData" }, retryable: false, scope: "item" });
    expect(out[19]).toMatchObject({ status: "failed", error: { code: "ErrorItemNotFound" }, scope: "item" });
    await expectStoredExactly(store, mbx.mailboxId, out.filter((o) => o.status === "exported"));
    expect(await store.statObject(itemObjectPath(mbx.mailboxId, items[4].itemId, items[4].changeKey as string))).toBeUndefined();
  });

  it("leaves no partial object when the response resets mid-item, and the retry stores it", async () => {
    const mbx = sim.generateMailbox({ upn: "reset@contoso.com", folders: 1, items: 3, seed: 6, size: () => 8 * MB });
    const { store, cleanup } = await tempStore();
    cleanups.push(cleanup);
    const items = refs(mbx.mailboxId);
    // Reset 12 MB into the body: the first item is complete, the second is half-way.
    sim.faults.add({ route: "exportItems", kind: "resetMidBody", afterBytes: 12 * MB, times: 1 });
    const seen: string[] = [];
    const spy: ItemStore = Object.assign(Object.create(Object.getPrototypeOf(store)) as ItemStore, store, {
      putObject: async (...args: Parameters<ItemStore["putObject"]>) => {
        seen.push(args[0]);
        return store.putObject(...args);
      },
    });
    const out = await exportBatch({ mailbox: source, store: spy }, { mailboxId: mbx.mailboxId, items }, { retryDelayMs: 5 });
    expect(sim.faults.count("resetMidBody")).toBeGreaterThan(0);
    expect(out.every((o) => o.status === "exported" && !o.existed)).toBe(true);
    await expectStoredExactly(store, mbx.mailboxId, out);
    // The first attempt got item 1 and part of item 2; the retry asked only for items 2 and 3.
    expect(seen).toEqual([0, 1, 1, 2].map((i) => itemObjectPath(mbx.mailboxId, items[i].itemId, items[i].changeKey as string)));
    const all: string[] = [];
    for await (const p of store.listObjects("")) all.push(p);
    expect(all.sort()).toEqual(out.map((o) => (o.status === "exported" ? o.path : "")).sort());
  });

  it("retries invalid base64 and truncated JSON, and reports a typed error when they persist", async () => {
    const mbx = sim.generateMailbox({ upn: "broken@contoso.com", folders: 1, items: 4, seed: 7, size: () => 10_000 });
    const { store, cleanup } = await tempStore();
    cleanups.push(cleanup);
    const items = refs(mbx.mailboxId);
    sim.faults.add(
      { route: "exportItems", kind: "invalidBase64", itemId: items[1].itemId, times: 1 },
      { route: "exportItems", kind: "truncateJson", afterBytes: 25_000, times: 1 },
    );
    const ok = await exportBatch({ mailbox: source, store }, { mailboxId: mbx.mailboxId, items }, { retryDelayMs: 5 });
    expect(ok.map((o) => o.status)).toEqual(["exported", "exported", "exported", "exported"]);
    await expectStoredExactly(store, mbx.mailboxId, ok);

    sim.faults.add({ route: "exportItems", kind: "invalidBase64", itemId: items[2].itemId, times: Infinity });
    sim.faults.add({ route: "exportItems", kind: "truncateJson", afterBytes: 5, times: Infinity, mailboxId: "MBX:none@none" });
    const other = sim.generateMailbox({ upn: "broken2@contoso.com", folders: 1, items: 2, seed: 8, size: () => 1000 });
    const { store: s2, cleanup: c2 } = await tempStore();
    cleanups.push(c2);
    const bad = await exportBatch({ mailbox: source, store: s2 }, { mailboxId: mbx.mailboxId, items: [items[2]] }, { retryDelayMs: 5, maxAttempts: 2 });
    expect(bad[0]).toMatchObject({ status: "failed", error: { code: "InvalidBase64" } });
    sim.faults.clear();
    sim.faults.add({ route: "exportItems", kind: "truncateJson", afterBytes: 30, times: Infinity, mailboxId: other.mailboxId });
    const trunc = await exportBatch({ mailbox: source, store: s2 }, { mailboxId: other.mailboxId, items: refs(other.mailboxId) }, { retryDelayMs: 5, maxAttempts: 2 });
    sim.faults.clear();
    expect(trunc.map((o) => o.status === "failed" && o.error.code)).toEqual(["TruncatedResponse", "TruncatedResponse"]);
    expect(trunc.every((o) => o.status === "failed" && o.scope === "call" && o.retryable)).toBe(true);
    const leftovers: string[] = [];
    for await (const p of s2.listObjects("")) leftovers.push(p);
    expect(leftovers).toEqual([]);
  });

  it.each([
    ["more than 20 ids", (r: ExportItemRef[]) => Array.from({ length: 21 }, (_, i) => ({ ...r[0], itemId: `${r[0].itemId}${i}` })), /at most 20/],
    ["an empty list", () => [], /empty/],
    ["non-string ids", (r: ExportItemRef[]) => [{ ...r[0], itemId: 42 as unknown as string }], /itemIds\[0\]/],
    ["duplicate ids", (r: ExportItemRef[]) => [r[0], r[0]], /duplicate/],
  ])("rejects %s with a clear typed error before calling Graph", async (_name, make, message) => {
    const mbx = sim.getMailbox("sizes@contoso.com") as SimMailbox;
    const { store, cleanup } = await tempStore();
    cleanups.push(cleanup);
    sim.resetStats();
    const call = exportBatch({ mailbox: source, store }, { mailboxId: mbx.mailboxId, items: make(refs(mbx.mailboxId)) });
    await expect(call).rejects.toBeInstanceOf(InvalidInputError);
    await expect(call).rejects.toThrow(message);
    expect(sim.stats.exportItemsCalls).toBe(0);
  });

  it("keeps two ids that differ only in letter case as two objects", async () => {
    const mbx = sim.addMailbox({ upn: "case@contoso.com" });
    const inbox = mbx.wellKnownFolders.inbox;
    const a = sim.addItem(mbx.mailboxId, inbox, { size: 3000, id: "AAMkADcaseTESTid+/abc=" });
    const b = sim.addItem(mbx.mailboxId, inbox, { size: 5000, id: "AAMKADCASEtestID+/ABC=" });
    const { store, cleanup } = await tempStore();
    cleanups.push(cleanup);
    const out = await exportBatch({ mailbox: source, store }, { mailboxId: mbx.mailboxId, items: refs(mbx.mailboxId) });
    expect(out.map((o) => o.status)).toEqual(["exported", "exported"]);
    const [pa, pb] = out.map((o) => (o.status === "exported" ? o.path : ""));
    expect(pa.toLowerCase()).not.toBe(pb.toLowerCase());
    expect((await hashObject(store, pa)).sha256).toBe(sim.itemSha256(mbx.mailboxId, a.id));
    expect((await hashObject(store, pb)).sha256).toBe(sim.itemSha256(mbx.mailboxId, b.id));
  });
});
