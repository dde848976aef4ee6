import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LocalDurableHost } from "../localhost";
import type { BackupRequest } from "../shared/backup/orchestration";
import { backupInstanceId } from "../shared/backup/orchestration";
import { listRuns, pickRun } from "../shared/catalog";
import { lineLogger } from "../shared/log";
import { readSubscriptions } from "../shared/notifications/subscriptions";
import { watcherInstanceId, type WatcherStatus } from "../shared/notifications/watcher";
import { createServices, type Services, setServices } from "../shared/services";
import type { ItemStore } from "../shared/store/itemStore";
import { verifyRun } from "../shared/verify";
import { ExchangeSimulator, type SimMailbox } from "./simulator";
import { manifestLines, tempStore } from "./support/apps";

/**
 * Event-triggered backups on the local host against the simulator: Graph's validation handshake,
 * clientState, coalescing bursts into runs, lifecycle notifications, the Event Grid path, bad bodies.
 */

const KEY = "notifications-test-key";
const CLIENT_STATE = `cs-${randomBytes(16).toString("hex")}`;
const FORGED = `cs-${randomBytes(16).toString("hex")}`;

let sim: ExchangeSimulator;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  sim = await ExchangeSimulator.start({ seed: 61 });
});
afterAll(async () => {
  for (const c of cleanups) await c();
  await sim.close();
});

interface App {
  host: LocalDurableHost;
  services: Services;
  store: ItemStore;
  /** Host diagnostics, the functions' context.log lines and the services' log, all of them. */
  logs: string[];
  stop(): Promise<void>;
}

/** The app on the local host (timers 1,000 times faster), with every log line captured. */
async function startApp(env: Record<string, string>): Promise<App> {
  const { store, cleanup } = await tempStore();
  cleanups.push(cleanup);
  const logs: string[] = [];
  const services = createServices(sim.env("v1.0"), {
    store,
    logger: lineLogger((l) => logs.push(l), "debug"),
    timing: { graphBaseRetryDelayMs: 5, graphMaxRetryDelayMs: 50, exportRetryDelayMs: 5, importRetryDelayMs: 5 },
  });
  setServices(services);
  const host = await LocalDurableHost.start({
    loadApp: async () => {
      await import("../functions/index.js");
    },
    functionKey: KEY,
    timerScale: 0.001,
    log: (l) => logs.push(l),
  });
  Object.assign(process.env, { MAILVAULT_NOTIFICATION_URL: `${host.baseUrl}/api/notifications?code=${KEY}`, MAILVAULT_NOTIFICATION_CLIENT_STATE: CLIENT_STATE, MAILVAULT_CHANGE_QUIET_SECONDS: "300" }, env);
  return {
    host,
    services,
    store,
    logs,
    async stop() {
      await host.stop();
      setServices(undefined);
      for (const k of ["MAILVAULT_NOTIFICATION_URL", "MAILVAULT_NOTIFICATION_CLIENT_STATE", "MAILVAULT_CHANGE_QUIET_SECONDS", "MAILVAULT_MAILBOXES"]) delete process.env[k];
    },
  };
}

