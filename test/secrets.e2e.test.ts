import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { backupOnHost } from "../cli/localRun";
import { runCli, type CliIo } from "../cli/main";
import { lineLogger } from "../shared/log";
import { prepareRestore } from "../shared/restore/prepare";
import { ExchangeSimulator } from "./simulator";
import { manifestLines, startTestApp, tempStore } from "./support/apps";

/**
 * Secrets never reach a log line or an error: a full backup and restore with debug logging, with
 * faults that make every error path log, then every line searched for the bearer token and every
 * import session's URL and token. Also: restore back into the original folders.
 */

let sim: ExchangeSimulator;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  sim = await ExchangeSimulator.start({ seed: 71, token: "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.eyJzdWIiOiJtYWlsdmF1bHQtdGVzdCJ9.c2VjcmV0LXNpZ25hdHVyZQ" });
});
afterAll(async () => {
  for (const c of cleanups) await c();
  await sim.close();
});

describe("secrets", () => {
  it("a backup and a restore at debug level, with faults, log no token and no import URL", async () => {
    const mbx = sim.generateMailbox({ upn: "secret@contoso.com", folders: 3, items: 60, seed: 3, size: () => 3000 });
    const target = sim.addMailbox({ upn: "secret-target@contoso.com" });
    const items = sim.listItems(mbx.mailboxId);
    const { store, cleanup } = await tempStore();
    cleanups.push(cleanup);
    const lines: string[] = [];
    const logger = lineLogger((l) => lines.push(l), "debug");
    sim.faults.add(
      { route: "exportItems", kind: "status", status: 429, retryAfterSeconds: 0, times: 3 },
      { route: "exportItems", kind: "itemError", itemId: items[2].id, code: "ErrorCorruptData", times: Infinity },
      { route: "settings", kind: "status", status: 401, times: 1 },
      { route: "importItem", kind: "status", status: 500, times: 2 },
    );
    const t = await startTestApp(sim, store, { logger });
    let failedRestore = "";
    try {
      const o = await backupOnHost(t.app, t.services, "secret@contoso.com");
      expect(o.summary).toMatchObject({ exported: 59, failed: 1 });
      const r = await prepareRestore(t.services, "secret@contoso.com", { target: "secret-target@contoso.com" }, new Date());
      sim.config.latencyMs = (route) => (route === "importItem" ? 5 : 0);
      await t.app.host.startNew("restoreMailbox", { instanceId: `restore-${r.restoreId}`, input: r });
      while (sim.importedItems(target.mailboxId).length < 5) await new Promise((res) => setTimeout(res, 5));
      sim.expireImportSessions(target.mailboxId);
      const s = await t.app.host.waitForCompletion(`restore-${r.restoreId}`, { timeoutMs: 60_000 });
      expect(s.runtimeStatus).toBe("Completed");
      expect(s.output).toMatchObject({ imported: 59, failed: 0 });
      // A restore into a mailbox the identity may not write to: the error path, with its message.
      sim.faults.add({ route: "importItem", kind: "status", status: 403, code: "ErrorAccessDenied", times: Infinity });
      const r2 = await prepareRestore(t.services, "secret@contoso.com", { target: "secret-target@contoso.com", items: [items[0].id] }, new Date());
      await t.app.host.startNew("restoreMailbox", { instanceId: `restore-${r2.restoreId}`, input: r2 });
      const s2 = await t.app.host.waitForCompletion(`restore-${r2.restoreId}`, { timeoutMs: 60_000 });
      failedRestore = JSON.stringify(s2.output);
      expect(s2.output).toMatchObject({ failed: 1 });
    } finally {
      sim.faults.clear();
      sim.config.latencyMs = 0;
      await t.stop();
    }
    const sessions = sim.importSessions(target.mailboxId);
    expect(sessions.length).toBeGreaterThanOrEqual(2);
    const secrets = [sim.token, ...sessions.flatMap((x) => [x.token, x.importUrl])];
    // Nor in anything the store keeps (manifests, summaries, restore reports, state).
    const docs: string[] = [];
    for await (const p of store.listObjects("")) if (/\.jsonl?$/.test(p)) docs.push((await store.readText(p)) ?? "");
    expect(docs.length).toBeGreaterThan(3);
    const haystack = [...lines, failedRestore, ...docs];
    for (const secret of secrets) for (const line of haystack) expect(line).not.toContain(secret);
    expect(lines.some((l) => /retry|throttl|not stored|not restored/i.test(l))).toBe(true);
  });

  it("the CLI's error output carries no token", async () => {
    const out: string[] = [];
    const io: CliIo = { stdout: (s) => out.push(s), stderr: (s) => out.push(s), env: { ...sim.env("v1.0"), GRAPH_ACCESS_TOKEN: "not-the-right-token-XYZ", MAILVAULT_STORE: "/tmp/mailvault-secret-test" }, tty: false };
    const code = await runCli(["backup", "--mailbox", "secret@contoso.com"], io);
    expect(code).toBe(1);
    expect(out.join("")).not.toContain("not-the-right-token-XYZ");
    expect(out.join("")).toMatch(/401|authentication|token/i);
  });

  it("restores back into the original folders, well-known ones by their role", async () => {
    const mbx = sim.generateMailbox({ upn: "original@contoso.com", folders: 3, items: 20, seed: 4, size: () => 1000 });
    const inboxItem = sim.addItem(mbx.mailboxId, mbx.wellKnownFolders.inbox, { size: 1234 });
    const { store, cleanup } = await tempStore();
    cleanups.push(cleanup);
    const t = await startTestApp(sim, store);
    try {
      const o = await backupOnHost(t.app, t.services, "original@contoso.com");
      if (!o.summary) throw new Error("backup failed");
      const lines = await manifestLines(store, o.summary.manifest);
      const before = sim.listFolders(mbx.mailboxId).length;
      const r = await prepareRestore(t.services, "original@contoso.com", { intoOriginalFolders: true }, new Date());
      await t.app.host.startNew("restoreMailbox", { instanceId: `restore-${r.restoreId}`, input: r });
      const s = await t.app.host.waitForCompletion(`restore-${r.restoreId}`, { timeoutMs: 60_000 });
      expect(s.output).toMatchObject({ imported: 21, failed: 0 });
      // No new folders: every item went back where it was (the folders still exist).
      expect(sim.listFolders(mbx.mailboxId).length).toBe(before);
      const imported = sim.importedItems(mbx.mailboxId);
      const bySha = new Map(imported.map((i) => [i.sha256, i.folderId]));
      for (const l of lines) expect(bySha.get(l.sha256 as string)).toBe(l.folderId);
      expect(bySha.get(lines.find((l) => l.itemId === inboxItem.id)?.sha256 as string)).toBe(mbx.wellKnownFolders.inbox);
    } finally {
      await t.stop();
    }
  });
});
