import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LocalDurableHost } from "../localhost";
import { GraphError, InvalidInputError } from "../shared/errors";
import { lineLogger } from "../shared/log";
import { authenticate, clientStateMatches, parseEventGridEvent, parseWebhookBody, planActions, userFromResource } from "../shared/notifications/payload";
import { configFingerprint, notificationChannel, notificationConfig } from "../shared/notifications/settings";
import { readSubscriptions, SUBSCRIPTION_LIFETIME_MINUTES, type SyncReport } from "../shared/notifications/subscriptions";
import { mergeSignals, quietDeadline, watcherInstanceId } from "../shared/notifications/watcher";
import { createServices, type Services, setServices } from "../shared/services";
import type { ItemStore } from "../shared/store/itemStore";
import { ExchangeSimulator, type SimMailbox } from "./simulator";
import { tempStore } from "./support/apps";

/** Subscriptions: the sync (HTTP and timer), renewal windows, strays, the simulator's validation, and the parsing units. */

const KEY = "subscriptions-test-key";
const CLIENT_STATE = `cs-${randomBytes(16).toString("hex")}`;

let sim: ExchangeSimulator;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  sim = await ExchangeSimulator.start({ seed: 62, subscriptionPageSize: 2 });
});
afterAll(async () => {
  for (const c of cleanups) await c();
  await sim.close();
});

interface App {
  host: LocalDurableHost;
  services: Services;
  store: ItemStore;
  logs: string[];
  url: string;
  stop(): Promise<void>;
}

async function startApp(mailboxes: string): Promise<App> {
  const { store, cleanup } = await tempStore();
  cleanups.push(cleanup);
  const logs: string[] = [];
  const services = createServices(sim.env("v1.0"), { store, logger: lineLogger((l) => logs.push(l), "debug"), timing: { graphBaseRetryDelayMs: 5, graphMaxRetryDelayMs: 50 } });
  setServices(services);
  const host = await LocalDurableHost.start({
    loadApp: async () => {
      await import("../functions/index.js");
    },
    functionKey: KEY,
    timerScale: 0.001,
    log: (l) => logs.push(l),
  });
  const url = `${host.baseUrl}/api/notifications?code=${KEY}`;
  Object.assign(process.env, { MAILVAULT_NOTIFICATION_URL: url, MAILVAULT_NOTIFICATION_CLIENT_STATE: CLIENT_STATE, MAILVAULT_MAILBOXES: mailboxes });
  return {
    host,
    services,
    store,
    logs,
    url,
    async stop() {
      await host.stop();
      setServices(undefined);
      for (const k of ["MAILVAULT_NOTIFICATION_URL", "MAILVAULT_NOTIFICATION_CLIENT_STATE", "MAILVAULT_MAILBOXES"]) delete process.env[k];
    },
  };
}

function post(app: App, path: string, body: string): Promise<Response> {
  return fetch(`${app.host.baseUrl}${path}`, { method: "POST", headers: { "content-type": "application/json", "x-functions-key": KEY }, body });
}

async function syncDone(app: App): Promise<SyncReport> {
  const done = await app.host.waitForCompletion("subscriptions-sync", { timeoutMs: 20_000 });
  expect(done.runtimeStatus, JSON.stringify(done.output)).toBe("Completed");
  return done.output as SyncReport;
}

const ours = (app: App) => sim.listSubscriptions().filter((s) => s.notificationUrl === app.url);
const subOf = (app: App, m: SimMailbox) => ours(app).find((s) => s.userId === m.userId);