function post(app: App, path: string, body: string, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${app.host.baseUrl}${path}`, { method: "POST", headers: { "content-type": "application/json", "x-functions-key": KEY, ...headers }, body });
}

/** Starts the subscription sync and waits for it. */
async function sync(app: App): Promise<{ created: number; renewed: number; deleted: number; failed: number }> {
  const res = await post(app, "/api/subscriptions/sync", "");
  expect(res.status).toBe(202);
  const done = await app.host.waitForCompletion("subscriptions-sync", { timeoutMs: 20_000 });
  expect(done.runtimeStatus, JSON.stringify(done.output)).toBe("Completed");
  return done.output as { created: number; renewed: number; deleted: number; failed: number };
}

function watcher(app: App, mbx: SimMailbox): WatcherStatus | undefined {
  return app.host.getStatus(watcherInstanceId(mbx.userId))?.customStatus as WatcherStatus | undefined;
}

/**
 * Waits until the watcher is idle after at least `runs` runs and stays so (no execution follows
 * for a while). `events` in its status is a lower bound: notifications beyond the first that
 * arrive during a run are folded into the follow-up run without being counted.
 */
async function waitIdle(app: App, mbx: SimMailbox, runs: number, timeoutMs = 20_000): Promise<WatcherStatus> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const s = watcher(app, mbx);
    if (s?.phase === "idle" && s.runs >= runs) {
      await new Promise((r) => setTimeout(r, 400));
      const again = watcher(app, mbx);
      if (again?.phase === "idle" && again.runs === s.runs) return again;
      continue;
    }
    if (Date.now() > until) throw new Error(`watcher not idle after ${runs} runs: ${JSON.stringify(s)} ${JSON.stringify(app.host.getStatus(watcherInstanceId(mbx.userId))?.output)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The latest complete run lists every item of the mailbox with the simulator's exact bytes, and the stored objects verify. */
async function expectStoredAsInSimulator(app: App, mbx: SimMailbox, changed: readonly string[]): Promise<void> {
  const run = await pickRun(app.store, mbx.mailboxId);
  const lines = new Map((await manifestLines(app.store, run.manifest)).map((l) => [l.itemId, l]));
  const items = sim.listItems(mbx.mailboxId);
  expect(lines.size).toBe(items.length);
  for (const item of items) {
    const line = lines.get(item.id);
    expect(line?.changeKey, item.id).toBe(item.changeKey);
    expect(line?.sha256, item.id).toBe(sim.itemSha256(mbx.mailboxId, item.id));
  }
  for (const id of changed) expect(["exported", "unchanged"]).toContain(lines.get(id)?.status);
  const verified = await verifyRun(app.store, { mailboxId: mbx.mailboxId, runId: run.runId, manifest: run.manifest });
  expect(verified.problems).toEqual([]);
}

async function lifecycleDone(app: App, count: number): Promise<Array<{ action: string; nudged?: string; user?: string }>> {
  const until = Date.now() + 20_000;
  for (;;) {
    const all = app.host.listInstances().filter((i) => i.name === "subscriptionLifecycle");
    if (all.length >= count && all.every((i) => ["Completed", "Failed"].includes(i.runtimeStatus))) {
      for (const i of all) expect(i.runtimeStatus, JSON.stringify(i.output)).toBe("Completed");
      return all.map((i) => i.output as { action: string; nudged?: string });
    }
    if (Date.now() > until) throw new Error(`lifecycle orchestrations not done: ${JSON.stringify(all.map((i) => [i.runtimeStatus, i.output]))}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function noSecretIn(logs: readonly string[]): void {
  for (const line of logs) {
    expect(line).not.toContain(CLIENT_STATE);
    expect(line).not.toContain(FORGED);
    expect(line).not.toContain(KEY);
  }
}

describe("webhook: handshake, clientState, bad bodies", () => {
  let app: App;
  let mbx: SimMailbox;
  beforeAll(async () => {
    mbx = sim.generateMailbox({ upn: "hook@contoso.com", folders: 2, items: 20, seed: 1, size: () => 900 });
    app = await startApp({ MAILVAULT_MAILBOXES: "hook@contoso.com" });
  });
  afterAll(() => app.stop());

  it("answers the validation handshake with exactly the decoded token as text/plain", async () => {
    const token = "Validation: Testing client application reachability for subscription Request-Id: 0f4e <b>&amp; +x=1</b>";
    const res = await fetch(`${app.host.baseUrl}/api/notifications?code=${KEY}&validationToken=${encodeURIComponent(token)}`, { method: "POST", headers: { "content-type": "text/plain; charset=utf-8" } });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/plain/);
    expect(res.headers.get("x-content-type-options")).toBe("nosniff");
    expect(await res.text()).toBe(token);
    // The function key is required (Graph calls the notificationUrl with ?code=).
    const anonymous = await fetch(`${app.host.baseUrl}/api/notifications?validationToken=abc`, { method: "POST" });
    expect(anonymous.status).toBe(401);
    // And Graph's own handshake, made by the simulator when it creates the subscription, passes.
    expect(await sync(app)).toMatchObject({ created: 1, failed: 0 });
    const validations = sim.notificationDeliveries.filter((d) => d.kind === "validation" && d.target.startsWith(app.host.baseUrl));
    expect(validations.length).toBeGreaterThanOrEqual(1);
    expect(validations.every((d) => d.status === 200 && d.contentType?.startsWith("text/plain"))).toBe(true);
  });

  it("drops notifications with a forged clientState: nothing starts and the value is not logged", async () => {
    const item = sim.listItems(mbx.mailboxId)[0];
    sim.modifyItem(mbx.mailboxId, item.id);
    const deliveries = await sim.notifyChanges(mbx.upn, [{ itemId: item.id }], { clientState: FORGED });
    expect(deliveries.map((d) => d.status)).toEqual([202]);
    const missing = await sim.notifyChanges(mbx.upn, [{ itemId: item.id }], { clientState: null });
    expect(missing.map((d) => d.status)).toEqual([202]);
    await new Promise((r) => setTimeout(r, 300));
    expect(app.host.listInstances().filter((i) => i.name === "mailboxChangeWatcher" || i.name === "backupMailbox")).toEqual([]);
    expect(app.logs.filter((l) => /clientState did not match/.test(l))).toHaveLength(2);
    noSecretIn(app.logs);
  });

  it.each([
    ["broken JSON", "{not json", 400, "InvalidJson"],
    ["an empty body", "", 400, "InvalidBody"],
    ["no value", JSON.stringify({}), 400, "InvalidBody"],
    ["an empty value", JSON.stringify({ value: [] }), 400, "InvalidBody"],
    ["value not an array", JSON.stringify({ value: { subscriptionId: "x" } }), 400, "InvalidBody"],
    ["a notification without subscriptionId", JSON.stringify({ value: [{ changeType: "created", resource: "Users/u/Messages/m", clientState: CLIENT_STATE }] }), 400, "InvalidBody"],
    ["a change without resource", JSON.stringify({ value: [{ subscriptionId: "s", changeType: "created", clientState: CLIENT_STATE }] }), 400, "InvalidBody"],
    ["a wrong type", JSON.stringify({ value: [{ subscriptionId: 5, changeType: "created", resource: "Users/u/Messages/m" }] }), 400, "InvalidBody"],
    ["too many notifications", JSON.stringify({ value: Array.from({ length: 1001 }, () => ({ subscriptionId: "s", lifecycleEvent: "missed" })) }), 400, "InvalidBody"],
  ])("answers 400 for %s", async (_what, body, status, code) => {
    const res = await post(app, "/api/notifications", body);
    expect(res.status).toBe(status);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe(code);
  });

  it("answers 413 above 1 MiB and starts nothing for refused bodies", async () => {
    const big = JSON.stringify({ value: [{ subscriptionId: "s", lifecycleEvent: "missed", clientState: "x".repeat(200) }], pad: "x".repeat(1024 * 1024) });
    const res = await post(app, "/api/notifications", big);
    expect(res.status).toBe(413);
    expect(app.host.listInstances().filter((i) => i.name === "mailboxChangeWatcher" || i.name === "subscriptionLifecycle")).toEqual([]);
  });
});

describe("coalescing", () => {
  let app: App;
  beforeAll(async () => {
    sim.generateMailbox({ upn: "during@contoso.com", folders: 1, items: 1, seed: 3, size: () => 100 });
    app = await startApp({ MAILVAULT_MAILBOXES: "burst@contoso.com,during@contoso.com" });
  });
  afterAll(() => app.stop());

  it("200 notifications for one mailbox within 5 seconds make at most 2 runs, and every changed item is stored", async () => {
    const mbx = sim.generateMailbox({ upn: "burst@contoso.com", folders: 4, items: 150, seed: 2, size: () => 1200 });
    expect(await sync(app)).toMatchObject({ created: 2, failed: 0 });
    // A baseline run, so that the event-triggered runs are incremental.
    const base = await post(app, `/api/mailboxes/${mbx.upn}/backups`, "");
    expect(base.status).toBe(202);
    expect((await app.host.waitForCompletion(backupInstanceId(mbx.mailboxId), { timeoutMs: 20_000 })).runtimeStatus).toBe("Completed");
    const runsBefore = (await pickRun(app.store, mbx.mailboxId)).runId;

    // 200 changes: 100 modified items, 100 new ones; each announced by its own POST, over about 4 seconds.
    const items = sim.listItems(mbx.mailboxId);
    const changed: string[] = [];
    const started = Date.now();
    const deliveries = [];
    for (let i = 0; i < 200; i++) {
      let id: string;
      if (i % 2 === 0) id = sim.modifyItem(mbx.mailboxId, items[i / 2].id).id;
      else id = sim.addItem(mbx.mailboxId, items[i % 4 === 1 ? 0 : 1].folderId, { size: 700 + i }).id;
      changed.push(id);
      deliveries.push(...(await sim.notifyChanges(mbx.upn, [{ itemId: id, changeType: i % 2 === 0 ? "updated" : "created" }], { batchSize: 1 })));
      await new Promise((r) => setTimeout(r, 12));
    }
    const burstMs = Date.now() - started;
    expect(burstMs).toBeLessThan(5000);
    expect(deliveries).toHaveLength(200);
    expect(deliveries.every((d) => d.status === 202)).toBe(true);
    // Graph wants an answer within 3 seconds.
    expect(Math.max(...deliveries.map((d) => d.ms))).toBeLessThan(3000);

    const s = await waitIdle(app, mbx, 1);
    expect(s.events).toBeGreaterThanOrEqual(1);
    expect(s.events).toBeLessThanOrEqual(200);
    expect(s.runs).toBeLessThanOrEqual(2);
    expect(s.last).toMatchObject({ status: "completed", full: false });
    const backups = app.host.listInstances().filter((i) => i.instanceId === backupInstanceId(mbx.mailboxId));
    expect(backups).toHaveLength(1); // one instance id, re-used by each run
    expect(app.host.metrics(backupInstanceId(mbx.mailboxId)).executions).toBeGreaterThan(0);
    const latest = await pickRun(app.store, mbx.mailboxId);
    expect(latest.runId > runsBefore).toBe(true);
    expect(latest.summary?.baseRunId).toBeDefined();
    await expectStoredAsInSimulator(app, mbx, changed);
    // No clientState, key or forged value in any line.
    noSecretIn(app.logs);
  }, 30_000);

  it("changes that arrive during a run cause exactly one follow-up run after it", async () => {
    const mbx = sim.getMailbox("during@contoso.com") as SimMailbox;
    const folder = sim.listItems(mbx.mailboxId)[0].folderId;
    const first = Array.from({ length: 5 }, (_, i) => sim.addItem(mbx.mailboxId, folder, { size: 500 + i }).id);
    // Slow exports, so that the run is long enough to receive notifications while it goes.
    sim.config.latencyMs = (route) => (route === "exportItems" ? 400 : 0);
    try {
      await sim.notifyChanges(mbx.upn, first.map((itemId) => ({ itemId, changeType: "created" as const })), { batchSize: 5 });
      const until = Date.now() + 10_000;
      while (watcher(app, mbx)?.phase !== "running") {
        if (Date.now() > until) throw new Error(`watcher did not start running: ${JSON.stringify(watcher(app, mbx))}`);
        await new Promise((r) => setTimeout(r, 5));
      }
      const during: string[] = [];
      for (let i = 0; i < 30; i++) {
        during.push(sim.addItem(mbx.mailboxId, folder, { size: 900 + i }).id);
        expect((await sim.notifyChanges(mbx.upn, [{ itemId: during[i], changeType: "created" }], { batchSize: 1 }))[0].status).toBe(202);
      }
      expect(watcher(app, mbx)?.phase).toBe("running"); // all 30 arrived during the first run
      const s = await waitIdle(app, mbx, 2);
      expect(s.runs).toBe(2);
      await expectStoredAsInSimulator(app, mbx, [...first, ...during]);
    } finally {
      sim.config.latencyMs = 0;
    }
  }, 30_000);
});

describe("coalescing with other backups", () => {
  let app: App;
  beforeAll(async () => {
    sim.generateMailbox({ upn: "busy@contoso.com", folders: 3, items: 200, seed: 6, size: () => 700 });
    app = await startApp({ MAILVAULT_MAILBOXES: "busy@contoso.com" });
    expect(await sync(app)).toMatchObject({ created: 1, failed: 0 });
  });
  afterAll(() => app.stop());

  it("a change while an HTTP backup of the mailbox runs is not dropped: the watcher waits for it, then runs", async () => {
    const mbx = sim.getMailbox("busy@contoso.com") as SimMailbox;
    sim.config.latencyMs = (route) => (route === "exportItems" ? 500 : 0);
    try {
      expect((await post(app, `/api/mailboxes/${mbx.upn}/backups`, "")).status).toBe(202);
      const changed = sim.addItem(mbx.mailboxId, sim.listItems(mbx.mailboxId)[0].folderId, { size: 2222 }).id;
      // (Subscriptions a previous suite's app left behind would get a delivery too, and fail: that app is gone.)
      const delivered = await sim.notifyChanges(mbx.upn, [{ itemId: changed, changeType: "created" }]);
      expect(delivered.filter((d) => d.target.startsWith(app.host.baseUrl)).map((d) => d.status)).toEqual([202]);
      let sawWaiting = false;
      const until = Date.now() + 15_000;
      while (!sawWaiting && Date.now() < until) {
        sawWaiting = watcher(app, mbx)?.phase === "waiting-for-running-backup";
        await new Promise((r) => setTimeout(r, 5));
      }
      expect(sawWaiting).toBe(true);
      const s = await waitIdle(app, mbx, 1);
      expect(s).toMatchObject({ runs: 1, last: { status: "completed" } });
      const runs = await listRuns(app.store, mbx.mailboxId);
      expect(runs.map((r) => r.state)).toEqual(["complete", "complete"]); // the HTTP run, then the watcher's
      expect(s.last?.runId).toBe(runs[1].runId);
      await expectStoredAsInSimulator(app, mbx, [changed]);
    } finally {
      sim.config.latencyMs = 0;
    }
  }, 30_000);
});

describe("lifecycle notifications", () => {
  let app: App;
  let mbx: SimMailbox;
  beforeAll(async () => {
    mbx = sim.generateMailbox({ upn: "life@contoso.com", folders: 2, items: 30, seed: 4, size: () => 800 });
    app = await startApp({ MAILVAULT_MAILBOXES: "life@contoso.com" });
    expect(await sync(app)).toMatchObject({ created: 1 });
  });
  afterAll(() => app.stop());

  const current = () => sim.listSubscriptions().find((s) => s.userId === mbx.userId && s.notificationUrl.startsWith(app.host.baseUrl));

  it("reauthorizationRequired: the subscription is renewed with a PATCH", async () => {
    const sub = current();
    expect(sub).toBeDefined();
    sim.setSubscriptionExpiration(sub!.id, new Date(Date.now() + 3600_000));
    const d = await sim.sendLifecycleNotification(sub!.id, "reauthorizationRequired");
    expect(d.status).toBe(202);
    const [out] = await lifecycleDone(app, 1);
    expect(out).toMatchObject({ action: "renewed" });
    const renews = sim.subscriptionLog.filter((e) => e.op === "renew" && e.id === sub!.id);
    expect(renews).toHaveLength(1);
    expect(Date.parse(current()!.expirationDateTime) - Date.now()).toBeGreaterThan(60 * 3600_000);
    const rec = (await readSubscriptions(app.store)).subscriptions[mbx.userId.toLowerCase()];
    expect(rec.subscriptionId).toBe(sub!.id);
    expect(rec.expirationDateTime).toBe(current()!.expirationDateTime);
  });

  it("subscriptionRemoved: a new subscription is made and an incremental run follows", async () => {
    const old = current()!;
    const d = await sim.sendLifecycleNotification(old.id, "subscriptionRemoved");
    expect(d.status).toBe(202);
    const outs = await lifecycleDone(app, 2);
    expect(outs).toContainEqual(expect.objectContaining({ action: "recreated", nudged: "started" }));
    const fresh = current();
    expect(fresh).toBeDefined();
    expect(fresh!.id).not.toBe(old.id);
    expect(sim.getSubscription(old.id)).toBeUndefined();
    const rec = (await readSubscriptions(app.store)).subscriptions[mbx.userId.toLowerCase()];
    expect(rec.subscriptionId).toBe(fresh!.id);
    const s = await waitIdle(app, mbx, 1);
    expect(s.last).toMatchObject({ status: "completed", full: false });
    expect(s.runs).toBe(1);
  });

  it("missed: a full pass of the mailbox", async () => {
    const sub = current()!;
    const changedId = sim.modifyItem(mbx.mailboxId, sim.listItems(mbx.mailboxId)[3].id).id;
    const d = await sim.sendLifecycleNotification(sub.id, "missed");
    expect(d.status).toBe(202);
    await lifecycleDone(app, 3);
    const s = await waitIdle(app, mbx, 2);
    expect(s.runs).toBe(2);
    expect(s.last).toMatchObject({ status: "completed", full: true });
    // The backup itself was asked to re-read every folder.
    expect((app.host.getStatus(backupInstanceId(mbx.mailboxId))?.input as BackupRequest).full).toBe(true);
    await expectStoredAsInSimulator(app, mbx, [changedId]);
  });

  it("a lifecycle notification with a forged clientState changes nothing", async () => {
    const sub = current()!;
    const before = sim.subscriptionLog.length;
    const d = await sim.sendLifecycleNotification(sub.id, "reauthorizationRequired", { clientState: FORGED });
    expect(d.status).toBe(202);
    await new Promise((r) => setTimeout(r, 200));
    expect(app.host.listInstances().filter((i) => i.name === "subscriptionLifecycle")).toHaveLength(3);
    expect(sim.subscriptionLog.length).toBe(before);
    noSecretIn(app.logs);
  });
});

describe("Event Grid partner topic", () => {
  let app: App;
  let mbx: SimMailbox;
  beforeAll(async () => {
    mbx = sim.generateMailbox({ upn: "grid@contoso.com", folders: 3, items: 40, seed: 5, size: () => 1000 });
    app = await startApp({
      MAILVAULT_MAILBOXES: "grid@contoso.com",
      MAILVAULT_NOTIFICATION_URL: "EventGrid:?azuresubscriptionid=00000000-0000-0000-0000-000000000001&resourcegroup=rg-mailvault&partnertopic=mailvault-graph&location=westeurope",
    });
  });
  afterAll(() => app.stop());

  it("subscribes through the partner topic and backs up on its CloudEvents, with the same clientState check", async () => {
    const validationsBefore = sim.notificationDeliveries.filter((d) => d.kind === "validation").length;
    expect(await sync(app)).toMatchObject({ created: 1, failed: 0 });
    const sub = sim.listSubscriptions().find((s) => s.userId === mbx.userId && s.channel === "eventGrid");
    expect(sub).toMatchObject({ lifecycleNotificationUrl: sub?.notificationUrl, changeType: "created,updated,deleted", resource: `/users/${mbx.userId}/messages` });
    // No handshake for Event Grid delivery.
    expect(sim.notificationDeliveries.filter((d) => d.kind === "validation").length).toBe(validationsBefore);

    const items = sim.listItems(mbx.mailboxId);
    const changed = [sim.modifyItem(mbx.mailboxId, items[0].id).id, sim.addItem(mbx.mailboxId, items[1].folderId, { size: 4321 }).id];
    const forged = sim.eventGridEvents(mbx.upn, [{ itemId: changed[0] }], { clientState: FORGED });
    for (const e of forged) await app.host.invoke("changeEventGrid", e);
    expect(app.host.listInstances().filter((i) => i.name === "mailboxChangeWatcher")).toEqual([]);

    const events = sim.eventGridEvents(mbx.upn, [{ itemId: changed[0], changeType: "updated" }, { itemId: changed[1], changeType: "created" }]);
    expect(events.map((e) => e.type)).toEqual(["Microsoft.Graph.MessageUpdated", "Microsoft.Graph.MessageCreated"]);
    expect(events[0].data.resource).toMatch(/^https:\/\/outlook\.office365\.com\/api\/beta\/Users\('/);
    for (const e of events) await app.host.invoke("changeEventGrid", e);
    const s = await waitIdle(app, mbx, 1);
    expect(s.runs).toBe(1);
    await expectStoredAsInSimulator(app, mbx, changed);

    // A lifecycle event through the topic: reauthorized with a PATCH.
    await app.host.invoke("changeEventGrid", sim.eventGridLifecycleEvent(sub!.id, "reauthorizationRequired"));
    await lifecycleDone(app, 1);
    expect(sim.subscriptionLog.filter((e) => e.op === "renew" && e.id === sub!.id)).toHaveLength(1);
    // Events of other resources are ignored; broken ones are dropped without a retry.
    await app.host.invoke("changeEventGrid", { ...events[0], type: "Microsoft.Graph.UserUpdated" });
    await app.host.invoke("changeEventGrid", { ...events[0], data: { ...events[0].data, subscriptionId: 42 } });
    expect(app.logs.some((l) => /dropped an event that is not a valid Graph notification/.test(l))).toBe(true);
    noSecretIn(app.logs);
  });
});
