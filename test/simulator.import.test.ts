import { createHash, randomBytes } from "node:crypto";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { ExchangeSimulator, type SimMailbox } from "./simulator/index";

type Json = Record<string, unknown>;
interface GraphErrorBody {
  error: { code: string; message: string; innerError: { "request-id": string; "client-request-id": string; date: string } };
}
interface FolderJson {
  id: string;
  displayName: string;
  parentFolderId: string;
  type: string;
  wellKnownName: string | null;
  childFolderCount: number;
  totalItemCount: number;
  "@odata.context"?: string;
}
interface ImportSessionJson {
  "@odata.context": string;
  importUrl: string;
  expirationDateTime: string;
}
interface ImportResponseJson {
  "@odata.context": string;
  itemId: string;
  changeKey: string;
}
interface ExportElement {
  itemId: string;
  changeKey?: string;
  data?: string;
  error?: { code: string; message: string };
}

let sim: ExchangeSimulator;
let mbx: SimMailbox;
let other: SimMailbox;

const DEFAULTS = {
  importSessionLifetimeMs: 60 * 60 * 1000,
  maxImportBodyBytes: 200 * 1024 * 1024,
  importBytesPerWindow: 150 * 1024 * 1024,
  importWindowMs: 5 * 60 * 1000,
};

beforeAll(async () => {
  sim = await ExchangeSimulator.start({ token: "test-token" });
  mbx = sim.addMailbox({ upn: "restore@contoso.com" });
  other = sim.addMailbox({ upn: "other@contoso.com" });
});

afterAll(async () => {
  await sim.close();
});

beforeEach(() => {
  sim.faults.clear();
  sim.config.latencyMs = 0;
  Object.assign(sim.config, DEFAULTS);
  sim.resetImportPacing();
});

const auth = (): Record<string, string> => ({ Authorization: `Bearer ${sim.token}` });
const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");
const BASE64_ID = /^[A-Za-z0-9+/]+=*$/;

function post(url: string, body: unknown, headers: Record<string, string> = { ...auth(), "Content-Type": "application/json" }): Promise<Response> {
  return fetch(url, { method: "POST", headers, body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body) });
}

async function expectGraphError(r: Response, status: number, code: string): Promise<GraphErrorBody> {
  const text = await r.text();
  expect(r.status, text).toBe(status);
  const body = JSON.parse(text) as GraphErrorBody;
  expect(body.error.code).toBe(code);
  expect(body.error.innerError["request-id"]).toBe(r.headers.get("request-id"));
  return body;
}

async function createFolder(m: SimMailbox, body: Json, parentId?: string): Promise<Response> {
  const url = parentId === undefined ? `${sim.mailboxUrl(m.mailboxId)}/folders` : `${sim.mailboxUrl(m.mailboxId)}/folders/${encodeURIComponent(parentId)}/childFolders`;
  return post(url, body);
}

async function newSession(m: SimMailbox, version: "v1.0" | "beta" = "v1.0"): Promise<string> {
  const r = await post(`${sim.mailboxUrl(m.mailboxId, version)}/createImportSession`, undefined, auth());
  expect(r.status, await r.clone().text()).toBe(200);
  return ((await r.json()) as ImportSessionJson).importUrl;
}

/** POST to the importUrl as a client should: no Authorization header. */
function upload(importUrl: string, body: unknown, headers: Record<string, string> = { "Content-Type": "application/json" }): Promise<Response> {
  return post(importUrl, body, headers);
}

async function importOk(importUrl: string, body: Json): Promise<ImportResponseJson> {
  const r = await upload(importUrl, body);
  expect(r.status, await r.clone().text()).toBe(200);
  return (await r.json()) as ImportResponseJson;
}

async function exportBytes(m: SimMailbox, itemId: string): Promise<Buffer> {
  const r = await post(`${sim.mailboxUrl(m.mailboxId)}/exportItems`, { itemIds: [itemId] });
  expect(r.status).toBe(200);
  const el = ((await r.json()) as { value: ExportElement[] }).value[0];
  expect(el.error).toBeUndefined();
  return Buffer.from(el.data ?? "", "base64");
}

