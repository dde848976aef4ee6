import { createHash } from "node:crypto";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { ExchangeSimulator, type SimMailbox } from "./simulator/index";

type Json = Record<string, unknown>;
interface GraphErrorBody {
  error: { code: string; message: string; innerError: { "request-id": string; "client-request-id": string; date: string } };
}
interface Collection<T = Json> {
  value: T[];
  "@odata.nextLink"?: string;
  "@odata.deltaLink"?: string;
  "@odata.context"?: string;
}
interface ExportElement {
  itemId: string;
  changeKey?: string;
  data?: string;
  error?: { code: string; message: string };
}

let sim: ExchangeSimulator;
let mbx: SimMailbox;

beforeAll(async () => {
  sim = await ExchangeSimulator.start({ token: "test-token" });
  mbx = sim.addMailbox({ upn: "Megan.Bowen@contoso.com", displayName: "Megan Bowen" });
});

afterAll(async () => {
  await sim.close();
});

beforeEach(() => {
  sim.faults.clear();
  sim.config.latencyMs = 0;
  sim.config.bytesPerSecond = undefined;
});

const auth = (): Record<string, string> => ({ Authorization: `Bearer ${sim.token}` });

function get(pathOrUrl: string, headers: Record<string, string> = {}): Promise<Response> {
  const url = pathOrUrl.startsWith("http") ? pathOrUrl : `${sim.url}${pathOrUrl}`;
  return fetch(url, { headers: { ...auth(), ...headers } });
}

async function getJson<T = Json>(pathOrUrl: string, headers: Record<string, string> = {}): Promise<T> {
  const r = await get(pathOrUrl, headers);
  expect(r.status, await r.clone().text()).toBe(200);
  return (await r.json()) as T;
}

function mb(m: SimMailbox = mbx, version = "v1.0"): string {
  return sim.mailboxUrl(m.mailboxId, version === "beta" ? "beta" : "v1.0");
}

