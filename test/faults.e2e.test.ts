import { randomUUID } from "node:crypto";
import { ContainerClient } from "@azure/storage-blob";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { backupOnHost } from "../cli/localRun";
import type { RunSummary } from "../shared/backup/backupRun";
import { BlobItemStore } from "../shared/store/blobItemStore";
import type { ItemStore } from "../shared/store/itemStore";
import { verifyRun } from "../shared/verify";
import { ExchangeSimulator, type SimMailbox } from "./simulator";
import { startFaultProxy } from "./support/faultProxy";
import { manifestLines, startTestApp, tempStore } from "./support/apps";

/**
 * The invariants under faults: after each fault, every item is stored and verified or listed as
 * failed, a re-run converges to a complete backup, and there are no partial or duplicate objects.
 */

let sim: ExchangeSimulator;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  sim = await ExchangeSimulator.start({ seed: 81 });
});
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await sim.close();
});

async function backup(store: ItemStore, upn: string): Promise<RunSummary> {
  const t = await startTestApp(sim, store);
  try {
    const o = await backupOnHost(t.app, t.services, upn);
    if (!o.summary) throw new Error(JSON.stringify(o.error));
    return o.summary;
  } finally {
    await t.stop();
  }
}

/** Blob store on a container, with the SDK's retries made fast for the test. */
function blobStore(connectionString: string, container: string): BlobItemStore {
  return new BlobItemStore(new ContainerClient(connectionString, container, { retryOptions: { maxTries: 6, retryDelayInMs: 5, maxRetryDelayInMs: 40 } }));
}

async function itemObjects(store: ItemStore): Promise<string[]> {
  const out: string[] = [];
  for await (const p of store.listObjects("mailboxes/")) if (p.includes("/items/")) out.push(p);
  return out;
}

async function expectComplete(store: ItemStore, mbx: SimMailbox, s: RunSummary, count: number) {
  expect(s).toMatchObject({ exported: count, failed: 0 });
  const report = await verifyRun(store, { mailboxId: mbx.mailboxId, runId: s.runId, manifest: s.manifest });
  expect(report).toMatchObject({ checked: count, ok: count, problems: [] });
  for (const l of await manifestLines(store, s.manifest)) expect(l.sha256).toBe(sim.itemSha256(mbx.mailboxId, l.itemId));
  expect(await itemObjects(store)).toHaveLength(count);
}

describe("faults", () => {
  it("Blob 500s, 503s and resets: nothing lost, nothing partial, a re-run converges", async () => {
    const mbx = sim.generateMailbox({ upn: "blobfaults@contoso.com", folders: 3, items: 150, seed: 1, size: (i) => (i % 25 === 0 ? 6 * 1024 * 1024 : 2000) });
    const direct = inject("azuriteConnectionString");
    const endpoint = /BlobEndpoint=([^;]+)/.exec(direct)?.[1] as string;
    const proxy = await startFaultProxy({ target: new URL(endpoint).origin, faultRate: 0.2, seed: 3 });
    cleanups.push(() => proxy.close());
    const container = `f-${randomUUID().slice(0, 12)}`;
    const viaProxy = blobStore(direct.replace(endpoint, `${proxy.url}/devstoreaccount1`), container);
    const clean = blobStore(direct, container);
    await clean.ensureContainer();

    let s = await backup(viaProxy, "blobfaults@contoso.com");
    expect(proxy.faults.status500 + proxy.faults.status503 + proxy.faults.reset).toBeGreaterThan(20);
    // Everything the run reports is true: stored items verify, failed ones are listed with a reason.
    const lines = await manifestLines(clean, s.manifest);
    expect(lines).toHaveLength(150);
    for (const l of lines) {
      if (l.status === "failed") expect(l.error?.code).toBeTruthy();
      else expect(l.sha256).toBe(sim.itemSha256(mbx.mailboxId, l.itemId));
    }
    if (s.failed > 0) s = await backup(viaProxy, "blobfaults@contoso.com");
    proxy.heal();
    // Read back through the clean connection: the objects, not the proxy, are what counts.
    const final = JSON.parse((await clean.readText(s.manifest.replace("manifest.jsonl", "summary.json"))) as string) as RunSummary;
    expect(final.failed).toBe(0);
    const report = await verifyRun(clean, { mailboxId: mbx.mailboxId, runId: s.runId, manifest: s.manifest });
    expect(report.problems).toEqual([]);
    expect(report.ok).toBe(150);
    expect(await itemObjects(clean)).toHaveLength(150);
  }, 120_000);

  it("the app dies mid-run; the next run converges with no duplicate versions", async () => {
    const mbx = sim.generateMailbox({ upn: "crashrun@contoso.com", folders: 4, items: 300, seed: 2, size: () => 1500 });
    const { store, cleanup } = await tempStore();
    cleanups.push(cleanup);
    sim.config.latencyMs = (route) => (route === "exportItems" ? 15 : 0);
    const t = await startTestApp(sim, store);
    sim.resetStats();
    const running = backupOnHost(t.app, t.services, "crashrun@contoso.com").catch(() => undefined);
    while (sim.stats.itemsExported < 100) await new Promise((r) => setTimeout(r, 5));
    await t.stop(); // the whole app goes away mid-page
    await running;
    sim.config.latencyMs = 0;
    const stored = (await itemObjects(store)).length;
    expect(stored).toBeGreaterThan(0);
    expect(stored).toBeLessThan(300);
    const s = await backup(store, "crashrun@contoso.com");
    await expectComplete(store, mbx, s, 300);
  }, 60_000);

  it("a 401 mid-run (token expiry) is refreshed, slow responses only slow the run", async () => {
    const mbx = sim.generateMailbox({ upn: "expiry@contoso.com", folders: 2, items: 80, seed: 3, size: () => 1000 });
    const { store, cleanup } = await tempStore();
    cleanups.push(cleanup);
    sim.faults.add(
      { route: "exportItems", kind: "status", status: 401, code: "InvalidAuthenticationToken", times: 2 },
      { route: "itemsDelta", kind: "status", status: 401, code: "InvalidAuthenticationToken", times: 1 },
      { route: "exportItems", kind: "delayMs", ms: 300, times: 2 },
      { route: "exportItems", kind: "truncateJson", afterBytes: 3000, times: 2 },
      { route: "exportItems", kind: "resetMidBody", afterBytes: 5000, times: 2 },
    );
    const s = await backup(store, "expiry@contoso.com");
    expect(sim.faults.pending).toHaveLength(0);
    await expectComplete(store, mbx, s, 80);
  });

  it("a missing permission fails every item with the reason, quickly, instead of retrying forever", async () => {
    sim.generateMailbox({ upn: "noperm@contoso.com", folders: 2, items: 45, seed: 4, size: () => 1000 });
    const { store, cleanup } = await tempStore();
    cleanups.push(cleanup);
    sim.resetStats();
    sim.faults.add({ route: "exportItems", kind: "status", status: 403, code: "ErrorAccessDenied", message: "Access is denied. Check credentials and try again.", times: Infinity });
    try {
      const s = await backup(store, "noperm@contoso.com");
      expect(s).toMatchObject({ exported: 0, failed: 45 });
      expect(s.failures[0].error.code).toBe("ErrorAccessDenied");
      // One call per batch, no split into single items: 45 items = 3 calls.
      expect(sim.stats.requests.exportItems).toBe(3);
    } finally {
      sim.faults.clear();
    }
  });
});