describe("create folder", () => {
  it("creates top-level and child folders (201), visible in listings and folders/delta", async () => {
    const r = await createFolder(mbx, { displayName: "Restored", type: "IPF.Note" });
    expect(r.status).toBe(201);
    const f = (await r.json()) as FolderJson;
    expect(f).toMatchObject({ displayName: "Restored", parentFolderId: mbx.wellKnownFolders.msgfolderroot, type: "IPF.Note", wellKnownName: null, childFolderCount: 0, totalItemCount: 0 });
    expect(f.id).toMatch(BASE64_ID);
    expect(f["@odata.context"]).toContain("/folders/$entity");
    expect(r.headers.get("location")).toBe(`${sim.mailboxUrl(mbx.mailboxId)}/folders/${encodeURIComponent(f.id)}`);

    // type defaults to IPF.Note; childFolders POST under a user folder and under a well-known name
    const c = await createFolder(mbx, { displayName: "Child" }, f.id);
    expect(c.status).toBe(201);
    const child = (await c.json()) as FolderJson;
    expect(child).toMatchObject({ parentFolderId: f.id, type: "IPF.Note" });
    const cal = await createFolder(mbx, { displayName: "Calendar copy", type: "IPF.Appointment" }, "inbox");
    expect(cal.status).toBe(201);
    expect(((await cal.json()) as FolderJson).parentFolderId).toBe(mbx.wellKnownFolders.inbox);

    // GET on the same paths still lists
    const list = (await (await fetch(`${sim.mailboxUrl(mbx.mailboxId)}/folders?$top=100`, { headers: auth() })).json()) as { value: FolderJson[] };
    expect(list.value.find((x) => x.id === f.id)?.childFolderCount).toBe(1);
    const kids = (await (await fetch(`${sim.mailboxUrl(mbx.mailboxId)}/folders/${encodeURIComponent(f.id)}/childFolders`, { headers: auth() })).json()) as { value: FolderJson[] };
    expect(kids.value.map((x) => x.id)).toEqual([child.id]);
    const delta = (await (await fetch(`${sim.mailboxUrl(mbx.mailboxId)}/folders/delta?$top=1000`, { headers: auth() })).json()) as { value: FolderJson[] };
    expect(delta.value.map((x) => x.id)).toEqual(expect.arrayContaining([f.id, child.id]));
    expect(sim.getFolder(mbx.mailboxId, child.id)?.parentFolderId).toBe(f.id);
    expect(sim.stats.requests.createFolder).toBeGreaterThanOrEqual(3);
  });

  it("409 ErrorFolderExists for a sibling with the same name (any case); same name elsewhere is fine", async () => {
    expect((await createFolder(mbx, { displayName: "Dup" })).status).toBe(201);
    await expectGraphError(await createFolder(mbx, { displayName: "dUP" }), 409, "ErrorFolderExists");
    await expectGraphError(await createFolder(mbx, { displayName: "INBOX" }), 409, "ErrorFolderExists");
    expect((await createFolder(mbx, { displayName: "Dup" }, "inbox")).status).toBe(201);
  });

  it("400 for bad bodies, 404 for an unknown parent, 415 without JSON, 401 without token", async () => {
    const bad: unknown[] = [
      {},
      { displayName: "" },
      { displayName: "   " },
      { displayName: 42 },
      { displayName: null },
      { displayName: "x".repeat(256) },
      { displayName: "T", type: "Note" },
      { displayName: "T", type: "" },
      { displayName: "T", type: 7 },
      { displayName: "T", foo: 1 },
      { displayName: "T", id: "abc" },
      ["displayName"],
    ];
    for (const b of bad) await expectGraphError(await createFolder(mbx, b as Json), 400, "ErrorInvalidRequest");
    await expectGraphError(await post(`${sim.mailboxUrl(mbx.mailboxId)}/folders`, "{nope"), 400, "BadRequest");
    expect((await createFolder(mbx, { displayName: "y".repeat(255), type: "IPF.Note.Custom" })).status).toBe(201);
    await expectGraphError(await createFolder(mbx, { displayName: "Z" }, "no-such-folder"), 404, "ErrorItemNotFound");
    const url = `${sim.mailboxUrl(mbx.mailboxId)}/folders`;
    await expectGraphError(await post(url, { displayName: "Z" }, { ...auth(), "Content-Type": "text/plain" }), 415, "UnsupportedMediaType");
    await expectGraphError(await post(url, { displayName: "Z" }, { "Content-Type": "application/json" }), 401, "InvalidAuthenticationToken");
    await expectGraphError(await fetch(url, { method: "PUT", headers: auth() }), 405, "Request_BadRequest");
    expect(sim.listFolders(mbx.mailboxId).some((f) => f.displayName === "Z")).toBe(false);
  });
});