describe("subscription sync", () => {
  let app: App;
  const m: Record<string, SimMailbox> = {};
  beforeAll(async () => {
    for (const n of ["a", "b", "c", "d", "e"]) m[n] = sim.addMailbox({ upn: `sub-${n}@contoso.com` });
    sim.addUser({ upn: "sub-nomailbox@contoso.com" });
    app = await startApp("sub-a@contoso.com,sub-b@contoso.com,sub-c@contoso.com,sub-e@contoso.com,ghost@contoso.com,MBX:00000000-0000-0000-0000-000000000000@x,ews:onprem@contoso.local");
  });
  afterAll(() => app.stop());

  it("creates one subscription per configured mailbox, validated by Graph's handshake, and records them", async () => {
    const validations = sim.notificationDeliveries.filter((d) => d.kind === "validation").length;
    const res = await post(app, "/api/subscriptions/sync", "");
    expect(res.status).toBe(202);
    const report = await syncDone(app);
    expect(report).toMatchObject({ mailboxes: 7, created: 4, renewed: 0, kept: 0, deleted: 0, skipped: 3, failed: 0 });
    expect(report.details.skipped.map((s) => s.mailbox).sort()).toEqual(["MBX:00000000-0000-0000-0000-000000000000@x", "ews:onprem@contoso.local", "ghost@contoso.com"]);
    // Exchange Server mailboxes get no Graph subscription, and the report says why.
    expect(report.details.skipped.find((s) => s.mailbox.startsWith("ews:"))?.reason).toMatch(/Exchange Server \(EWS\) mailbox: Graph change notifications do not reach it/);
    // One handshake per subscription (the lifecycle URL is the same URL), every one answered exactly.
    const handshakes = sim.notificationDeliveries.filter((d) => d.kind === "validation").slice(validations);
    expect(handshakes).toHaveLength(4);
    expect(handshakes.every((d) => d.status === 200)).toBe(true);

    const doc = await readSubscriptions(app.store);
    for (const n of ["a", "b", "c", "e"]) {
      const s = subOf(app, m[n]);
      expect(s, n).toMatchObject({ resource: `/users/${m[n].userId}/messages`, changeType: "created,updated,deleted", lifecycleNotificationUrl: app.url, clientState: CLIENT_STATE, channel: "webhook" });
      const minutes = (Date.parse(s!.expirationDateTime) - Date.now()) / 60_000;
      expect(minutes).toBeGreaterThan(SUBSCRIPTION_LIFETIME_MINUTES - 5);
      expect(minutes).toBeLessThanOrEqual(4230);
      expect(doc.subscriptions[m[n].userId.toLowerCase()]).toMatchObject({ subscriptionId: s!.id, expirationDateTime: s!.expirationDateTime, mailbox: `sub-${n}@contoso.com`, user: m[n].userId });
    }
    expect(Object.keys(doc.subscriptions)).toHaveLength(4);
    // The stored document and the logs hold no secret.
    const raw = (await app.store.readText("state/subscriptions.json")) as string;
    expect(raw).not.toContain(CLIENT_STATE);
    expect(raw).not.toContain(KEY);
    for (const l of app.logs) {
      expect(l).not.toContain(CLIENT_STATE);
      expect(l).not.toContain(KEY);
    }
  });

  it("the renewal timer renews exactly those expiring within 12 hours, creates and deletes as the configuration says", async () => {
    const now = Date.now();
    sim.setSubscriptionExpiration(subOf(app, m.a)!.id, new Date(now + 2 * 3600_000)); // in the window
    sim.setSubscriptionExpiration(subOf(app, m.c)!.id, new Date(now + 11.5 * 3600_000)); // in the window
    sim.setSubscriptionExpiration(subOf(app, m.e)!.id, new Date(now + 13 * 3600_000)); // outside
    const bId = subOf(app, m.b)!.id;
    const eBefore = subOf(app, m.e)!.expirationDateTime;
    process.env.MAILVAULT_MAILBOXES = "sub-a@contoso.com,sub-c@contoso.com,sub-d@contoso.com,sub-e@contoso.com"; // b out, d in
    const mark = sim.subscriptionLog.length;
    await app.host.invokeTimer("subscriptionTimer");
    const report = await syncDone(app);
    expect(report).toMatchObject({ created: 1, renewed: 2, kept: 1, deleted: 1, failed: 0 });
    const log = sim.subscriptionLog.slice(mark);
    const idsOf = (op: string) => log.filter((e) => e.op === op).map((e) => e.userId).sort();
    expect(idsOf("renew")).toEqual([m.a.userId, m.c.userId].sort());
    expect(idsOf("create")).toEqual([m.d.userId]);
    expect(idsOf("delete")).toEqual([m.b.userId]);
    expect(sim.getSubscription(bId)).toBeUndefined();
    expect(subOf(app, m.e)!.expirationDateTime).toBe(eBefore);
    for (const n of ["a", "c"]) expect(Date.parse(subOf(app, m[n])!.expirationDateTime) - now).toBeGreaterThan(60 * 3600_000);
    const doc = await readSubscriptions(app.store);
    expect(Object.values(doc.subscriptions).map((r) => r.mailbox).sort()).toEqual(["sub-a@contoso.com", "sub-c@contoso.com", "sub-d@contoso.com", "sub-e@contoso.com"]);
    expect(doc.subscriptions[m.a.userId.toLowerCase()].expirationDateTime).toBe(subOf(app, m.a)!.expirationDateTime);
  });

  it("deletes strays, re-creates subscriptions Graph lost, and re-creates all when the clientState is rotated", async () => {
    // A stray: our URL, no record (as a create whose answer was lost would leave).
    const stray = await app.services.mailbox.createSubscription({ resource: `/users/${m.a.userId}/messages`, changeType: "created", notificationUrl: app.url, lifecycleNotificationUrl: app.url, expirationDateTime: new Date(Date.now() + 3600_000 * 10).toISOString(), clientState: CLIENT_STATE });
    // Lost: Graph dropped d's subscription without telling.
    const lost = subOf(app, m.d)!.id;
    sim.dropSubscription(lost);
    expect((await post(app, "/api/subscriptions/sync", "{}")).status).toBe(202);
    const report = await syncDone(app);
    expect(report).toMatchObject({ created: 1, deleted: 1, failed: 0 });
    expect(report.details.deleted[0]).toMatchObject({ subscriptionId: stray.id, reason: "no record points at this subscription" });
    expect(sim.getSubscription(stray.id)).toBeUndefined();
    expect(subOf(app, m.d)!.id).not.toBe(lost);
    expect(ours(app)).toHaveLength(4);

    // A rotated clientState (kept for the rest of this suite): every subscription is made again with it.
    const rotated = `cs-${randomBytes(16).toString("hex")}`;
    process.env.MAILVAULT_NOTIFICATION_CLIENT_STATE = rotated;
    const before = new Set(ours(app).map((s) => s.id));
    expect((await post(app, "/api/subscriptions/sync", "")).status).toBe(202);
    expect(await syncDone(app)).toMatchObject({ created: 4, failed: 0 });
    expect(ours(app).every((s) => !before.has(s.id) && s.clientState === rotated)).toBe(true);
    expect(ours(app)).toHaveLength(4);
    expect([...before].every((id) => sim.getSubscription(id) === undefined)).toBe(true);
  });

  it("reports mailboxes Graph refuses (failed) or that have no mailbox (skipped), and goes on with the others", async () => {
    process.env.MAILVAULT_MAILBOXES = "sub-a@contoso.com,sub-c@contoso.com,sub-d@contoso.com,sub-e@contoso.com,sub-nomailbox@contoso.com,sub-b@contoso.com";
    // Graph refuses b's create (a, c, d, e are kept and need no request).
    sim.config.maxSubscriptionsPerMailbox = 0;
    let report: SyncReport;
    try {
      expect((await post(app, "/api/subscriptions/sync", "")).status).toBe(202);
      report = await syncDone(app);
    } finally {
      sim.config.maxSubscriptionsPerMailbox = 1000;
    }
    expect(report).toMatchObject({ failed: 1, skipped: 1, created: 0, kept: 4 });
    expect(report.details.skipped[0]).toMatchObject({ mailbox: "sub-nomailbox@contoso.com" });
    expect(report.details.skipped[0].reason).toMatch(/no Exchange mailbox.*MailboxNotEnabledForRESTAPI/);
    expect(report.details.failed[0]).toMatchObject({ mailbox: "sub-b@contoso.com" });
    expect(report.details.failed[0].reason).toMatch(/ExtensionError: .*maximum number of subscriptions/);
    process.env.MAILVAULT_MAILBOXES = "sub-a@contoso.com,sub-c@contoso.com,sub-d@contoso.com,sub-e@contoso.com";
  });

  it("answers 409 while a sync runs, 400 for bad bodies, and 503 when notifications are off", async () => {
    sim.config.latencyMs = (route) => (route === "subscriptions" ? 150 : 0);
    try {
      expect((await post(app, "/api/subscriptions/sync", "")).status).toBe(202);
      const again = await post(app, "/api/subscriptions/sync", "");
      expect(again.status).toBe(409);
      expect(((await again.json()) as { error: { code: string }; id: string }).id).toBe("subscriptions-sync");
      await syncDone(app);
    } finally {
      sim.config.latencyMs = 0;
    }
    for (const bad of ["{no", "[1]", JSON.stringify({ mailboxes: ["x"] })]) expect((await post(app, "/api/subscriptions/sync", bad)).status).toBe(400);
    const url = process.env.MAILVAULT_NOTIFICATION_URL;
    delete process.env.MAILVAULT_NOTIFICATION_URL;
    try {
      const off = await post(app, "/api/subscriptions/sync", "");
      expect(off.status).toBe(503);
      expect(((await off.json()) as { error: { code: string } }).error.code).toBe("NotificationsNotConfigured");
      const instances = app.host.listInstances().length;
      await app.host.invokeTimer("subscriptionTimer");
      expect(app.host.listInstances().length).toBe(instances);
    } finally {
      process.env.MAILVAULT_NOTIFICATION_URL = url;
    }
    process.env.MAILVAULT_NOTIFICATION_URL = "http://mailvault.example.com/api/notifications";
    try {
      const plain = await post(app, "/api/subscriptions/sync", "");
      expect(plain.status).toBe(503);
      expect(await plain.text()).toMatch(/must be https/);
    } finally {
      process.env.MAILVAULT_NOTIFICATION_URL = url;
    }
  });

  it("deletes every subscription when no mailbox is configured any more", async () => {
    process.env.MAILVAULT_MAILBOXES = "";
    expect((await post(app, "/api/subscriptions/sync", "")).status).toBe(202);
    const report = await syncDone(app);
    expect(report).toMatchObject({ deleted: 4, created: 0 });
    expect(ours(app)).toEqual([]);
    expect((await readSubscriptions(app.store)).subscriptions).toEqual({});
  });
});