function exportItems(m: SimMailbox, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${mb(m)}/exportItems`, {
    method: "POST",
    headers: { ...auth(), "Content-Type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

async function expectGraphError(r: Response, status: number, code: string): Promise<GraphErrorBody> {
  const text = await r.text();
  expect(r.status, text).toBe(status);
  const body = JSON.parse(text) as GraphErrorBody;
  expect(body.error.code).toBe(code);
  expect(typeof body.error.message).toBe("string");
  expect(body.error.innerError["request-id"]).toBe(r.headers.get("request-id"));
  expect(body.error.innerError["client-request-id"]).toBe(r.headers.get("client-request-id"));
  return body;
}

async function collect<T = Json>(firstUrl: string, headers: Record<string, string> = {}): Promise<{ items: T[]; pages: number; last: Collection<T> }> {
  const items: T[] = [];
  let url: string | undefined = firstUrl;
  let pages = 0;
  let last: Collection<T> = { value: [] };
  while (url) {
    last = await getJson<Collection<T>>(url, headers);
    items.push(...last.value);
    pages++;
    url = last["@odata.nextLink"];
  }
  return { items, pages, last };
}

const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

describe("auth and headers", () => {
  it("rejects missing and wrong tokens with 401 InvalidAuthenticationToken", async () => {
    const noAuth = await fetch(`${sim.url}/v1.0/users`);
    await expectGraphError(noAuth, 401, "InvalidAuthenticationToken");
    const wrong = await fetch(`${mb()}/folders`, { headers: { Authorization: "Bearer nope" } });
    await expectGraphError(wrong, 401, "InvalidAuthenticationToken");
  });

  it("sends request-id and echoes client-request-id", async () => {
    const r = await get(`/v1.0/users/${encodeURIComponent(mbx.upn)}/settings/exchange`, { "client-request-id": "abc-123" });
    expect(r.status).toBe(200);
    expect(r.headers.get("client-request-id")).toBe("abc-123");
    expect(r.headers.get("request-id")).toMatch(/^[0-9a-f-]{36}$/);
  });

  it("answers unknown paths and versions with Graph errors", async () => {
    await expectGraphError(await get("/v2.0/users"), 400, "BadRequest");
    await expectGraphError(await get("/v1.0/nothing/here"), 400, "BadRequest");
  });
});

describe("users and exchange settings", () => {
  it("resolves UPN (any case, url-encoded) and user id to the MBX id", async () => {
    expect(mbx.mailboxId).toMatch(/^MBX:[0-9a-f-]{36}@[0-9a-f-]{36}$/);
    for (const who of [mbx.upn, mbx.upn.toUpperCase(), encodeURIComponent(mbx.upn), mbx.userId]) {
      const body = await getJson<Json>(`/v1.0/users/${who}/settings/exchange`);
      expect(body.primaryMailboxId).toBe(mbx.mailboxId);
      expect(body["@odata.context"]).toContain("/settings/exchange/$entity");
    }
    const beta = await getJson<Json>(`/beta/users/${mbx.userId}/settings/exchange`);
    expect(beta).toMatchObject({ id: mbx.userId, primaryMailboxId: mbx.mailboxId, inPlaceArchiveMailboxId: null });
  });

  it("404s unknown users and users without a mailbox", async () => {
    await expectGraphError(await get("/v1.0/users/nobody%40contoso.com/settings/exchange"), 404, "Request_ResourceNotFound");
    sim.addUser({ upn: "nomail@contoso.com" });
    await expectGraphError(await get("/v1.0/users/nomail@contoso.com/settings/exchange"), 404, "MailboxNotEnabledForRESTAPI");
  });

  it("lists users with paging and mail set for mailbox users", async () => {
    for (let i = 0; i < 4; i++) sim.addMailbox({ upn: `user${i}@contoso.com` });
    const { items, pages } = await collect<Json>(`/v1.0/users?$select=id,userPrincipalName,mail&$top=2`);
    expect(items.length).toBe(sim.listUsers().length);
    expect(pages).toBe(Math.ceil(items.length / 2));
    expect(Object.keys(items[0]).sort()).toEqual(["id", "mail", "userPrincipalName"]);
    const withMail = items.filter((u) => u.mail !== null).map((u) => u.userPrincipalName);
    expect(withMail).toContain("user3@contoso.com");
    expect(items.find((u) => u.userPrincipalName === "nomail@contoso.com")?.mail).toBeNull();
  });
});

describe("folders", () => {
  let big: SimMailbox;
  beforeAll(() => {
    big = sim.generateMailbox({ upn: "big@contoso.com", folders: 40, maxDepth: 3, items: 300, seed: 7 });
    for (let i = 0; i < 12; i++) sim.addFolder(big.mailboxId, { displayName: `Top ${i}` });
  });

  it("lists root children with $top/$skip paging (default 10) and absolute nextLinks", async () => {
    const first = await getJson<Collection>(`${mb(big)}/folders`);
    expect(first.value.length).toBe(10);
    expect(first["@odata.nextLink"]).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1\.0\/admin\/exchange\/mailboxes\/.+\/folders\?.*%24skip=10/);
    const { items } = await collect<Json>(`${mb(big)}/folders?$top=4`);
    const rootChildren = sim.listFolders(big.mailboxId).filter((f) => f.parentFolderId === big.wellKnownFolders.msgfolderroot);
    expect(items.map((f) => f.id)).toEqual(rootChildren.map((f) => f.id));
    const inbox = items.find((f) => f.wellKnownName === "inbox");
    expect(inbox).toMatchObject({ displayName: "Inbox", type: "IPF.Note", parentFolderId: big.wellKnownFolders.msgfolderroot });
    expect(Object.keys(inbox ?? {})).toEqual(
      expect.arrayContaining(["id", "displayName", "parentFolderId", "childFolderCount", "totalItemCount", "type", "wellKnownName"]),
    );
  });

  it("walks the whole tree through childFolders, ids url-encoded", async () => {
    const seen: Json[] = [];
    const walk = async (folderId: string): Promise<void> => {
      const { items } = await collect<Json>(`${mb(big)}/folders/${encodeURIComponent(folderId)}/childFolders?$top=3`);
      for (const f of items) {
        seen.push(f);
        if ((f.childFolderCount as number) > 0) await walk(f.id as string);
      }
    };
    await walk("msgfolderroot");
    const expected = sim.listFolders(big.mailboxId);
    expect(seen.map((f) => f.id)).toEqual(expected.map((f) => f.id));
    for (const f of seen) {
      const sf = expected.find((e) => e.id === f.id);
      expect(f.totalItemCount).toBe(sf?.totalItemCount);
    }
    expect(expected.reduce((n, f) => n + f.totalItemCount, 0)).toBe(300);
    expect(String(seen[0].id)).toMatch(/[+/]/);
  });

  it("gets one folder by id or well-known name and 404s unknown folders", async () => {
    const inbox = await getJson<Json>(`${mb(big)}/folders/inbox`);
    expect(inbox.id).toBe(big.wellKnownFolders.inbox);
    const byId = await getJson<Json>(`${mb(big)}/folders/${encodeURIComponent(big.wellKnownFolders.inbox)}`);
    expect(byId.wellKnownName).toBe("inbox");
    await expectGraphError(await get(`${mb(big)}/folders/AAAnope%3D`), 404, "ErrorItemNotFound");
    await expectGraphError(await get(`${sim.url}/v1.0/admin/exchange/mailboxes/MBX%3Anope%40nope/folders`), 404, "ErrorMailboxNotFound");
  });

  it("folders/delta: whole hierarchy, then changes and @removed", async () => {
    const m = sim.addMailbox({ upn: "fdelta@contoso.com" });
    const a = sim.addFolder(m.mailboxId, { displayName: "A" });
    const b = sim.addFolder(m.mailboxId, { parentFolderId: a.id, displayName: "B" });
    const c = sim.addFolder(m.mailboxId, { parentFolderId: "inbox", displayName: "C" });
    const first = await collect<Json>(`${mb(m)}/folders/delta`, { Prefer: "odata.maxpagesize=3" });
    expect(first.items.map((f) => f.id).sort()).toEqual(sim.listFolders(m.mailboxId).map((f) => f.id).sort());
    expect(first.items.length).toBe(8);
    const deltaLink = first.last["@odata.deltaLink"];
    expect(deltaLink).toContain("%24deltatoken=");
    sim.renameFolder(m.mailboxId, b.id, "B2");
    sim.moveFolder(m.mailboxId, c.id, a.id);
    sim.deleteFolder(m.mailboxId, b.id);
    const second = await collect<Json>(deltaLink ?? "");
    expect(second.items).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ id: c.id, parentFolderId: a.id }),
        { id: b.id, "@removed": { reason: "deleted" } },
      ]),
    );
    expect(second.items.length).toBe(2);
  });
});

describe("items and item delta", () => {
  let m: SimMailbox;
  beforeAll(() => {
    m = sim.addMailbox({ upn: "items@contoso.com" });
    for (let i = 0; i < 25; i++) sim.addItem(m.mailboxId, "inbox", { size: 1000 + i });
  });

  it("lists items with $top/$skip paging (default 10)", async () => {
    const first = await getJson<Collection>(`${mb(m)}/folders/inbox/items`);
    expect(first.value.length).toBe(10);
    const it0 = first.value[0];
    expect(it0).toMatchObject({ size: 1000, type: "IPM.Note" });
    expect(it0["@odata.etag"]).toBe(`W/"${String(it0.changeKey)}"`);
    expect(String(it0.id).length).toBeGreaterThanOrEqual(100);
    expect(String(it0.id)).toMatch(/\+/);
    expect(String(it0.id)).toMatch(/\//);
    expect(String(it0.id)).toMatch(/=$/);
    expect(String(it0.createdDateTime)).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    const all = await collect<Json>(`${mb(m)}/folders/inbox/items?$top=7&$select=id,size`);
    expect(all.pages).toBe(4);
    expect(all.items.map((i) => i.id)).toEqual(sim.listItems(m.mailboxId, "inbox").map((i) => i.id));
    expect(all.items[0].changeKey).toBeUndefined();
    const one = await getJson<Json>(`${mb(m)}/folders/inbox/items/${encodeURIComponent(String(it0.id))}`);
    expect(one.id).toBe(it0.id);
  });

  it("delta: full round, then only changes, replayable, 410 after invalidation", async () => {
    const url = `${mb(m)}/folders/inbox/items/delta?$select=id,changeKey,size`;
    const first = await collect<Json>(url, { Prefer: "odata.maxpagesize=10" });
    expect(first.pages).toBe(3);
    expect(first.items.length).toBe(25);
    expect(first.items[0]["@odata.etag"]).toBeDefined();
    expect(first.items[0].type).toBeUndefined();
    const deltaLink = first.last["@odata.deltaLink"] ?? "";
    expect(deltaLink).toMatch(/%24deltatoken=/);

    // nothing changed: one empty page with a deltaLink
    const none = await getJson<Collection>(deltaLink);
    expect(none.value).toEqual([]);
    expect(none["@odata.deltaLink"]).toBeDefined();

    const ids = sim.listItems(m.mailboxId, "inbox").map((i) => i.id);
    const added = sim.addItem(m.mailboxId, "inbox", { size: 5 });
    const modified = sim.modifyItem(m.mailboxId, ids[1], { size: 77 });
    sim.deleteItem(m.mailboxId, ids[2]);
    sim.moveItem(m.mailboxId, ids[3], "archive");
    const movedIn = sim.addItem(m.mailboxId, "drafts", { size: 9 });
    sim.moveItem(m.mailboxId, movedIn.id, "inbox");

    const second = await collect<Json>(deltaLink, { Prefer: "odata.maxpagesize=2" });
    expect(second.pages).toBe(3);
    const byId = new Map(second.items.map((i) => [i.id, i]));
    expect(byId.size).toBe(5);
    expect(byId.get(added.id)).toMatchObject({ changeKey: added.changeKey, size: 5 });
    expect(byId.get(modified.id)).toMatchObject({ changeKey: modified.changeKey, size: 77 });
    expect(byId.get(movedIn.id)).toMatchObject({ size: 9 });
    expect(byId.get(ids[2])).toEqual({ id: ids[2], "@removed": { reason: "deleted" } });
    expect(byId.get(ids[3])).toEqual({ id: ids[3], "@removed": { reason: "deleted" } });
    expect(modified.changeKey).not.toBe(first.items[1].changeKey);

    // the old deltaLink is replayable (at-least-once callers)
    const replay = await collect<Json>(deltaLink, { Prefer: "odata.maxpagesize=100" });
    expect(replay.items.length).toBe(5);

    const third = second.last["@odata.deltaLink"] ?? "";
    sim.invalidateDeltaTokens(m.mailboxId);
    await expectGraphError(await get(third), 410, "SyncStateNotFound");
    await expectGraphError(await get(deltaLink), 410, "SyncStateNotFound");
    await expectGraphError(await get(`${mb(m)}/folders/inbox/items/delta?$deltatoken=garbage`), 410, "SyncStateNotFound");
    await expectGraphError(await get(`${mb(m)}/folders/inbox/items/delta?$skiptoken=garbage.3`), 410, "SyncStateNotFound");
    // a fresh round works again
    const fresh = await collect<Json>(`${mb(m)}/folders/inbox/items/delta?$top=1000`);
    expect(fresh.items.length).toBe(sim.listItems(m.mailboxId, "inbox").length);
  });
});

describe("exportItems", () => {
  let m: SimMailbox;
  beforeAll(() => {
    m = sim.addMailbox({ upn: "export@contoso.com" });
  });

  it("streams base64 data that matches itemSha256, in request order", async () => {
    const sizes = [0, 1, 2, 3, 4, 65_536, 196_609, 1_500_000];
    const items = sizes.map((size) => sim.addItem(m.mailboxId, "inbox", { size }));
    const order = [...items].reverse();
    const r = await exportItems(m, { itemIds: order.map((i) => i.id) });
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toMatch(/^application\/json/);
    const body = (await r.json()) as { "@odata.context": string; value: ExportElement[] };
    expect(body["@odata.context"]).toMatch(/#Collection\(microsoft\.graph\.exportItemResponse\)$/);
    expect(body.value.map((v) => v.itemId)).toEqual(order.map((i) => i.id));
    for (const [k, v] of body.value.entries()) {
      expect(v.changeKey).toBe(order[k].changeKey);
      expect(v.data).toMatch(BASE64);
      const bytes = Buffer.from(v.data ?? "", "base64");
      expect(bytes.length).toBe(order[k].size);
      expect(sha(bytes)).toBe(sim.itemSha256(m.mailboxId, order[k].id));
    }
    // itemContent streams the same bytes; different items differ
    const chunks: Buffer[] = [];
    for await (const c of sim.itemContent(m.mailboxId, items[7].id)) chunks.push(c);
    expect(sha(Buffer.concat(chunks))).toBe(sim.itemSha256(m.mailboxId, items[7].id));
    expect(sim.itemSha256(m.mailboxId, items[6].id)).not.toBe(sim.itemSha256(m.mailboxId, items[7].id));
    // a new version has new bytes
    const before = sim.itemSha256(m.mailboxId, items[5].id);
    sim.modifyItem(m.mailboxId, items[5].id);
    expect(sim.itemSha256(m.mailboxId, items[5].id)).not.toBe(before);
    expect(sim.stats.exportedItemIds.get(items[7].id)).toBeGreaterThanOrEqual(1);
  });

  it("streams a 40 MB item (read incrementally, hashed while decoding)", async () => {
    const item = sim.addItem(m.mailboxId, "inbox", { size: 40 * 1024 * 1024 });
    const r = await exportItems(m, { itemIds: [item.id] });
    expect(r.status).toBe(200);
    expect(r.headers.get("content-length")).toBeNull();
    const h = createHash("sha256");
    let state: "head" | "data" | "tail" = "head";
    let head = "";
    let carry = "";
    let decoded = 0;
    const decoder = new TextDecoder();
    for await (const chunk of r.body as ReadableStream<Uint8Array>) {
      let s = decoder.decode(chunk, { stream: true });
      if (state === "head") {
        head += s;
        const at = head.indexOf('"data":"');
        if (at < 0) continue;
        s = head.slice(at + 8);
        state = "data";
      }
      if (state === "data") {
        const end = s.indexOf('"');
        const part = carry + (end >= 0 ? s.slice(0, end) : s);
        const usable = end >= 0 ? part.length : part.length - (part.length % 4);
        const buf = Buffer.from(part.slice(0, usable), "base64");
        h.update(buf);
        decoded += buf.length;
        carry = part.slice(usable);
        if (end >= 0) state = "tail";
      }
    }
    expect(state).toBe("tail");
    expect(decoded).toBe(item.size);
    expect(h.digest("hex")).toBe(sim.itemSha256(m.mailboxId, item.id));
  });

  it("stops generating and frees the in-flight slot when the client aborts mid-body", async () => {
    const item = sim.addItem(m.mailboxId, "inbox", { size: 30 * 1024 * 1024 });
    const ac = new AbortController();
    const r = await fetch(`${mb(m)}/exportItems`, {
      method: "POST",
      headers: { ...auth(), "Content-Type": "application/json" },
      body: JSON.stringify({ itemIds: [item.id] }),
      signal: ac.signal,
    });
    const reader = (r.body as ReadableStream<Uint8Array>).getReader();
    await reader.read();
    expect(sim.inFlight(m.mailboxId)).toBe(1);
    ac.abort();
    for (let i = 0; i < 100 && sim.inFlight(m.mailboxId) > 0; i++) await new Promise((res) => setTimeout(res, 10));
    expect(sim.inFlight(m.mailboxId)).toBe(0);
  });

  it("validates the request like Graph", async () => {
    const item = sim.addItem(m.mailboxId, "inbox", { size: 10 });
    await expectGraphError(await exportItems(m, "{not json"), 400, "BadRequest");
    await expectGraphError(await exportItems(m, {}), 400, "ErrorInvalidRequest");
    await expectGraphError(await exportItems(m, { itemIds: "x" }), 400, "ErrorInvalidRequest");
    await expectGraphError(await exportItems(m, { itemIds: [] }), 400, "ErrorInvalidRequest");
    await expectGraphError(await exportItems(m, { itemIds: [item.id, 5] }), 400, "ErrorInvalidRequest");
    await expectGraphError(await exportItems(m, [item.id]), 400, "ErrorInvalidRequest");
    await expectGraphError(await exportItems(m, { itemIds: [item.id, ""] }), 400, "ErrorInvalidIdMalformed");
    const tooMany = await expectGraphError(await exportItems(m, { itemIds: Array.from({ length: 21 }, () => item.id) }), 400, "ErrorInvalidRequest");
    expect(tooMany.error.message).toContain("20");
    const huge = JSON.stringify({ itemIds: [item.id], pad: "x".repeat(1024 * 1024) });
    await expectGraphError(await exportItems(m, huge), 413, "RequestEntityTooLarge");
    await expectGraphError(await exportItems(m, { itemIds: [item.id] }, { "Content-Type": "text/plain" }), 415, "UnsupportedMediaType");
    const other = await fetch(`${sim.url}/v1.0/admin/exchange/mailboxes/${encodeURIComponent("MBX:00000000-0000-0000-0000-000000000000@x")}/exportItems`, {
      method: "POST",
      headers: { ...auth(), "Content-Type": "application/json" },
      body: JSON.stringify({ itemIds: [item.id] }),
    });
    await expectGraphError(other, 404, "ErrorMailboxNotFound");
    await expectGraphError(await fetch(`${mb(m)}/exportItems`, { headers: auth() }), 405, "Request_BadRequest");
    // exactly 20 is fine
    const ok = await exportItems(m, { itemIds: Array.from({ length: 20 }, () => item.id) });
    expect(ok.status).toBe(200);
    expect(((await ok.json()) as { value: unknown[] }).value.length).toBe(20);
  });

  it("reports unknown ids (also ids differing only in case, or from another mailbox) per item inside the 200", async () => {
    const lower = sim.addItem(m.mailboxId, "inbox", { size: 3, id: "AAMkAGcase+/abc=" });
    const upper = sim.addItem(m.mailboxId, "inbox", { size: 4, id: "AAMkAGCASE+/abc=" });
    const elsewhere = sim.addItem(mbx.mailboxId, "inbox", { size: 5 });
    const r = await exportItems(m, { itemIds: [lower.id, "AAMkAGCase+/abc=", upper.id, elsewhere.id] });
    expect(r.status).toBe(200);
    const { value } = (await r.json()) as { value: ExportElement[] };
    expect(value[0].data && Buffer.from(value[0].data, "base64").length).toBe(3);
    expect(value[1]).toEqual({ itemId: "AAMkAGCase+/abc=", error: { code: "ErrorItemNotFound", message: expect.any(String) } });
    expect(value[2].data && Buffer.from(value[2].data, "base64").length).toBe(4);
    expect(value[3].error?.code).toBe("ErrorItemNotFound");
    expect(value[3].data).toBeUndefined();
  });
});

describe("concurrency limit", () => {
  it("answers the 5th parallel request on one mailbox with 429 ApplicationThrottled", async () => {
    const m = sim.addMailbox({ upn: "busy@contoso.com" });
    const other = sim.addMailbox({ upn: "calm@contoso.com" });
    sim.resetStats();
    sim.config.latencyMs = (route) => (route === "items" ? 300 : 0);
    const started = Date.now();
    const responses = await Promise.all([
      ...Array.from({ length: 5 }, () => get(`${mb(m)}/folders/inbox/items`)),
      get(`${mb(other)}/folders/inbox/items`),
    ]);
    const statuses = responses.map((r) => r.status);
    expect(statuses.filter((s) => s === 200).length).toBe(5);
    const throttled = responses.find((r) => r.status === 429);
    expect(throttled).toBeDefined();
    if (!throttled) return;
    expect(throttled.headers.get("retry-after")).toBe("1");
    const body = await expectGraphError(throttled, 429, "ApplicationThrottled");
    expect(body.error.message).toContain("MailboxConcurrency");
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(sim.stats.throttledByConcurrency).toBe(1);
    expect(sim.stats.throttled).toEqual({ concurrency: 1, injected: 0 });
    expect(sim.stats.maxInFlight.get(m.mailboxId)).toBe(4);
    expect(sim.stats.maxInFlight.get(other.mailboxId)).toBe(1);
    expect(sim.inFlight(m.mailboxId)).toBe(0);
    await Promise.all(responses.filter((r) => !r.bodyUsed).map((r) => r.body?.cancel()));
  });
});

describe("faults", () => {
  let m: SimMailbox;
  let item: { id: string; size: number };
  beforeAll(() => {
    m = sim.addMailbox({ upn: "faults@contoso.com" });
    item = sim.addItem(m.mailboxId, "inbox", { size: 300_000 });
  });

  it("status: injected 503 with Retry-After, 429 storms counted as injected, mailbox filter", async () => {
    sim.resetStats();
    sim.faults.add({ route: "exportItems", kind: "status", status: 503, retryAfterSeconds: 7 });
    const r = await exportItems(m, { itemIds: [item.id] });
    expect(r.headers.get("retry-after")).toBe("7");
    await expectGraphError(r, 503, "ServiceUnavailable");
    expect((await exportItems(m, { itemIds: [item.id] })).status).toBe(200);

    sim.faults.add({ route: "any", kind: "status", status: 429, times: 3 });
    const codes: number[] = [];
    for (let i = 0; i < 4; i++) codes.push((await get(`${mb(m)}/folders`)).status);
    expect(codes).toEqual([429, 429, 429, 200]);
    expect(sim.stats.throttledByFault).toBe(3);
    expect(sim.stats.throttledByConcurrency).toBe(0);

    sim.faults.add({ route: "folders", mailboxId: mbx.mailboxId, kind: "status", status: 500, code: "ErrorInternalServerError" });
    expect((await get(`${mb(m)}/folders`)).status).toBe(200);
    await expectGraphError(await get(`${mb(mbx)}/folders`), 500, "ErrorInternalServerError");
    expect(sim.faults.pending.length).toBe(0);
  });

  it("status: every Nth and seeded probability", async () => {
    sim.faults.add({ route: "folders", kind: "status", status: 504, every: 3, times: 2 });
    const codes: number[] = [];
    for (let i = 0; i < 8; i++) codes.push((await get(`${mb(m)}/folders`)).status);
    expect(codes).toEqual([200, 200, 504, 200, 200, 504, 200, 200]);
    sim.faults.seed(42);
    sim.faults.add({ route: "folders", kind: "status", status: 429, probability: 0.5, times: Infinity });
    const run = async (): Promise<number[]> => {
      const out: number[] = [];
      for (let i = 0; i < 12; i++) out.push((await get(`${mb(m)}/folders`)).status);
      return out;
    };
    const a = await run();
    sim.faults.clear();
    sim.faults.seed(42);
    sim.faults.add({ route: "folders", kind: "status", status: 429, probability: 0.5, times: Infinity });
    expect(await run()).toEqual(a);
    expect(a).toContain(429);
    expect(a).toContain(200);
  });

  it("resetMidBody: the connection dies after N bytes of a 200", async () => {
    sim.faults.add({ route: "exportItems", kind: "resetMidBody", afterBytes: 5000 });
    const r = await exportItems(m, { itemIds: [item.id] });
    expect(r.status).toBe(200);
    await expect(r.arrayBuffer()).rejects.toThrow();
    // also on list routes
    for (const afterBytes of [10, 0]) {
      sim.faults.add({ route: "items", kind: "resetMidBody", afterBytes });
      const l = await get(`${mb(m)}/folders/inbox/items`);
      expect(l.status).toBe(200);
      await expect(l.text()).rejects.toThrow();
    }
    const again = await exportItems(m, { itemIds: [item.id] });
    expect((await again.json()) as Json).toHaveProperty("value");
  });

  it("truncateJson: the body ends cleanly but early", async () => {
    sim.faults.add({ route: "exportItems", kind: "truncateJson", afterBytes: 1234 });
    const r = await exportItems(m, { itemIds: [item.id] });
    expect(r.status).toBe(200);
    const text = await r.text();
    expect(text.length).toBe(1234);
    expect(() => JSON.parse(text) as unknown).toThrow();
    sim.faults.add({ route: "settings", kind: "truncateJson", afterBytes: 100_000 });
    const s = await get(`/v1.0/users/${m.userId}/settings/exchange`);
    const st = await s.text();
    expect(() => JSON.parse(st) as unknown).toThrow();
    expect(st.endsWith('"')).toBe(true);
  });

  it("invalidBase64 and itemError affect only their item", async () => {
    const other = sim.addItem(m.mailboxId, "inbox", { size: 100 });
    const empty = sim.addItem(m.mailboxId, "inbox", { size: 0 });
    sim.faults.add(
      { route: "exportItems", kind: "invalidBase64", itemId: item.id },
      { route: "exportItems", kind: "invalidBase64", itemId: empty.id },
      { route: "exportItems", kind: "itemError", itemId: other.id, code: "ErrorMailboxStoreUnavailable", message: "store down" },
    );
    const r = await exportItems(m, { itemIds: [item.id, other.id, empty.id] });
    const { value } = (await r.json()) as { value: ExportElement[] };
    expect(value[0].data).toBeDefined();
    expect(value[0].data).not.toMatch(BASE64);
    expect(value[1]).toEqual({ itemId: other.id, error: { code: "ErrorMailboxStoreUnavailable", message: "store down" } });
    expect(value[2].data).not.toMatch(BASE64);
    const again = (await (await exportItems(m, { itemIds: [item.id, other.id] })).json()) as { value: ExportElement[] };
    expect(again.value[0].data).toMatch(BASE64);
    expect(again.value[1].data).toMatch(BASE64);
    expect(sim.stats.faultsFired.itemError).toBeGreaterThanOrEqual(1);
  });

  it("delayMs delays the response; bytesPerSecond paces the body", async () => {
    sim.faults.add({ route: "folders", kind: "delayMs", ms: 250 });
    let t = Date.now();
    expect((await get(`${mb(m)}/folders`)).status).toBe(200);
    expect(Date.now() - t).toBeGreaterThanOrEqual(240);
    t = Date.now();
    expect((await get(`${mb(m)}/folders`)).status).toBe(200);
    expect(Date.now() - t).toBeLessThan(200);

    const small = sim.addItem(m.mailboxId, "inbox", { size: 48_000 });
    sim.config.bytesPerSecond = 256 * 1024;
    t = Date.now();
    const r = await exportItems(m, { itemIds: [small.id] });
    const { value } = (await r.json()) as { value: ExportElement[] };
    expect(Buffer.from(value[0].data ?? "", "base64").length).toBe(48_000);
    expect(Date.now() - t).toBeGreaterThanOrEqual(200);
  });
});

describe("generation", () => {
  it("is deterministic from the seed and fast", async () => {
    const a = await ExchangeSimulator.start({ seed: 5 });
    const b = await ExchangeSimulator.start({ seed: 5 });
    try {
      const spec = { upn: "gen@contoso.com", folders: 30, maxDepth: 4, items: 2000, seed: 11 };
      const ma = a.generateMailbox(spec);
      const mbB = b.generateMailbox(spec);
      expect(ma.mailboxId).toBe(mbB.mailboxId);
      const ia = a.listItems(ma.mailboxId);
      const ib = b.listItems(mbB.mailboxId);
      expect(ia.length).toBe(2000);
      expect(ia).toEqual(ib);
      expect(a.listFolders(ma.mailboxId)).toEqual(b.listFolders(mbB.mailboxId));
      expect(new Set(ia.map((i) => i.id.toLowerCase())).size).toBe(2000);
      expect(a.itemSha256(ma.mailboxId, ia[3].id)).toBe(b.itemSha256(mbB.mailboxId, ib[3].id));
      const folders = new Set(ia.map((i) => i.folderId));
      expect(folders.size).toBeGreaterThan(10);
      const depth = (id: string): number => {
        let d = 0;
        for (let f = a.getFolder(ma.mailboxId, id); f && f.wellKnownName !== "msgfolderroot"; f = a.getFolder(ma.mailboxId, f.parentFolderId)) d++;
        return d;
      };
      expect(Math.max(...a.listFolders(ma.mailboxId).map((f) => depth(f.id)))).toBeLessThanOrEqual(4);
      const big = a.addItem(ma.mailboxId, "inbox", { size: 40 * 1024 * 1024 });
      const t = Date.now();
      expect(a.itemSha256(ma.mailboxId, big.id)).toMatch(/^[0-9a-f]{64}$/);
      expect(Date.now() - t).toBeLessThan(2000);
    } finally {
      await a.close();
      await b.close();
    }
  });
});
