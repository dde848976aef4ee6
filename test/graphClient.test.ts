import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { AccessToken, TokenCredential } from "@azure/identity";
import { GraphClient, parseRetryAfter, StaticTokenCredential } from "../shared/graph/graphClient";
import { MailboxApi, validateExportIds } from "../shared/graph/mailboxApi";
import { GraphError, InvalidInputError } from "../shared/errors";
import { ExchangeSimulator } from "./simulator";

let sim: ExchangeSimulator;

beforeAll(async () => {
  sim = await ExchangeSimulator.start({ seed: 7 });
});
afterAll(async () => {
  await sim.close();
});
beforeEach(() => {
  sim.faults.clear();
  sim.resetStats();
});

function client(extra: Partial<ConstructorParameters<typeof GraphClient>[0]> = {}) {
  return new GraphClient({
    endpoint: sim.url,
    apiVersion: "v1.0",
    credential: new StaticTokenCredential(sim.token),
    baseRetryDelayMs: 5,
    maxRetryDelayMs: 20,
    ...extra,
  });
}

describe("GraphClient", () => {
  it("retries 429, 503 and 504 honouring Retry-After, then succeeds", async () => {
    const mbx = sim.addMailbox({ upn: "retry@contoso.com" });
    sim.faults.add(
      { route: "settings", kind: "status", status: 429, retryAfterSeconds: 0 },
      { route: "settings", kind: "status", status: 503, retryAfterSeconds: 0 },
      { route: "settings", kind: "status", status: 504 },
    );
    const retries: Array<number | string> = [];
    const api = new MailboxApi(client({ onRetry: (r) => retries.push(r.status) }));
    const r = await api.resolveMailbox("retry@contoso.com");
    expect(r.mailboxId).toBe(mbx.mailboxId);
    expect(retries).toEqual([429, 503, 504]);
  });

  it("gives up after maxRetries with a typed, retryable error carrying Graph's code and request id", async () => {
    sim.addMailbox({ upn: "storm@contoso.com" });
    sim.faults.add({ route: "settings", kind: "status", status: 503, times: 10 });
    const api = new MailboxApi(client({ maxRetries: 2 }));
    const err = await api.resolveMailbox("storm@contoso.com").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GraphError);
    expect(err).toMatchObject({ status: 503, retryable: true });
    expect((err as GraphError).requestId).toBeTruthy();
    expect(sim.stats.requests.settings).toBe(3);
  });

  it("does not retry 400 and 404", async () => {
    const api = new MailboxApi(client());
    await expect(api.resolveMailbox("nobody@contoso.com")).rejects.toMatchObject({ status: 404, code: "MailboxNotFound" });
    expect(sim.stats.requests.settings).toBe(1);
  });

  it("refreshes the token once on a 401 and never puts it in errors", async () => {
    sim.addMailbox({ upn: "expiry@contoso.com" });
    let calls = 0;
    const cred: TokenCredential = {
      async getToken(): Promise<AccessToken> {
        calls++;
        // The first token is stale: the server rejects it; the refreshed one is good.
        return { token: calls === 1 ? "stale-token-value" : sim.token, expiresOnTimestamp: Date.now() + 3600_000 };
      },
    };
    const api = new MailboxApi(client({ credential: cred }));
    await expect(api.resolveMailbox("expiry@contoso.com")).resolves.toBeTruthy();
    expect(calls).toBe(2);

    const bad = new MailboxApi(client({ credential: new StaticTokenCredential("secret-token-xyz") }));
    const err = (await bad.resolveMailbox("expiry@contoso.com").catch((e: unknown) => e)) as GraphError;
    expect(err.status).toBe(401);
    expect(JSON.stringify({ m: err.message, s: err.stack })).not.toContain("secret-token-xyz");
  });

  it("retries a connection reset before the response", async () => {
    sim.addMailbox({ upn: "reset@contoso.com" });
    sim.faults.add({ route: "settings", kind: "resetMidBody", afterBytes: 0 });
    const api = new MailboxApi(client());
    await expect(api.resolveMailbox("reset@contoso.com")).resolves.toBeTruthy();
  });

  it("keeps at most N requests in flight per mailbox, whatever the callers do", async () => {
    const mbx = sim.addMailbox({ upn: "busy@contoso.com" });
    sim.config.latencyMs = 30;
    try {
      const api = new MailboxApi(client({ maxRequestsPerMailbox: 4 }));
      await Promise.all(Array.from({ length: 16 }, () => api.childFoldersPage(mbx.mailboxId, "msgfolderroot")));
      expect(sim.stats.maxInFlight.get(mbx.mailboxId)).toBe(4);
      expect(sim.stats.throttledByConcurrency).toBe(0);
    } finally {
      sim.config.latencyMs = 0;
    }
  });

  it("refuses to follow a link to another origin (the token must not leave Graph)", async () => {
    const mbx = sim.addMailbox({ upn: "links@contoso.com" });
    const api = new MailboxApi(client());
    await expect(api.itemsDeltaPage(mbx.mailboxId, "inbox", "https://evil.example.com/v1.0/x")).rejects.toMatchObject({ code: "ForeignLink" });
  });

  it("accepts only https endpoints, except loopback", () => {
    const make = (endpoint: string, apiVersion = "v1.0") => () => new GraphClient({ endpoint, apiVersion, credential: new StaticTokenCredential("t") });
    expect(make("http://graph.example.com")).toThrow(InvalidInputError);
    expect(make("not a url")).toThrow(InvalidInputError);
    expect(make("https://graph.microsoft.com", "v2")).toThrow(InvalidInputError);
    expect(make("https://graph.microsoft.com")).not.toThrow();
    expect(make("http://127.0.0.1:1234")).not.toThrow();
  });

  it("parses Retry-After as seconds or an HTTP date", () => {
    expect(parseRetryAfter("3")).toBe(3000);
    expect(parseRetryAfter(null)).toBeUndefined();
    expect(parseRetryAfter("soon")).toBeUndefined();
    const d = parseRetryAfter(new Date(Date.now() + 5000).toUTCString()) as number;
    expect(d).toBeGreaterThan(3000);
    expect(d).toBeLessThanOrEqual(5000);
  });
});