describe("the simulator's /subscriptions", () => {
  let app: App;
  let mbx: SimMailbox;
  const graph = (method: string, path: string, body?: unknown) =>
    fetch(`${sim.url}/v1.0${path}`, { method, headers: { authorization: `Bearer ${sim.token}`, "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
  const valid = () => ({ changeType: "created,updated,deleted", notificationUrl: app.url, lifecycleNotificationUrl: app.url, resource: `/users/${mbx.userId}/messages`, expirationDateTime: new Date(Date.now() + 3600_000).toISOString(), clientState: CLIENT_STATE });
  beforeAll(async () => {
    mbx = sim.addMailbox({ upn: "simsub@contoso.com" });
    app = await startApp("");
  });
  afterAll(() => app.stop());

  it.each([
    ["a lifetime above 4230 minutes", { expirationDateTime: new Date(Date.now() + 4300 * 60_000).toISOString() }, 400, "ExtensionError"],
    ["an expiration in the past", { expirationDateTime: new Date(Date.now() - 60_000).toISOString() }, 400, "ExtensionError"],
    ["a non-https notificationUrl", { notificationUrl: "http://mailvault.example.com/api/notifications" }, 400, "InvalidRequest"],
    ["an unknown changeType", { changeType: "created,moved" }, 400, "InvalidRequest"],
    ["a clientState over 128 characters", { clientState: "x".repeat(129) }, 400, "InvalidRequest"],
    ["an unknown property", { color: "blue" }, 400, "BadRequest"],
    ["an unsupported resource", { resource: `/users/${"x"}/drive/root` }, 400, "InvalidRequest"],
    ["an unknown user", { resource: "/users/nobody@contoso.com/messages" }, 404, "ResourceNotFound"],
    ["an endpoint that fails the handshake", { notificationUrl: `${"http://127.0.0.1:9"}/nothing`, lifecycleNotificationUrl: undefined }, 400, "ValidationError"],
    ["an Event Grid URL without its parameters", { notificationUrl: "EventGrid:?azuresubscriptionid=x", lifecycleNotificationUrl: undefined }, 400, "InvalidRequest"],
  ])("refuses %s", async (_what, patch, status, code) => {
    const res = await graph("POST", "/subscriptions", { ...valid(), ...patch });
    expect(res.status).toBe(status);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe(code);
  });

  it("refuses an endpoint that answers the handshake with the token still encoded, or as JSON", async () => {
    const badHost = await import("node:http").then(
      ({ createServer }) =>
        new Promise<{ url: string; close: () => void }>((resolve) => {
          let n = 0;
          const srv = createServer((req, res) => {
            const token = new URL(req.url ?? "/", "http://x").searchParams.get("validationToken") ?? "";
            if (n++ === 0) {
              res.writeHead(200, { "content-type": "text/plain" });
              res.end(encodeURIComponent(token));
            } else {
              res.writeHead(200, { "content-type": "application/json" });
              res.end(token);
            }
          });
          srv.listen(0, "127.0.0.1", () => resolve({ url: `http://127.0.0.1:${(srv.address() as { port: number }).port}/hook`, close: () => srv.close() }));
        }),
    );
    try {
      for (let i = 0; i < 2; i++) {
        const res = await graph("POST", "/subscriptions", { ...valid(), notificationUrl: badHost.url, lifecycleNotificationUrl: badHost.url });
        expect(res.status).toBe(400);
      }
    } finally {
      badHost.close();
    }
  });

  it("creates (201), lists in pages, renews, reauthorizes and deletes; raises short lifetimes to 45 minutes; forgets expired ones", async () => {
    const created = await graph("POST", "/subscriptions", { ...valid(), expirationDateTime: new Date(Date.now() + 5 * 60_000).toISOString() });
    expect(created.status).toBe(201);
    const s = (await created.json()) as { id: string; expirationDateTime: string; clientState: string };
    expect(s.clientState).toBe(CLIENT_STATE);
    expect(Date.parse(s.expirationDateTime) - Date.now()).toBeGreaterThan(44 * 60_000);
    const got = (await (await graph("GET", `/subscriptions/${s.id}`)).json()) as { clientState: unknown };
    expect(got.clientState).toBeNull();
    const more = await Promise.all([1, 2, 3].map(() => app.services.mailbox.createSubscription(valid())));
    const listed: string[] = [];
    for await (const x of app.services.mailbox.listSubscriptions()) listed.push(x.id);
    expect(listed).toEqual(expect.arrayContaining([s.id, ...more.map((x) => x.id)])); // page size 2: nextLink followed
    const renewed = await app.services.mailbox.renewSubscription(s.id, new Date(Date.now() + 4000 * 60_000).toISOString());
    expect(Date.parse(renewed.expirationDateTime) - Date.now()).toBeGreaterThan(3999 * 60_000);
    expect((await graph("PATCH", `/subscriptions/${s.id}`, { resource: "/users/x/messages" })).status).toBe(400);
    expect((await graph("POST", `/subscriptions/${s.id}/reauthorize`)).status).toBe(204);
    expect(await app.services.mailbox.deleteSubscription(s.id)).toBe(true);
    expect(await app.services.mailbox.deleteSubscription(s.id)).toBe(false);
    await expect(app.services.mailbox.renewSubscription(s.id, new Date(Date.now() + 3600_000).toISOString())).rejects.toMatchObject({ status: 404 });
    sim.setSubscriptionExpiration(more[0].id, new Date(Date.now() - 1000));
    expect(sim.getSubscription(more[0].id)).toBeDefined();
    expect(sim.listSubscriptions().map((x) => x.id)).not.toContain(more[0].id);
    expect(sim.subscriptionLog.some((e) => e.op === "expired" && e.id === more[0].id)).toBe(true);
    for (const x of more.slice(1)) await app.services.mailbox.deleteSubscription(x.id);
  });
});

describe("notification parsing and the watcher's rules", () => {
  it("reads the user from webhook, mailFolders and Outlook REST resources, and refuses unsafe ones", () => {
    const u = "6f1e5b2a-8c3d-4e7f-9a0b-1c2d3e4f5a6b";
    const t = "11111111-2222-3333-4444-555555555555";
    expect(userFromResource(`Users/${u.toUpperCase()}/Messages/AAMkAD+/x=`)).toBe(u);
    expect(userFromResource(`/users/${u}/mailFolders('inbox')/messages('AAMk')`)).toBe(u);
    expect(userFromResource(`https://outlook.office365.com/api/beta/Users('${u}@${t}')/Messages('AAMk=')`)).toBe(u);
    expect(userFromResource("Users('adele@contoso.com')/Messages('x')")).toBe("adele@contoso.com");
    expect(userFromResource("Users/adele%40contoso.com/Messages/x")).toBe("adele@contoso.com");
    for (const bad of [undefined, "", "Groups/x/Conversations/y", "Users/../Messages/x", "Users/%zz/Messages/x", "Users/a%2Fb/Messages/x"]) expect(userFromResource(bad)).toBeUndefined();
  });

  it("parses Event Grid events in Outlook casing, maps types, and ignores other resources", () => {
    const base = { id: "1", source: "/tenants/t/applications/a", specversion: "1.0", subject: "Messages/m" };
    const change = parseEventGridEvent({ ...base, type: "Microsoft.Graph.MessageDeleted", data: { SubscriptionId: "s1", ClientState: "cs", Resource: "https://outlook.office365.com/api/beta/Users('u@t')/Messages('m')" } });
    expect(change).toMatchObject({ subscriptionId: "s1", clientState: "cs", changeType: "deleted" });
    expect(parseEventGridEvent({ ...base, eventType: "Microsoft.Graph.SubscriptionReauthorizationRequired", data: { subscriptionId: "s1", clientState: "cs" } })).toMatchObject({ lifecycleEvent: "reauthorizationRequired" });
    expect(parseEventGridEvent({ ...base, type: "Microsoft.Graph.EventCreated", data: {} })).toBeUndefined();
    expect(() => parseEventGridEvent({ ...base, data: {} })).toThrow(InvalidInputError);
    expect(() => parseEventGridEvent({ ...base, type: "Microsoft.Graph.MessageCreated", data: { clientState: "cs" } })).toThrow(InvalidInputError);
    expect(() => parseEventGridEvent("not an event")).toThrow(InvalidInputError);
  });

  it("checks clientState in constant time, groups changes per user and lifecycle events per subscription", () => {
    expect(clientStateMatches("a-long-client-state", "a-long-client-state")).toBe(true);
    expect(clientStateMatches("a-long-client-state", "a-long-client-statE")).toBe(false);
    expect(clientStateMatches("a-long-client-state", "short")).toBe(false);
    expect(clientStateMatches("a-long-client-state", null)).toBe(false);
    expect(clientStateMatches("a-long-client-state", undefined)).toBe(false);
    const n = parseWebhookBody(
      JSON.stringify({
        value: [
          { subscriptionId: "s1", clientState: "cs", changeType: "created", resource: "Users/U1/Messages/a", extra: { ignored: true } },
          { subscriptionId: "s1", clientState: "cs", changeType: "updated", resource: "Users/u1/Messages/b" },
          { subscriptionId: "s2", clientState: "cs", changeType: "updated", resource: "Users/u2/Messages/c" },
          { subscriptionId: "s3", clientState: "cs", changeType: "updated", resource: "Groups/g/Threads/t" },
          { subscriptionId: "s1", clientState: "cs", lifecycleEvent: "missed" },
          { subscriptionId: "s1", clientState: "cs", lifecycleEvent: "missed" },
          { subscriptionId: "s1", clientState: "cs", lifecycleEvent: "somethingNew" },
          { subscriptionId: "s9", clientState: "forged", changeType: "updated", resource: "Users/u9/Messages/c" },
        ],
      }),
    );
    const { accepted, rejected } = authenticate(n, "cs");
    expect(rejected).toBe(1);
    expect(planActions(accepted)).toEqual({
      actions: [
        { kind: "change", user: "u1", count: 2 },
        { kind: "change", user: "u2", count: 1 },
        { kind: "unmapped", subscriptionId: "s3", count: 1 },
        { kind: "lifecycle", subscriptionId: "s1", event: "missed" },
      ],
      ignored: 1,
    });
  });

  it("validates the settings without repeating them", () => {
    expect(notificationConfig({})).toBeUndefined();
    expect(notificationChannel("https://app.example.com/api/notifications?code=k")).toBe("webhook");
    expect(notificationChannel("EventGrid:?azuresubscriptionid=s&resourcegroup=r&partnertopic=p&location=westus")).toBe("eventGrid");
    expect(() => notificationChannel("EventGrid:?azuresubscriptionid=s")).toThrow(/partnertopic/);
    expect(() => notificationChannel("http://app.example.com/api/notifications?code=secretkey")).toThrow(InvalidInputError);
    try {
      notificationChannel("ftp://x/?code=secretkey");
    } catch (e) {
      expect(String(e)).not.toContain("secretkey");
    }
    expect(() => notificationConfig({ MAILVAULT_NOTIFICATION_URL: "https://a.example.com/api/notifications" })).toThrow(/CLIENT_STATE must be set/);
    expect(() => notificationConfig({ MAILVAULT_NOTIFICATION_URL: "https://a.example.com/x", MAILVAULT_NOTIFICATION_CLIENT_STATE: "too-short" })).toThrow(/16 to 128/);
    const a = notificationConfig({ MAILVAULT_NOTIFICATION_URL: "https://a.example.com/x", MAILVAULT_NOTIFICATION_CLIENT_STATE: "0123456789abcdef" })!;
    expect(configFingerprint(a)).toMatch(/^[0-9a-f]{32}$/);
    expect(configFingerprint({ ...a, clientState: "0123456789abcdeF" })).not.toBe(configFingerprint(a));
  });

  it("merges signals, bounds the quiet period, and names one watcher per user", () => {
    const s = mergeSignals({ count: 2, reasons: ["change"], quietSeconds: 60 }, { full: true, count: 1, reasons: ["missed"], quietSeconds: 30 });
    expect(s).toEqual({ full: true, count: 3, reasons: ["change", "missed"], quietSeconds: 30 });
    const t0 = new Date("2026-01-01T00:00:00Z");
    expect(quietDeadline(t0, t0, 60).toISOString()).toBe("2026-01-01T00:01:00.000Z");
    expect(quietDeadline(new Date("2026-01-01T00:09:30Z"), t0, 60).toISOString()).toBe("2026-01-01T00:10:00.000Z");
    expect(watcherInstanceId("ABC-def")).toBe(watcherInstanceId("abc-DEF"));
    expect(watcherInstanceId("u1")).toMatch(/^changes-u1-[0-9a-f]{16}$/);
  });

  it("maps Graph's 404 on users to UserNotFound", async () => {
    const services = createServices(sim.env("v1.0"), { timing: { graphBaseRetryDelayMs: 1 } });
    await expect(services.mailbox.getUser("nobody-at-all@contoso.com")).rejects.toBeInstanceOf(GraphError);
    await expect(services.mailbox.getUser("nobody-at-all@contoso.com")).rejects.toMatchObject({ code: "UserNotFound" });
  });
});
