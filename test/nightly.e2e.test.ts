import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { nightOf, tenantSummaryPath, type TenantSummary } from "../shared/backup/tenant";
import { mailboxListSetting, validateSchedule } from "../shared/config";
import { prepareBackup } from "../shared/backup/start";
import { InvalidInputError } from "../shared/errors";
import { ExchangeSimulator } from "./simulator";
import { startTestApp, tempStore } from "./support/apps";

/** The nightly timer over many mailboxes, on the local host. */

let sim: ExchangeSimulator;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  sim = await ExchangeSimulator.start({ seed: 51 });
});
afterAll(async () => {
  for (const c of cleanups) await c();
  await sim.close();
});

describe("nightly backup", () => {
  it("backs up 25 mailboxes with at most the configured number in flight, skips a running one, and writes the tenant summary", async () => {
    const upns = Array.from({ length: 25 }, (_, i) => `night${i}@contoso.com`);
    upns.forEach((upn, i) => sim.generateMailbox({ upn, folders: 2, items: 20 + i, seed: 100 + i, size: () => 800 }));
    sim.addUser({ upn: "nomailbox@contoso.com" }); // mail-less user: not listed by `*`
    const { store, cleanup } = await tempStore();
    cleanups.push(cleanup);
    process.env.MAILVAULT_MAILBOXES = "*";
    process.env.MAILVAULT_MAX_MAILBOXES_IN_FLIGHT = "3";
    const t = await startTestApp(sim, store);
    try {
      // A backup of one mailbox is already going (slowly) when the night starts.
      sim.config.latencyMs = (route) => (route === "exportItems" ? 30 : 2);
      const busy = (await t.services.mailbox.resolveMailbox("night7@contoso.com")).mailboxId;
      sim.faults.add({ route: "exportItems", mailboxId: busy, kind: "delayMs", ms: 4000, times: 1 });
      const prepared = await prepareBackup(t.services, "night7@contoso.com");
      await t.app.host.startNew("backupMailbox", { instanceId: prepared.instanceId, input: prepared.request });

      let peak = 0;
      const sampler = setInterval(() => {
        const running = t.app.host.listInstances().filter((i) => i.name === "backupMailbox" && !i.instanceId.includes(":") && i.instanceId !== prepared.instanceId && ["Running", "Pending", "ContinuedAsNew"].includes(i.runtimeStatus));
        peak = Math.max(peak, running.length);
      }, 2);
      await t.app.host.invokeTimer("nightlyTimer");
      const night = nightOf(new Date());
      const status = await t.app.host.waitForCompletion(`nightly-${night}`, { timeoutMs: 120_000 });
      clearInterval(sampler);
      sim.config.latencyMs = 0;
      expect(status.runtimeStatus).toBe("Completed");

      const summary = JSON.parse((await store.readText(tenantSummaryPath(night))) as string) as TenantSummary;
      expect(summary).toMatchObject({ mailboxes: 25, completed: 24, skipped: 1, failed: 0 });
      expect(summary.problems).toEqual([{ mailbox: "night7@contoso.com", status: "skipped", reason: "the previous backup of this mailbox is still running" }]);
      expect(summary.exported).toBe(upns.reduce((n, _u, i) => n + (i === 7 ? 0 : 20 + i), 0));
      expect(peak).toBeLessThanOrEqual(3);
      expect(peak).toBeGreaterThanOrEqual(2);
      expect(busy).toBeTruthy();
      // The running backup was left alone and finishes on its own.
      expect((await t.app.host.waitForCompletion(prepared.instanceId)).runtimeStatus).toBe("Completed");
    } finally {
      delete process.env.MAILVAULT_MAILBOXES;
      delete process.env.MAILVAULT_MAX_MAILBOXES_IN_FLIGHT;
      await t.stop();
    }
  });

  it("backs up a named list and reports names without a mailbox", async () => {
    sim.generateMailbox({ upn: "named1@contoso.com", folders: 1, items: 5, seed: 1, size: () => 500 });
    sim.generateMailbox({ upn: "named2@contoso.com", folders: 1, items: 6, seed: 2, size: () => 500 });
    const { store, cleanup } = await tempStore();
    cleanups.push(cleanup);
    process.env.MAILVAULT_MAILBOXES = "named1@contoso.com, named2@contoso.com;ghost@contoso.com";
    const t = await startTestApp(sim, store);
    try {
      await t.app.host.invokeTimer("nightlyTimer");
      const night = nightOf(new Date());
      expect((await t.app.host.waitForCompletion(`nightly-${night}`, { timeoutMs: 60_000 })).runtimeStatus).toBe("Completed");
      const summary = JSON.parse((await store.readText(tenantSummaryPath(night))) as string) as TenantSummary;
      expect(summary).toMatchObject({ mailboxes: 3, completed: 2, skipped: 1, exported: 11 });
      expect(summary.problems[0]).toMatchObject({ mailbox: "ghost@contoso.com", status: "skipped" });
    } finally {
      delete process.env.MAILVAULT_MAILBOXES;
      await t.stop();
    }
  });

  it("one night over Exchange Online and Exchange Server mailboxes: ews: entries go through EWS", async () => {
    sim.generateMailbox({ upn: "cloud1@contoso.com", folders: 1, items: 7, seed: 5, size: () => 600 });
    sim.generateMailbox({ upn: "onprem1@contoso.local", folders: 2, items: 9, seed: 6, size: () => 700 });
    const { store, cleanup } = await tempStore();
    cleanups.push(cleanup);
    process.env.MAILVAULT_MAILBOXES = "cloud1@contoso.com, ews:onprem1@contoso.local, ews:nobody@contoso.local";
    const t = await startTestApp(sim, store, { env: sim.ewsEnv() });
    try {
      sim.resetStats();
      await t.app.host.invokeTimer("nightlyTimer");
      const night = nightOf(new Date());
      expect((await t.app.host.waitForCompletion(`nightly-${night}`, { timeoutMs: 60_000 })).runtimeStatus).toBe("Completed");
      const summary = JSON.parse((await store.readText(tenantSummaryPath(night))) as string) as TenantSummary;
      expect(summary).toMatchObject({ mailboxes: 3, completed: 2, skipped: 1, exported: 16 });
      expect(summary.problems[0]).toMatchObject({ mailbox: "ews:nobody@contoso.local", status: "skipped" });
      expect(sim.stats.ews.requests.ExportItems).toBeGreaterThanOrEqual(1);
      expect(sim.stats.requests.exportItems).toBeGreaterThanOrEqual(1);
    } finally {
      delete process.env.MAILVAULT_MAILBOXES;
      await t.stop();
    }
  });

  it("validates the schedule and the mailbox list", () => {
    expect(validateSchedule("0 0 2 * * *")).toBe("0 0 2 * * *");
    expect(validateSchedule("0 */15 * * * Mon-Fri")).toBe("0 */15 * * * Mon-Fri");
    for (const bad of ["", "0 2 * * *", "0 0 25 * * *", "a b c d e f", "0 0 2 * * * *"]) expect(() => validateSchedule(bad)).toThrow(InvalidInputError);
    expect(mailboxListSetting({ MAILVAULT_MAILBOXES: " * " })).toBe("*");
    expect(mailboxListSetting({ MAILVAULT_MAILBOXES: "a@x.com,b@x.com  a@x.com" })).toEqual(["a@x.com", "b@x.com"]);
    expect(mailboxListSetting({})).toEqual([]);
    expect(() => mailboxListSetting({ MAILVAULT_MAILBOXES: "../etc/passwd" })).toThrow(InvalidInputError);
  });
});