describe("MailboxApi", () => {
  it("walks nested folders and pages item deltas to the end", async () => {
    const mbx = sim.generateMailbox({ upn: "walk@contoso.com", folders: 25, maxDepth: 4, items: 130, seed: 3 });
    const api = new MailboxApi(client());
    const folders = [];
    for await (const f of api.walkFolders(mbx.mailboxId)) folders.push(f);
    expect(new Set(folders.map((f) => f.id)).size).toBe(sim.listFolders(mbx.mailboxId).length);
    let listed = 0;
    for (const f of folders) {
      let link: string | undefined;
      for (;;) {
        const page = await api.itemsDeltaPage(mbx.mailboxId, f.id, link, { pageSize: 7 });
        listed += page.items.length;
        for (const i of page.items) expect(i.changeKey).toBeTruthy();
        if (page.deltaLink) break;
        link = page.nextLink;
      }
    }
    expect(listed).toBe(130);
  });

  it("validates export ids before calling Graph", async () => {
    expect(() => validateExportIds([])).toThrow(/empty/);
    expect(() => validateExportIds(Array.from({ length: 21 }, (_, i) => `id${i}`))).toThrow(/at most 20/);
    expect(() => validateExportIds(["ok", 5])).toThrow(/itemIds\[1\]/);
    expect(() => validateExportIds(["ok", ""])).toThrow(/itemIds\[1\]/);
    expect(() => validateExportIds("abc")).toThrow(/array/);
    const api = new MailboxApi(client());
    await expect(api.exportItems("MBX:x@y", Array.from({ length: 21 }, (_, i) => `id${i}`), async () => 0)).rejects.toBeInstanceOf(InvalidInputError);
    expect(sim.stats.exportItemsCalls).toBe(0);
  });

  it("rejects mailbox arguments that could escape the URL path", async () => {
    const api = new MailboxApi(client());
    for (const bad of ["../admin", "a/b", "x?y=1", "", "a b", "%2e%2e", "x#y"]) {
      await expect(api.resolveMailbox(bad)).rejects.toMatchObject({ code: "InvalidMailbox" });
    }
    expect(sim.stats.totalRequests).toBe(0);
  });

  it("maps an unknown mailbox to a clear error", async () => {
    const api = new MailboxApi(client());
    await expect(api.exportItems("MBX:00000000@00000000", ["a"], async () => 0)).rejects.toMatchObject({ status: 404 });
  });
});
