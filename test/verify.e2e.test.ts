import { writeFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { backupOnHost } from "../cli/localRun";
import { runCli, type CliIo } from "../cli/main";
import type { VerifySummary } from "../shared/backup/verifyAll";
import { nightOf } from "../shared/backup/tenant";
import { ExchangeSimulator } from "./simulator";
import { manifestLines, startTestApp, tempStore } from "./support/apps";

/** Verification finds what went wrong with stored objects: on demand (CLI) and on a schedule (app). */

let sim: ExchangeSimulator;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  sim = await ExchangeSimulator.start({ seed: 91 });
});
afterAll(async () => {
  for (const c of cleanups) await c();
  await sim.close();
});

describe("verification", () => {
  it("reports a corrupt and a missing object, in the CLI (exit 3) and in the scheduled run", async () => {
    sim.generateMailbox({ upn: "v1@contoso.com", folders: 2, items: 30, seed: 1, size: () => 1200 });
    sim.generateMailbox({ upn: "v2@contoso.com", folders: 2, items: 20, seed: 2, size: () => 900 });
    const { store, dir, cleanup } = await tempStore();
    cleanups.push(cleanup);
    const t = await startTestApp(sim, store);
    try {
      const a = await backupOnHost(t.app, t.services, "v1@contoso.com");
      const b = await backupOnHost(t.app, t.services, "v2@contoso.com");
      if (!a.summary || !b.summary) throw new Error("backups failed");
      const lines = await manifestLines(store, a.summary.manifest);
      await writeFile(join(dir, lines[3].path as string), "not the bytes that were exported");
      await rm(join(dir, lines[7].path as string));

      const out: string[] = [];
      const io: CliIo = { stdout: (s) => out.push(s), stderr: (s) => out.push(s), env: { ...sim.env("v1.0"), MAILVAULT_STORE: dir }, tty: false };
      expect(await runCli(["verify", "--mailbox", "v1@contoso.com", "--json"], io)).toBe(3);
      const report = JSON.parse(out.join("")) as { checked: number; ok: number; problems: Array<{ itemId: string; problem: string }> };
      expect(report).toMatchObject({ checked: 30, ok: 28 });
      expect(report.problems.map((p) => `${p.itemId} ${p.problem}`).sort()).toEqual([`${lines[3].itemId} corrupt`, `${lines[7].itemId} missing`].sort());

      await t.app.host.invokeTimer("verifyTimer");
      const day = nightOf(new Date());
      const s = await t.app.host.waitForCompletion(`verify-${day}`, { timeoutMs: 30_000 });
      expect(s.runtimeStatus).toBe("Completed");
      const summary = JSON.parse((await store.readText(`tenant/verify/${day}/summary.json`)) as string) as VerifySummary;
      expect(summary).toMatchObject({ mailboxes: 2, checked: 50, ok: 48, problems: 2 });
      expect(summary.findings).toHaveLength(1);
      expect(summary.findings[0].mailboxId).toBe(a.summary.mailboxId);
    } finally {
      await t.stop();
    }
  });
});
