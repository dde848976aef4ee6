import { afterAll, beforeAll, beforeEach, describe, expect, test } from "vitest";
import type { LocalDurableHost } from "../../localhost";
import { probes, resetProbes } from "./fixtures/probes";
import { pollJson, startFixtureHost } from "./helpers";

const KEY = "fx-secret-key";

interface ManagementPayload {
  id: string;
  statusQueryGetUri: string;
  sendEventPostUri: string;
  terminatePostUri: string;
  purgeHistoryDeleteUri: string;
}

describe("local durable host: HTTP, webhooks and the real DurableClient", () => {
  let host: LocalDurableHost;
  let api: string;

  beforeAll(async () => {
    host = await startFixtureHost({ functionKey: KEY });
    api = `${host.baseUrl}/api`;
  });
  afterAll(async () => {
    await host.stop();
  });
  beforeEach(() => resetProbes());

  const startOverHttp = (name: string, input: unknown, id = ""): Promise<Response> =>
    fetch(`${api}/fx/orchestrators/${name}${id ? `/${id}` : ""}`, {
      method: "POST",
      headers: { "x-functions-key": KEY, "content-type": "application/json" },
      body: JSON.stringify(input),
    });

  test("HTTP starter returns createCheckStatusResponse; polling the status URL reaches completion", async () => {
    const response = await startOverHttp("fxEchoOrch", "hello over http");
    expect(response.status).toBe(202);
    const payload = (await response.json()) as ManagementPayload;
    const location = response.headers.get("location");
    expect(location).toBe(payload.statusQueryGetUri);
    expect(location?.startsWith(`${host.baseUrl}/runtime/webhooks/durabletask/instances/${payload.id}?`)).toBe(true);
    expect(location).toContain(`code=${KEY}`);
    expect(response.headers.get("retry-after")).toBe("10");

    const final = await pollJson(payload.statusQueryGetUri, (status) => status === 200);
    expect(final.body).toMatchObject({
      instanceId: payload.id,
      name: "fxEchoOrch",
      runtimeStatus: "Completed",
      input: "hello over http",
      output: "hello over http",
    });
  });

  test("status URL answers 202 while running; sendEventPostUri and purge work through the webhooks", async () => {
    const response = await startOverHttp("fxRace", { timeoutMs: 3_600_000 }, "http-race");
    const payload = (await response.json()) as ManagementPayload;
    expect(payload.id).toBe("http-race");

    const running = await pollJson(payload.statusQueryGetUri, (status, body) => status === 202 && (body as { runtimeStatus: string }).runtimeStatus === "Running");
    expect(running.body).toMatchObject({ runtimeStatus: "Running", output: null, customStatus: null });
    const purgeEarly = await fetch(payload.purgeHistoryDeleteUri, { method: "DELETE" });
    expect(purgeEarly.status).toBe(412);

    const raise = await fetch(payload.sendEventPostUri.replace("{eventName}", "approve"), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ via: "webhook" }),
    });
    expect(raise.status).toBe(202);
    const final = await pollJson(payload.statusQueryGetUri, (status) => status === 200);
    expect(final.body).toMatchObject({ runtimeStatus: "Completed", output: { outcome: "approved", data: { via: "webhook" } } });

    const raiseLate = await fetch(payload.sendEventPostUri.replace("{eventName}", "approve"), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    expect(raiseLate.status).toBe(410);
    const purge = await fetch(payload.purgeHistoryDeleteUri, { method: "DELETE" });
    expect(purge.status).toBe(200);
    expect(await purge.json()).toEqual({ instancesDeleted: 1 });
    expect((await fetch(payload.statusQueryGetUri)).status).toBe(404);
  });

  test("terminate through the webhook", async () => {
    const payload = (await (await startOverHttp("fxWaitForever", null)).json()) as ManagementPayload;
    const terminate = await fetch(payload.terminatePostUri.replace("{text}", "stop%20now"), { method: "POST" });
    expect(terminate.status).toBe(202);
    const final = await pollJson(payload.statusQueryGetUri, (status) => status === 200);
    expect(final.body).toMatchObject({ runtimeStatus: "Terminated", output: "stop now" });
    expect((await fetch(payload.terminatePostUri.replace("{text}", "again"), { method: "POST" })).status).toBe(410);
  });

  test("function keys: 401 without or with a wrong key, accepted as header or code query", async () => {
    const url = `${api}/fx/orchestrators/fxEchoOrch`;
    expect((await fetch(url, { method: "POST", body: "1" })).status).toBe(401);
    expect((await fetch(url, { method: "POST", body: "1", headers: { "x-functions-key": "wrong" } })).status).toBe(401);
    expect((await fetch(`${url}?code=${KEY}`, { method: "POST", body: "1" })).status).toBe(202);
    expect((await fetch(url, { method: "POST", body: "1", headers: { "x-functions-key": KEY } })).status).toBe(202);
    // anonymous routes need no key; the durable webhooks do
    expect((await fetch(`${api}/fx/hello`)).status).toBe(200);
    expect((await fetch(`${host.baseUrl}/runtime/webhooks/durabletask/instances/x`)).status).toBe(401);
  });

  test("unknown routes and wrong methods are 404", async () => {
    expect((await fetch(`${api}/fx/nope`)).status).toBe(404);
    expect((await fetch(`${host.baseUrl}/elsewhere`)).status).toBe(404);
    expect((await fetch(`${api}/fx/echo`)).status).toBe(404); // POST-only route
  });

  test("route parameters (optional too), query, headers and JSON bodies", async () => {
    const plain = await fetch(`${api}/fx/hello`);
    expect(plain.headers.get("x-fx")).toBe("1");
    expect(plain.headers.get("content-type")).toContain("application/json");
    expect(await plain.json()).toEqual({ hello: "world", q: null });
    const named = await fetch(`${api}/FX/Hello/Ann%20Lee?q=1`);
    expect(await named.json()).toEqual({ hello: "Ann Lee", q: "1" });
  });

  test("request bodies are bounded", async () => {
    const small = await fetch(`${api}/fx/echo`, { method: "POST", headers: { "content-type": "text/plain" }, body: "x".repeat(1024) });
    expect(await small.text()).toBe("text/plain:1024");
    const large = await fetch(`${api}/fx/echo`, { method: "POST", body: Buffer.alloc(1024 * 1024 + 1, 120) });
    expect(large.status).toBe(413);
  });

  test("no response is 204, a throwing handler is 500", async () => {
    expect((await fetch(`${api}/fx/nothing`)).status).toBe(204);
    expect((await fetch(`${api}/fx/throws`)).status).toBe(500);
  });

  test("singleton starter: the app's getStatus check gives 409 while running", async () => {
    const url = `${api}/fx/mailboxes/m1/backups`;
    const first = await fetch(url, { method: "POST" });
    expect(first.status).toBe(202);
    expect(((await first.json()) as ManagementPayload).id).toBe("fx-singleton-m1");
    const second = await fetch(url, { method: "POST" });
    expect(second.status).toBe(409);
    expect(await second.json()).toEqual({ instanceId: "fx-singleton-m1", runtimeStatus: "Running" });

    // the DurableClient's own terminate, then a restart of the finished id
    expect((await fetch(`${api}/fx/instances/fx-singleton-m1/terminate`, { method: "POST" })).status).toBe(202);
    expect(host.getStatus("fx-singleton-m1")).toMatchObject({ runtimeStatus: "Terminated", output: "stopped over http" });
    expect((await fetch(url, { method: "POST" })).status).toBe(202);
    expect(host.getStatus("fx-singleton-m1")?.runtimeStatus).not.toBe("Terminated");
  });

  test("DurableClient.startNew on a running id is rejected (409 from the RPC endpoint)", async () => {
    expect((await startOverHttp("fxWaitForever", null, "dup-http")).status).toBe(202);
    expect((await startOverHttp("fxWaitForever", null, "dup-http")).status).toBe(500); // the starter's startNew threw
    await host.terminate("dup-http", "cleanup");
  });

  test("app.http with df.input.durableClient() and df.getClient(context)", async () => {
    const id = await host.startNew("fxEchoOrch", { input: "plain" });
    await host.waitForCompletion(id, { timeoutMs: 3000 });
    const response = await fetch(`${api}/fx/status/${id}`);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ runtimeStatus: "Completed", output: "plain", customStatus: null });
    expect((await fetch(`${api}/fx/status/unknown-id`)).status).toBe(404);
  });

  test("DurableClient raiseEvent, getStatusAll and purgeInstanceHistory over the RPC endpoint", async () => {
    const id = await host.startNew("fxRace", { instanceId: "rpc-race", input: { timeoutMs: 3_600_000 } });
    expect((await fetch(`${api}/fx/instances/${id}/raise`, { method: "POST" })).status).toBe(202);
    expect((await host.waitForCompletion(id, { timeoutMs: 3000 })).output).toEqual({ outcome: "approved", data: { by: "http" } });
    const list = await fetch(`${api}/fx/instances/${id}/list`, { method: "POST" });
    expect(await list.json()).toContain(id);
    const purge = await fetch(`${api}/fx/instances/${id}/purge`, { method: "DELETE" });
    expect(await purge.json()).toEqual({ instancesDeleted: 1 });
    expect(host.getStatus(id)).toBeUndefined();
  });

  test("createHttpManagementPayload (no request) points at this host, like func start's WEBSITE_HOSTNAME", async () => {
    const id = await host.startNew("fxEchoOrch", { input: "payload" });
    await host.waitForCompletion(id, { timeoutMs: 3000 });
    const payload = (await (await fetch(`${api}/fx/instances/${id}/payload`, { method: "POST" })).json()) as ManagementPayload;
    expect(payload.statusQueryGetUri.startsWith(`${host.baseUrl}/runtime/webhooks/durabletask/instances/${id}?`)).toBe(true);
    const status = await fetch(payload.statusQueryGetUri);
    expect(await status.json()).toMatchObject({ runtimeStatus: "Completed", output: "payload" });
  });

  test("the admin API runs a timer trigger; invokeTimer starts an orchestration", async () => {
    const denied = await fetch(`${host.baseUrl}/admin/functions/fxPlainTimer`, { method: "POST", body: "{}" });
    expect(denied.status).toBe(401);
    const accepted = await fetch(`${host.baseUrl}/admin/functions/fxPlainTimer`, {
      method: "POST",
      headers: { "x-functions-key": KEY },
      body: "{}",
    });
    expect(accepted.status).toBe(202);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(probes.plainTimerRuns).toBe(1);

    await host.invokeTimer("fxTimerStart");
    const done = await host.waitForCompletion("fx-nightly", { timeoutMs: 3000 });
    expect(done).toMatchObject({ runtimeStatus: "Completed", output: "from-timer" });
  });
});

describe("without a function key (like func start)", () => {
  test("function-level routes are open", async () => {
    const host = await startFixtureHost();
    try {
      const response = await fetch(`${host.baseUrl}/api/fx/orchestrators/fxEchoOrch`, { method: "POST", body: '"open"' });
      expect(response.status).toBe(202);
      const payload = (await response.json()) as ManagementPayload;
      expect(payload.statusQueryGetUri).not.toContain("code=");
      const final = await pollJson(payload.statusQueryGetUri, (status) => status === 200);
      expect(final.body).toMatchObject({ output: "open" });
    } finally {
      await host.stop();
    }
  });
});