describe("createImportSession", () => {
  it("returns a preauthenticated importUrl (gv1.0 / gbeta) and an expiration", async () => {
    const t0 = Date.now();
    const r = await post(`${sim.mailboxUrl(mbx.mailboxId)}/createImportSession`, undefined, auth());
    expect(r.status).toBe(200);
    const s = (await r.json()) as ImportSessionJson;
    expect(s["@odata.context"]).toMatch(/\$metadata#microsoft\.graph\.mailboxItemImportSession$/);
    const prefix = `${sim.url}/api/gv1.0/Mailboxes('${encodeURIComponent(mbx.mailboxId)}')/importItem?authtoken=`;
    expect(s.importUrl.startsWith(prefix)).toBe(true);
    expect(s.importUrl.slice(prefix.length)).toMatch(/^[A-Za-z0-9_-]{40,}$/);
    const exp = Date.parse(s.expirationDateTime);
    expect(exp - t0).toBeGreaterThan(59 * 60 * 1000);
    expect(exp - t0).toBeLessThan(61 * 60 * 1000);
    expect(sim.importSessions(mbx.mailboxId).find((x) => x.importUrl === s.importUrl)).toMatchObject({ expired: false, version: "v1.0" });

    expect(await newSession(mbx, "beta")).toContain("/api/gbeta/Mailboxes(");
    await expectGraphError(await post(`${sim.mailboxUrl(mbx.mailboxId)}/createImportSession`, undefined, {}), 401, "InvalidAuthenticationToken");
    await expectGraphError(await fetch(`${sim.mailboxUrl(mbx.mailboxId)}/createImportSession`, { headers: auth() }), 405, "Request_BadRequest");
    await expectGraphError(await post(`${sim.url}/v1.0/admin/exchange/mailboxes/MBX%3Anope%40x/createImportSession`, undefined, auth()), 404, "ErrorMailboxNotFound");
  });
});

describe("importItem", () => {
  it("create: new item with exactly the imported bytes (export, itemContent, listing, item delta)", async () => {
    const folder = sim.addFolder(mbx.mailboxId, { displayName: "Import target" });
    const d0 = (await (await fetch(`${sim.mailboxUrl(mbx.mailboxId)}/folders/${encodeURIComponent(folder.id)}/items/delta`, { headers: auth() })).json()) as {
      "@odata.deltaLink": string;
    };
    const url = await newSession(mbx);
    const bytes = randomBytes(100_000);
    // An Authorization header (even a wrong one) is ignored: the authtoken is what counts.
    const r = await upload(url, { FolderId: folder.id, Mode: "create", Data: bytes.toString("base64") }, { "Content-Type": "application/json", Authorization: "Bearer wrong" });
    expect(r.status, await r.clone().text()).toBe(200);
    const res = (await r.json()) as ImportResponseJson;
    expect(res["@odata.context"]).toBe(`${sim.url}/api/gv1.0/$metadata#microsoft.graph.importMailboxItemResponse`);
    expect(res.itemId).toMatch(BASE64_ID);
    expect(res.changeKey).toMatch(BASE64_ID);

    expect(sim.getItem(mbx.mailboxId, res.itemId)).toMatchObject({ folderId: folder.id, size: bytes.length, changeKey: res.changeKey });
    expect(sim.itemSha256(mbx.mailboxId, res.itemId)).toBe(sha(bytes));
    const chunks: Buffer[] = [];
    for await (const c of sim.itemContent(mbx.mailboxId, res.itemId, 7000)) chunks.push(c);
    expect(Buffer.concat(chunks).equals(bytes)).toBe(true);
    expect((await exportBytes(mbx, res.itemId)).equals(bytes)).toBe(true);
    const log = sim.importedItems(mbx.mailboxId);
    expect(log[log.length - 1]).toMatchObject({ mode: "create", itemId: res.itemId, changeKey: res.changeKey, folderId: folder.id, size: bytes.length, sha256: sha(bytes) });
    expect(Date.parse(log[log.length - 1].importedAt)).toBeGreaterThan(Date.now() - 10_000);

    const items = (await (await fetch(`${sim.mailboxUrl(mbx.mailboxId)}/folders/${encodeURIComponent(folder.id)}/items`, { headers: auth() })).json()) as { value: Json[] };
    expect(items.value).toEqual([expect.objectContaining({ id: res.itemId, changeKey: res.changeKey, size: bytes.length })]);
    const d1 = (await (await fetch(d0["@odata.deltaLink"], { headers: auth() })).json()) as { value: Json[] };
    expect(d1.value.map((x) => x.id)).toEqual([res.itemId]);
    expect(sim.stats.importedItems).toBeGreaterThanOrEqual(1);
  });

  it("round-trips a generated item's export into another mailbox, and a 16 MB item", async () => {
    const src = sim.addItem(other.mailboxId, "inbox", { size: 300_000 });
    const data = (await exportBytes(other, src.id)).toString("base64");
    const res = await importOk(await newSession(mbx), { FolderId: mbx.wellKnownFolders.inbox, Mode: "create", Data: data });
    expect(res.itemId).not.toBe(src.id);
    expect(sim.itemSha256(mbx.mailboxId, res.itemId)).toBe(sim.itemSha256(other.mailboxId, src.id));

    const big = randomBytes(16 * 1024 * 1024);
    const r2 = await importOk(await newSession(mbx), { FolderId: mbx.wellKnownFolders.archive, Mode: "create", Data: big.toString("base64") });
    expect(sim.getItem(mbx.mailboxId, r2.itemId)?.size).toBe(big.length);
    expect(sha(await exportBytes(mbx, r2.itemId))).toBe(sha(big));
  });

  it("update: same id, new changeKey and bytes; 409 on a stale changeKey, 404 outside the folder, 400 on bad combinations", async () => {
    const folder = sim.addFolder(mbx.mailboxId, { displayName: "Update target" });
    const url = await newSession(mbx);
    const v1 = randomBytes(5000);
    const a = await importOk(url, { FolderId: folder.id, Mode: "create", Data: v1.toString("base64") });
    const v2 = randomBytes(7000);
    const b = await importOk(url, { FolderId: folder.id, Mode: "update", ItemId: a.itemId, ChangeKey: a.changeKey, Data: v2.toString("base64") });
    expect(b.itemId).toBe(a.itemId);
    expect(b.changeKey).not.toBe(a.changeKey);
    expect(sim.getItem(mbx.mailboxId, a.itemId)).toMatchObject({ size: v2.length, changeKey: b.changeKey });
    expect((await exportBytes(mbx, a.itemId)).equals(v2)).toBe(true);
    // the old version's hash stays known
    expect(sim.sha256Of({ mailboxId: mbx.mailboxId, itemId: a.itemId, changeKey: a.changeKey, size: v1.length })).toBe(sha(v1));
    expect(sim.importedItems(mbx.mailboxId).filter((x) => x.itemId === a.itemId).map((x) => x.mode)).toEqual(["create", "update"]);

    const d = v1.toString("base64");
    await expectGraphError(await upload(url, { FolderId: folder.id, Mode: "update", ItemId: a.itemId, ChangeKey: a.changeKey, Data: d }), 409, "ErrorIrresolvableConflict");
    await expectGraphError(await upload(url, { FolderId: mbx.wellKnownFolders.inbox, Mode: "update", ItemId: a.itemId, ChangeKey: b.changeKey, Data: d }), 404, "ErrorItemNotFound");
    await expectGraphError(await upload(url, { FolderId: folder.id, Mode: "update", ItemId: "AAAA", ChangeKey: b.changeKey, Data: d }), 404, "ErrorItemNotFound");
    await expectGraphError(await upload(url, { FolderId: folder.id, Mode: "update", ItemId: a.itemId, Data: d }), 400, "ErrorInvalidRequest");
    await expectGraphError(await upload(url, { FolderId: folder.id, Mode: "create", ItemId: a.itemId, Data: d }), 400, "ErrorInvalidRequest");
    await expectGraphError(await upload(url, { FolderId: folder.id, Mode: "create", ChangeKey: b.changeKey, Data: d }), 400, "ErrorInvalidRequest");
    expect(sim.getItem(mbx.mailboxId, a.itemId)?.changeKey).toBe(b.changeKey);

    // a generated item can be updated too; modifyItem afterwards goes back to generated content
    const g = sim.addItem(mbx.mailboxId, folder.id, { size: 1000 });
    const u = await importOk(url, { FolderId: folder.id, Mode: "update", ItemId: g.id, ChangeKey: g.changeKey, Data: d });
    expect(sim.itemSha256(mbx.mailboxId, g.id)).toBe(sha(v1));
    const mod = sim.modifyItem(mbx.mailboxId, g.id);
    expect(mod.changeKey).not.toBe(u.changeKey);
    expect(sim.itemSha256(mbx.mailboxId, g.id)).not.toBe(sha(v1));
    expect(sha(await exportBytes(mbx, g.id))).toBe(sim.itemSha256(mbx.mailboxId, g.id));
  });

  it("401 InvalidAuthenticationToken for expired, revoked, unknown, missing and other-mailbox tokens", async () => {
    sim.config.importSessionLifetimeMs = 300;
    const url = await newSession(mbx);
    const body = { FolderId: mbx.wellKnownFolders.inbox, Mode: "create", Data: "AAAA" };
    await importOk(url, body);
    await new Promise((r) => setTimeout(r, 350));
    const e = await expectGraphError(await upload(url, body), 401, "InvalidAuthenticationToken");
    expect(e.error.message).toMatch(/expired/);
    expect(sim.importSessions(mbx.mailboxId).find((s) => s.importUrl === url)?.expired).toBe(true);

    sim.config.importSessionLifetimeMs = 60_000;
    const url2 = await newSession(mbx);
    const url3 = await newSession(other);
    expect(sim.expireImportSessions(mbx.mailboxId)).toBeGreaterThanOrEqual(1);
    expect((await expectGraphError(await upload(url2, body), 401, "InvalidAuthenticationToken")).error.message).toMatch(/expired/);
    // the other mailbox's session is untouched, but its token does not work on this mailbox's path
    await importOk(url3, { ...body, FolderId: other.wellKnownFolders.inbox });
    const token3 = new URL(url3).searchParams.get("authtoken") ?? "";
    const base = url2.slice(0, url2.indexOf("?"));
    await expectGraphError(await upload(`${base}?authtoken=${token3}`, body), 401, "InvalidAuthenticationToken");
    await expectGraphError(await upload(`${base}?authtoken=bogus`, body), 401, "InvalidAuthenticationToken");
    await expectGraphError(await upload(base, body), 401, "InvalidAuthenticationToken");
    // a Graph bearer token does not replace the authtoken
    await expectGraphError(await upload(base, body, { ...auth(), "Content-Type": "application/json" }), 401, "InvalidAuthenticationToken");
  });

  it("validates the request: 400 (JSON, fields, base64), 404/409 folder, 413, 415, 405", async () => {
    const url = await newSession(mbx);
    const inbox = mbx.wellKnownFolders.inbox;
    const before = sim.listItems(mbx.mailboxId).length;
    const bad400: Json[] = [
      { Mode: "create", Data: "AAAA" },
      { FolderId: "", Mode: "create", Data: "AAAA" },
      { FolderId: inbox, Data: "AAAA" },
      { FolderId: inbox, Mode: "replace", Data: "AAAA" },
      { FolderId: inbox, Mode: "create" },
      { FolderId: inbox, Mode: "create", Data: "" },
      { FolderId: inbox, Mode: "create", Data: 12 },
      { FolderId: inbox, Mode: "create", Data: "AA*A" },
      { FolderId: inbox, Mode: "create", Data: "AAA" },
      { FolderId: inbox, Mode: "create", Data: "AAAA\nAAAA" },
      { FolderId: inbox, Mode: "create", Data: "AA-_" },
    ];
    for (const b of bad400) await expectGraphError(await upload(url, b), 400, "ErrorInvalidRequest");
    await expectGraphError(await upload(url, "{not json"), 400, "BadRequest");
    await expectGraphError(await upload(url, { FolderId: "nope", Mode: "create", Data: "AAAA" }), 404, "ErrorItemNotFound");
    // well-known names are not folder ids here
    await expectGraphError(await upload(url, { FolderId: "inbox", Mode: "create", Data: "AAAA" }), 404, "ErrorItemNotFound");
    const e = await expectGraphError(await upload(url, { FolderId: other.wellKnownFolders.inbox, Mode: "create", Data: "AAAA" }), 409, "ErrorInvalidImportSession");
    expect(e.error.message).toContain(other.mailboxId);
    await expectGraphError(await upload(url, { FolderId: inbox, Mode: "create", Data: "AAAA" }, { "Content-Type": "text/plain" }), 415, "UnsupportedMediaType");
    await expectGraphError(await fetch(url), 405, "Request_BadRequest");
    sim.config.maxImportBodyBytes = 1000;
    await expectGraphError(await upload(url, { FolderId: inbox, Mode: "create", Data: randomBytes(2000).toString("base64") }), 413, "RequestEntityTooLarge");
    expect(sim.listItems(mbx.mailboxId).length).toBe(before);
    // Mode is case-insensitive
    sim.config.maxImportBodyBytes = DEFAULTS.maxImportBodyBytes;
    await importOk(url, { FolderId: inbox, Mode: "Create", Data: "AAAA" });
  });

  it("paces uploads per mailbox: 429 ApplicationThrottled with Retry-After once the window's budget is used", async () => {
    sim.config.importBytesPerWindow = 3000;
    sim.config.importWindowMs = 1000;
    const url = await newSession(mbx);
    const body = { FolderId: mbx.wellKnownFolders.inbox, Mode: "create", Data: randomBytes(600).toString("base64") }; // ~950 bytes of JSON
    const size = Buffer.byteLength(JSON.stringify(body));
    sim.resetStats();
    await importOk(url, body);
    await importOk(url, body);
    await importOk(url, body);
    expect(sim.importUsage(mbx.mailboxId)).toEqual({ bytesInWindow: 3 * size, budgetBytes: 3000, windowMs: 1000 });
    const r = await upload(url, body);
    await expectGraphError(r, 429, "ApplicationThrottled");
    expect(r.headers.get("retry-after")).toBe("1");
    expect(sim.stats.importThrottled).toBe(1);
    expect(sim.stats.importedItems).toBe(3);
    expect(sim.stats.importedBytes).toBe(3 * 600);
    // another mailbox has its own budget
    await importOk(await newSession(other), { ...body, FolderId: other.wellKnownFolders.inbox });
    // once the window has passed, uploads go through again; one body bigger than the whole budget passes in an empty window
    await new Promise((res) => setTimeout(res, 1020));
    await importOk(url, { ...body, Data: randomBytes(4000).toString("base64") });
    await expectGraphError(await upload(url, body), 429, "ApplicationThrottled");
    expect(sim.stats.importThrottled).toBe(2);
  });

  it("counts against the per-mailbox concurrency limit", async () => {
    sim.config.latencyMs = (route) => (route === "importItem" ? 150 : 0);
    const url = await newSession(mbx);
    sim.resetStats();
    const body = { FolderId: mbx.wellKnownFolders.drafts, Mode: "create", Data: "AAAA" };
    const rs = await Promise.all(Array.from({ length: 5 }, () => upload(url, body)));
    const statuses = rs.map((r) => r.status).sort();
    expect(statuses).toEqual([200, 200, 200, 200, 429]);
    const throttled = rs.find((r) => r.status === 429) as Response;
    expect(((await throttled.json()) as GraphErrorBody).error.message).toMatch(/MailboxConcurrency/);
    expect(sim.stats.throttledByConcurrency).toBe(1);
    expect(sim.stats.maxInFlight.get(mbx.mailboxId)).toBe(4);
    expect(sim.stats.importedItems).toBe(4);
  });

  it("fault rules apply to importItem, createImportSession and createFolder", async () => {
    const url = await newSession(mbx);
    const body = { FolderId: mbx.wellKnownFolders.sentitems, Mode: "create", Data: randomBytes(300).toString("base64") };
    const n0 = sim.importedItems(mbx.mailboxId).length;
    sim.faults.add(
      { route: "importItem", kind: "status", status: 503, retryAfterSeconds: 2 },
      { route: "createImportSession", kind: "status", status: 500 },
      { route: "createFolder", kind: "status", status: 429, retryAfterSeconds: 1, mailboxId: mbx.mailboxId },
    );
    const r = await upload(url, body);
    await expectGraphError(r, 503, "ServiceUnavailable");
    expect(r.headers.get("retry-after")).toBe("2");
    expect(sim.importedItems(mbx.mailboxId).length).toBe(n0);
    await expectGraphError(await post(`${sim.mailboxUrl(mbx.mailboxId)}/createImportSession`, undefined, auth()), 500, "InternalServerError");
    expect((await createFolder(other, { displayName: "Not faulted" })).status).toBe(201);
    await expectGraphError(await createFolder(mbx, { displayName: "Faulted" }), 429, "TooManyRequests");
    expect(sim.listFolders(mbx.mailboxId).some((f) => f.displayName === "Faulted")).toBe(false);

    // A lost response: the item is created, but the client never sees the 200 (a retry would duplicate it).
    sim.faults.add({ route: "importItem", kind: "resetMidBody", afterBytes: 10 });
    await expect(upload(url, body).then((x) => x.text())).rejects.toThrow();
    expect(sim.importedItems(mbx.mailboxId).length).toBe(n0 + 1);
    await importOk(url, body);
    expect(sim.faults.pending).toHaveLength(0);
  });
});
