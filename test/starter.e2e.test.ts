import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli, type CliIo } from "../cli/main";
import { ExchangeSimulator } from "./simulator";
import { startTestApp, tempStore, type TestApp } from "./support/apps";

/** The HTTP starter through the local host's HTTP server, and the CLI's exit codes. */

let sim: ExchangeSimulator;
let t: TestApp;
let dir: string;
const cleanups: Array<() => Promise<void>> = [];
const KEY = "test-function-key";

beforeAll(async () => {
  sim = await ExchangeSimulator.start({ seed: 31 });
  sim.generateMailbox({ upn: "http@contoso.com", folders: 3, items: 60, seed: 1, size: () => 2000 });
  sim.generateMailbox({ upn: "slow@contoso.com", folders: 2, items: 40, seed: 2, size: () => 2000 });
  const ts = await tempStore();
  dir = ts.dir;
  cleanups.push(ts.cleanup);
  t = await startTestApp(sim, ts.store, { functionKey: KEY });
});
afterAll(async () => {
  await t.stop();
  for (const c of cleanups) await c();
  await sim.close();
});

function post(path: string, body?: string, key: string | null = KEY) {
  return fetch(`${t.app.host.baseUrl}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(key ? { "x-functions-key": key } : {}) },
    body,
  });
}

async function follow(url: string): Promise<{ runtimeStatus: string; output: { exported: number; failed: number } }> {
  for (let i = 0; i < 400; i++) {
    const s = (await (await fetch(url, { headers: { "x-functions-key": KEY } })).json()) as { runtimeStatus: string; output: { exported: number; failed: number } };
    if (!["Running", "Pending", "ContinuedAsNew"].includes(s.runtimeStatus)) return s;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("run did not finish");
}

describe("POST /api/mailboxes/{mailbox}/backups", () => {
  it("answers 202 with the Durable check-status payload and runs the backup", async () => {
    const res = await post("/api/mailboxes/http%40contoso.com/backups", "");
    expect(res.status).toBe(202);
    expect(res.headers.get("location")).toBeTruthy();
    const body = (await res.json()) as { id: string; statusQueryGetUri: string; sendEventPostUri: string; terminatePostUri: string };
    expect(body.id).toMatch(/^backup-/);
    expect(body.statusQueryGetUri).toContain(body.id);
    const done = await follow(body.statusQueryGetUri);
    expect(done.runtimeStatus).toBe("Completed");
    expect(done.output).toMatchObject({ exported: 60, failed: 0 });
  });

  it("answers 409 with the running instance's URLs while a backup of that mailbox is going", async () => {
    sim.config.latencyMs = 40;
    try {
      const first = await post("/api/mailboxes/slow@contoso.com/backups", JSON.stringify({ full: true }));
      expect(first.status).toBe(202);
      const { id } = (await first.json()) as { id: string };
      const second = await post("/api/mailboxes/slow@contoso.com/backups");
      expect(second.status).toBe(409);
      const body = (await second.json()) as { error: { code: string }; id: string; statusQueryGetUri: string };
      expect(body.error.code).toBe("BackupAlreadyRunning");
      expect(body.id).toBe(id);
      expect((await follow(body.statusQueryGetUri)).runtimeStatus).toBe("Completed");
    } finally {
      sim.config.latencyMs = 0;
    }
  });

  it.each([
    ["broken JSON", "/api/mailboxes/http@contoso.com/backups", "{not json", 400, "InvalidJson"],
    ["an unknown field", "/api/mailboxes/http@contoso.com/backups", JSON.stringify({ ful: true }), 400, "InvalidBody"],
    ["a wrong type", "/api/mailboxes/http@contoso.com/backups", JSON.stringify({ full: "yes" }), 400, "InvalidBody"],
    ["a body that is not an object", "/api/mailboxes/http@contoso.com/backups", "[1,2]", 400, "InvalidBody"],
    ["a mailbox with spaces", "/api/mailboxes/bad%20name/backups", "", 400, "InvalidMailbox"],
    ["path traversal in the mailbox", "/api/mailboxes/..%2F..%2Fetc/backups", "", 400, "InvalidMailbox"],
    ["a huge body", "/api/mailboxes/http@contoso.com/backups", JSON.stringify({ full: true, pad: "x".repeat(40_000) }), 413, "BodyTooLarge"],
    ["an unknown mailbox", "/api/mailboxes/nobody@contoso.com/backups", "", 404, "MailboxNotFound"],
  ])("rejects %s with a clear error and starts nothing", async (_name, path, body, status, code) => {
    const before = t.app.host.listInstances().length;
    const res = await post(path, body);
    expect(res.status).toBe(status);
    const json = (await res.json()) as { error: { code: string; message: string } };
    expect(json.error.code).toBe(code);
    expect(json.error.message.length).toBeGreaterThan(5);
    expect(t.app.host.listInstances().length).toBe(before);
  });

  it("requires the function key", async () => {
    expect((await post("/api/mailboxes/http@contoso.com/backups", "", null)).status).toBe(401);
    expect((await post("/api/mailboxes/http@contoso.com/backups", "", "wrong-key")).status).toBe(401);
  });
});

describe("POST /api/mailboxes/{mailbox}/restores", () => {
  it("restores the latest run into another mailbox and reports it", async () => {
    const target = sim.addMailbox({ upn: "http-restore@contoso.com" });
    const res = await post("/api/mailboxes/http@contoso.com/restores", JSON.stringify({ target: "http-restore@contoso.com", targetFolderName: "Back" }));
    expect(res.status).toBe(202);
    const { statusQueryGetUri } = (await res.json()) as { statusQueryGetUri: string };
    const done = (await follow(statusQueryGetUri)) as unknown as { runtimeStatus: string; output: { imported: number; failed: number; items: number } };
    expect(done.runtimeStatus).toBe("Completed");
    expect(done.output).toMatchObject({ items: 60, imported: 60, failed: 0 });
    expect(sim.importedItems(target.mailboxId)).toHaveLength(60);
  });

  it.each([
    ["an unknown run", { run: "20200101T000000000Z-abcd1234" }, "RunNotFound"],
    ["a malformed run id", { run: "../../x" }, "InvalidRunId"],
    ["an item not in the run", { items: ["AAMkAGnope="] }, "ItemNotInRun"],
    ["a folder not in the run", { folders: ["AAMkAGnofolder="] }, "FolderNotInRun"],
    ["an unknown field", { overwrite: true }, "InvalidBody"],
    ["a wrong type", { items: "all" }, "InvalidBody"],
    ["a bad target", { target: "a/b" }, "InvalidMailbox"],
  ])("rejects %s with 400 and starts nothing", async (_name, body, code) => {
    const before = t.app.host.listInstances().length;
    const res = await post("/api/mailboxes/http@contoso.com/restores", JSON.stringify(body));
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe(code);
    expect(t.app.host.listInstances().length).toBe(before);
  });
});

describe("mailvault CLI", () => {
  function io(env: Record<string, string | undefined> = {}) {
    const out: string[] = [];
    const err: string[] = [];
    const value: CliIo = { stdout: (s) => out.push(s), stderr: (s) => err.push(s), env: { ...sim.env("v1.0"), MAILVAULT_STORE: dir, ...env }, tty: false };
    return { value, out, err };
  }

  it("exits 0 when every item is stored, with one JSON document on stdout", async () => {
    sim.generateMailbox({ upn: "cli@contoso.com", folders: 2, items: 30, seed: 3, size: () => 1500 });
    const { value, out } = io();
    const code = await runCli(["backup", "--mailbox", "cli@contoso.com", "--json"], value);
    expect(code).toBe(0);
    const doc = JSON.parse(out.join("")) as Array<{ runId: string; mailboxId: string; exported: number; failed: number; manifest: string }>;
    expect(doc).toHaveLength(1);
    expect(doc[0]).toMatchObject({ exported: 30, failed: 0, unchanged: 0, deleted: 0 });
    expect(doc[0].manifest).toMatch(/^mailboxes\/.+\/runs\/.+\/manifest\.jsonl$/);

    const runs = io();
    expect(await runCli(["runs", "--mailbox", "cli@contoso.com", "--json"], runs.value)).toBe(0);
    expect((JSON.parse(runs.out.join("")) as { runs: Array<{ runId: string }> }).runs.map((r) => r.runId)).toContain(doc[0].runId);

    const verify = io();
    expect(await runCli(["verify", "--mailbox", "cli@contoso.com", "--json"], verify.value)).toBe(0);
    expect(JSON.parse(verify.out.join(""))).toMatchObject({ checked: 30, ok: 30, problems: [] });
  });

  it("restores with `mailvault restore` and exits 0", async () => {
    const target = sim.addMailbox({ upn: "cli-restore@contoso.com" });
    const { value, out, err } = io();
    const code = await runCli(["restore", "--mailbox", "cli@contoso.com", "--to", "cli-restore@contoso.com", "--json"], value);
    expect(err.join("")).toBe("");
    expect(code).toBe(0);
    expect(JSON.parse(out.join(""))).toMatchObject({ items: 30, imported: 30, failed: 0, targetMailboxId: target.mailboxId });
  });

  it("exits 3 when the run finished but some items failed", async () => {
    const mbx = sim.generateMailbox({ upn: "cli3@contoso.com", folders: 1, items: 10, seed: 4, size: () => 1500 });
    sim.faults.add({ route: "exportItems", kind: "itemError", itemId: sim.listItems(mbx.mailboxId)[2].id, code: "ErrorCorruptData", times: Infinity });
    const { value, out } = io();
    const code = await runCli(["backup", "--mailbox", "cli3@contoso.com", "--json"], value);
    sim.faults.clear();
    expect(code).toBe(3);
    expect(JSON.parse(out.join(""))[0]).toMatchObject({ exported: 9, failed: 1 });
  });

  it.each([
    ["no command", []],
    ["an unknown command", ["frobnicate"]],
    ["a missing --mailbox", ["backup"]],
    ["an unknown flag", ["backup", "--mailbox", "x@contoso.com", "--bogus"]],
    ["an invalid mailbox", ["backup", "--mailbox", "../../etc/passwd"]],
    ["an unknown mailbox", ["backup", "--mailbox", "nobody@contoso.com"]],
    ["a bad run id", ["verify", "--mailbox", "cli@contoso.com", "--run", "../../x"]],
    ["an unknown mailbox in the store", ["runs", "--mailbox", "never@contoso.com"]],
    ["a store URL with a SAS", ["runs", "--mailbox", "x@contoso.com", "--store", "https://acct.blob.core.windows.net/c?sig=SECRETSIG"]],
  ])("exits 2 on %s with a one-line message", async (_name, argv) => {
    const { value, err } = io();
    const code = await runCli(argv, value);
    expect(code).toBe(2);
    const text = err.join("");
    expect(text.trim().length).toBeGreaterThan(0);
    expect(text).not.toContain("SECRETSIG");
  });

  it("exits 2 when the Graph endpoint setting is invalid, before writing anything", async () => {
    const { value } = io({ GRAPH_ENDPOINT: "http://graph.example.com" });
    expect(await runCli(["backup", "--mailbox", "cli@contoso.com"], value)).toBe(2);
  });
});
