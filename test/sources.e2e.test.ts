import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { backupOnHost } from "../cli/localRun";
import { exportPlanned, finishPage, finishRun, planPage, startRun, type RunSummary } from "../shared/backup/backupRun";
import { resolveMailboxArg } from "../shared/source";
import { makeRunId } from "../shared/store/naming";
import { ExchangeSimulator } from "./simulator";
import { manifestLines, startTestApp, tempStore, type TestApp } from "./support/apps";

/**
 * Behaviour both sources share, run once through Graph and once through EWS against the same
 * simulated mailbox shapes: the backup run's activities driven one by one, so that the mailbox can
 * change between them.
 */

let sim: ExchangeSimulator;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  sim = await ExchangeSimulator.start({ seed: 77 });
});
afterAll(async () => {
  for (const c of cleanups) await c();
  await sim.close();
});

/** One backup run, activity by activity, with `between` called after startRun listed the folders. */
async function runStepByStep(t: TestApp, mailbox: string, between: () => void): Promise<RunSummary> {
  const { mailboxId } = await resolveMailboxArg(t.services.sources, mailbox);
  const startedAt = new Date();
  const runId = makeRunId(startedAt, "0000abcd");
  const start = await startRun(t.services, { mailboxId, requested: mailbox, runId, startedAt: startedAt.toISOString() });
  between();
  let cursor: { folderIndex: number; link?: string; full?: boolean } | undefined = { folderIndex: 0 };
  let pageNo = 0;
  while (cursor) {
    const plan = await planPage(t.services, { mailboxId, runId, baseRunId: start.baseRunId, pageNo, cursor, pageItems: 50, batchMaxBytes: 100 * 1024 * 1024 });
    for (let b = 0; b < plan.batchCount; b++) await exportPlanned(t.services, { mailboxId, runId, pageNo, batchNo: b });
    await finishPage(t.services, { mailboxId, runId, pageNo, splitBatches: [], lost: [] });
    cursor = plan.next;
    pageNo++;
  }
  return finishRun(t.services, { mailboxId, baseRunId: start.baseRunId, requested: mailbox, runId, startedAt: startedAt.toISOString(), finishedAt: new Date().toISOString(), pageCount: pageNo, folderCount: start.folderCount });
}

describe.each([
  { source: "Graph", upn: "gone-graph@contoso.com", arg: (upn: string) => upn },
  { source: "EWS", upn: "gone-ews@contoso.local", arg: (upn: string) => `ews:${upn}` },
])("$source", ({ upn, arg }) => {
  it("a folder deleted while the run goes on: the run completes and records its items as deleted", async () => {
    const m = sim.generateMailbox({ upn, folders: 4, maxDepth: 1, items: 60, seed: 3, size: () => 900 });
    const doomed = sim.listFolders(m.mailboxId).find((f) => !f.wellKnownName && f.childFolderCount === 0 && sim.listItems(m.mailboxId, f.id).length > 0);
    if (!doomed) throw new Error("no folder to delete");
    const doomedItems = new Set(sim.listItems(m.mailboxId, doomed.id).map((i) => i.id));
    const { store, cleanup } = await tempStore();
    cleanups.push(cleanup);
    const t = await startTestApp(sim, store, { env: sim.ewsEnv() });
    try {
      const base = await backupOnHost(t.app, t.services, arg(upn));
      expect(base.summary?.exported).toBe(60);
      const run = await runStepByStep(t, arg(upn), () => sim.deleteFolder(m.mailboxId, doomed.id));
      expect(run).toMatchObject({ failed: 0, exported: 0, deleted: doomedItems.size, unchanged: 60 - doomedItems.size });
      const lines = await manifestLines(store, run.manifest);
      for (const l of lines) expect(l.status).toBe(doomedItems.has(l.itemId) ? "deleted" : "unchanged");
      // The next run starts from the committed state and finds nothing to do.
      const next = await backupOnHost(t.app, t.services, arg(upn));
      expect(next.summary).toMatchObject({ exported: 0, failed: 0, deleted: 0 });
    } finally {
      await t.stop();
    }
  });
});
