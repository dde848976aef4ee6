/* The simulator's EWS part: SOAP over HTTP with plain fetch, responses read with fast-xml-parser. */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { XMLParser, XMLValidator } from "fast-xml-parser";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { ExchangeSimulator, type SimMailbox } from "./simulator/index";

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type X = Record<string, any>;

const NS_M = "http://schemas.microsoft.com/exchange/services/2006/messages";
const NS_T = "http://schemas.microsoft.com/exchange/services/2006/types";
const NS_S = "http://schemas.xmlsoap.org/soap/envelope/";

const xml = new XMLParser({
  removeNSPrefix: true,
  ignoreAttributes: false,
  attributeNamePrefix: "@",
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: true,
  isArray: (name) => name.endsWith("ResponseMessage") || ["Create", "Update", "Delete", "Folder", "CalendarFolder", "Value"].includes(name),
});

let sim: ExchangeSimulator;
let a: SimMailbox;
let b: SimMailbox;
const A = "Adele.Vance@contoso.com";
const B = "Bob.Stone@contoso.com";

beforeAll(async () => {
  sim = await ExchangeSimulator.start({ token: "ews-token", ewsPassword: "s3cret&<pw>" });
  a = sim.addMailbox({ upn: A });
  b = sim.addMailbox({ upn: B });
});

afterAll(async () => {
  await sim.close();
});

beforeEach(() => {
  sim.faults.clear();
  sim.config.latencyMs = 0;
  sim.config.bytesPerSecond = undefined;
  sim.config.ewsRequireAnchorMailbox = true;
  sim.config.ewsMaxConcurrentPerMailbox = 4;
  sim.config.ewsBackOffMs = 1000;
  sim.config.ewsWrapBase64 = true;
  sim.config.ewsMaxRequestBodyBytes = 35 * 1024 * 1024;
});

interface CallOpts {
  /** default: basic */
  auth?: "basic" | "bearer" | "none" | string;
  /** ExchangeImpersonation PrimarySmtpAddress (and X-AnchorMailbox unless anchor is given) */
  as?: string;
  anchor?: string | null;
  /** RequestServerVersion (null: none) */
  version?: string | null;
  contentType?: string;
  method?: string;
  raw?: string;
}

function envelope(op: string, o: CallOpts = {}): string {
  const version = o.version === undefined ? "Exchange2013_SP1" : o.version;
  const imp = o.as
    ? `<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>${o.as}</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>`
    : "";
  return (
    `<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="${NS_S}" xmlns:t="${NS_T}" xmlns:m="${NS_M}">` +
    `<soap:Header>${version === null ? "" : `<t:RequestServerVersion Version="${version}"/>`}${imp}</soap:Header>` +
    `<soap:Body>${op}</soap:Body></soap:Envelope>`
  );
}

function send(op: string, o: CallOpts = {}): Promise<Response> {
  const headers: Record<string, string> = { "Content-Type": o.contentType ?? "text/xml; charset=utf-8" };
  const auth = o.auth ?? "basic";
  if (auth === "basic") headers.Authorization = sim.ewsBasicAuth();
  else if (auth === "bearer") headers.Authorization = `Bearer ${sim.token}`;
  else if (auth !== "none") headers.Authorization = auth;
  const anchor = o.anchor === undefined ? o.as : o.anchor;
  if (anchor) headers["X-AnchorMailbox"] = anchor;
  const method = o.method ?? "POST";
  return fetch(sim.ewsUrl, { method, headers, body: method === "GET" ? undefined : (o.raw ?? envelope(op, o)) });
}

interface Result {
  status: number;
  text: string;
  doc: X;
  /** The response messages, in order. */
  messages: X[];
}

async function call(op: string, o: CallOpts = {}): Promise<Result> {
  const r = await send(op, o);
  const text = await r.text();
  expect(r.headers.get("content-type")).toMatch(/^text\/xml; charset=utf-8/);
  expect(XMLValidator.validate(text), text.slice(0, 500)).toBe(true);
  const doc = xml.parse(text) as X;
  const body = doc.Envelope.Body as X;
  const resp = Object.values(body).find((v) => typeof v === "object" && v !== null && "ResponseMessages" in v) as X | undefined;
  const messages: X[] = resp ? (Object.values(resp.ResponseMessages as X)[0] as X[]) : [];
  return { status: r.status, text, doc, messages };
}

async function ok(op: string, o: CallOpts = {}): Promise<Result> {
  const res = await call(op, o);
  expect(res.status, res.text.slice(0, 800)).toBe(200);
  return res;
}

function fault(res: Result): { code: string; faultcode: string; message: string; backOff?: string } {
  const f = res.doc.Envelope.Body.Fault as X;
  const values = (f.detail?.MessageXml?.Value ?? []) as X[];
  return {
    code: f.detail.ResponseCode as string,
    faultcode: (typeof f.faultcode === "string" ? f.faultcode : f.faultcode["#text"]) as string,
    message: f.detail.Message as string,
    backOff: values.find((v) => v["@Name"] === "BackOffMilliseconds")?.["#text"] as string | undefined,
  };
}

function expectError(m: X, code: string): void {
  expect(m["@ResponseClass"]).toBe("Error");
  expect(m.ResponseCode).toBe(code);
  expect(typeof m.MessageText).toBe("string");
  expect(m.DescriptiveLinkKey).toBe("0");
}

function expectSuccess(m: X): void {
  expect(m["@ResponseClass"], JSON.stringify(m)).toBe("Success");
  expect(m.ResponseCode).toBe("NoError");
}

const sha = (buf: Buffer): string => createHash("sha256").update(buf).digest("hex");
const dfid = (id: string, mailbox?: string): string =>
  `<t:DistinguishedFolderId Id="${id}">${mailbox ? `<t:Mailbox><t:EmailAddress>${mailbox}</t:EmailAddress></t:Mailbox>` : ""}</t:DistinguishedFolderId>`;
const fid = (id: string): string => `<t:FolderId Id="${id}"/>`;
const getFolder = (ids: string, shape = "AllProperties"): string =>
  `<m:GetFolder><m:FolderShape><t:BaseShape>${shape}</t:BaseShape></m:FolderShape><m:FolderIds>${ids}</m:FolderIds></m:GetFolder>`;
const exportItems = (ids: Array<string | { id: string; ck?: string }>): string =>
  `<m:ExportItems><m:ItemIds>${ids
    .map((x) => (typeof x === "string" ? `<t:ItemId Id="${x}"/>` : `<t:ItemId Id="${x.id}"${x.ck === undefined ? "" : ` ChangeKey="${x.ck}"`}/>`))
    .join("")}</m:ItemIds></m:ExportItems>`;
const hierarchy = (state?: string, folder = dfid("msgfolderroot")): string =>
  `<m:SyncFolderHierarchy><m:FolderShape><t:BaseShape>AllProperties</t:BaseShape></m:FolderShape><m:SyncFolderId>${folder}</m:SyncFolderId>${
    state ? `<m:SyncState>${state}</m:SyncState>` : ""
  }</m:SyncFolderHierarchy>`;
const syncItems = (folder: string, max: number | null, state?: string, shape = "IdOnly"): string =>
  `<m:SyncFolderItems><m:ItemShape><t:BaseShape>${shape}</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="item:Size"/><t:FieldURI FieldURI="item:ItemClass"/><t:FieldURI FieldURI="item:DateTimeCreated"/></t:AdditionalProperties></m:ItemShape>` +
  `<m:SyncFolderId>${folder}</m:SyncFolderId>${state ? `<m:SyncState>${state}</m:SyncState>` : ""}${
    max === null ? "" : `<m:MaxChangesReturned>${max}</m:MaxChangesReturned>`
  }<m:SyncScope>NormalItems</m:SyncScope></m:SyncFolderItems>`;
const upload = (items: Array<{ action: string; parent: string; id?: string; ck?: string; data: string }>): string =>
  `<m:UploadItems><m:Items>${items
    .map(
      (i) =>
        `<t:Item CreateAction="${i.action}" IsAssociated="false"><t:ParentFolderId Id="${i.parent}"/>${
          i.id === undefined ? "" : `<t:ItemId Id="${i.id}"${i.ck === undefined ? "" : ` ChangeKey="${i.ck}"`}/>`
        }<t:Data>${i.data}</t:Data></t:Item>`,
    )
    .join("")}</m:Items></m:UploadItems>`;

/** The first element of a Create/Update (Message, Folder, ...) with its element name. */
function entity(change: X): { kind: string; value: X } {
  const [kind, value] = Object.entries(change).find(([k]) => !k.startsWith("@")) as [string, X | X[]];
  return { kind, value: Array.isArray(value) ? value[0] : value };
}

async function itemSha(mailbox: string, itemId: string): Promise<string> {
  const h = createHash("sha256");
  for await (const c of sim.itemContent(mailbox, itemId)) h.update(c);
  return h.digest("hex");
}

describe("EWS endpoint, auth and headers", () => {
  it("needs Basic or Bearer auth; 401 carries WWW-Authenticate and an empty body", async () => {
    const op = getFolder(dfid("inbox", A));
    for (const auth of ["none", "Bearer nope", `Basic ${Buffer.from(`${sim.ewsUsername}:wrong`).toString("base64")}`, "Basic !!!"]) {
      const r = await send(op, { auth });
      expect(r.status).toBe(401);
      expect(r.headers.get("www-authenticate")).toBe('NTLM, Basic realm="sim", Bearer');
      expect(await r.text()).toBe("");
    }
    expect(sim.ewsUsername).toBe("svc-backup");
    expect(sim.ewsPassword).toBe("s3cret&<pw>");
    for (const auth of ["basic", "bearer"] as const) {
      const res = await ok(op, { auth });
      expectSuccess(res.messages[0]);
    }
    // user names compare case-insensitively
    const upper = `Basic ${Buffer.from(`SVC-BACKUP:${sim.ewsPassword}`).toString("base64")}`;
    expect((await send(op, { auth: upper })).status).toBe(200);
  });

  it("answers in the real namespaces with ServerVersionInfo; other methods 405, other media types 415", async () => {
    const res = await ok(getFolder(dfid("inbox", A)));
    expect(res.text).toContain(`xmlns:s="${NS_S}"`);
    expect(res.text).toContain(`xmlns:m="${NS_M}"`);
    expect(res.text).toContain(`xmlns:t="${NS_T}"`);
    expect(res.text).toMatch(/<s:Envelope[^>]*><s:Header><h:ServerVersionInfo MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" MinorBuildNumber="6" Version="V2017_07_11"/);
    expect(res.text).toContain("<m:GetFolderResponse ");
    expect((await send("", { method: "GET" })).status).toBe(405);
    expect((await send(getFolder(dfid("inbox", A)), { contentType: "application/json" })).status).toBe(415);
    const soap12 = await send(getFolder(dfid("inbox", A)), { contentType: 'application/soap+xml; charset=utf-8; action="GetFolder"' });
    expect(soap12.status).toBe(200);
    expect(sim.ewsEnv()).toEqual({ MAILVAULT_EWS_URL: `${sim.url}/EWS/Exchange.asmx`, EWS_ACCESS_TOKEN: sim.token });
    expect(sim.mailboxGuid(A)).toBe(a.mailboxGuid);
    expect(a.mailboxId).toBe(`MBX:${a.mailboxGuid}@${sim.tenantId}`);
    expect(sim.findMailboxBySmtp("adele.vance@CONTOSO.com")?.mailboxId).toBe(a.mailboxId);
    expect(sim.findMailboxBySmtp("nobody@contoso.com")).toBeUndefined();
  });

  it("requires RequestServerVersion; ExportItems and UploadItems need Exchange2010_SP1 or later", async () => {
    let res = await call(getFolder(dfid("inbox", A)), { version: null });
    expect(res.status).toBe(500);
    expect(fault(res)).toMatchObject({ code: "ErrorInvalidServerVersion", faultcode: "a:ErrorInvalidServerVersion" });
    res = await call(getFolder(dfid("inbox", A)), { version: "Exchange2099" });
    expect(fault(res).code).toBe("ErrorInvalidServerVersion");
    await ok(getFolder(dfid("inbox", A)), { version: "Exchange2010" });
    for (const v of ["Exchange2007_SP1", "Exchange2010"]) {
      res = await call(exportItems(["x"]), { version: v, as: A });
      expect(res.status).toBe(500);
      expect(fault(res).code).toBe("ErrorInvalidServerVersion");
    }
    for (const v of ["Exchange2010_SP1", "Exchange2010_SP2", "Exchange2013", "Exchange2013_SP1", "Exchange2015", "Exchange2016"]) {
      expect((await call(exportItems(["x"]), { version: v, as: A })).status).toBe(200);
    }
  });

  it("rejects unknown operations (500) and malformed XML (400) with ErrorInvalidRequest faults", async () => {
    const before = sim.stats.ews.unknownOperations;
    let res = await call("<m:FindItem/>");
    expect(res.status).toBe(500);
    expect(fault(res).code).toBe("ErrorInvalidRequest");
    expect(sim.stats.ews.unknownOperations).toBe(before + 1);
    res = await call("", { raw: "<soap:Envelope><soap:Body><m:GetFolder></soap:Body>" });
    expect(res.status).toBe(400);
    expect(fault(res).code).toBe("ErrorInvalidRequest");
  });

  it("impersonation needs a matching X-AnchorMailbox; unknown addresses give ErrorNonExistentMailbox", async () => {
    const before = sim.stats.ews.anchorMailboxRejected;
    for (const anchor of [null, B]) {
      const res = await call(getFolder(dfid("inbox")), { as: A, anchor });
      expect(res.status).toBe(400);
      expect(fault(res).code).toBe("ErrorInvalidRequest");
    }
    expect(sim.stats.ews.anchorMailboxRejected).toBe(before + 2);
    let res = await ok(getFolder(dfid("inbox")), { as: A, anchor: A.toUpperCase(), auth: "bearer" });
    expect(res.messages[0].Folders.Folder[0].FolderId["@Id"]).toBe(a.wellKnownFolders.inbox);
    sim.config.ewsRequireAnchorMailbox = false;
    res = await ok(getFolder(dfid("inbox")), { as: A, anchor: null });
    expectSuccess(res.messages[0]);
    res = await ok(getFolder(dfid("inbox") + dfid("drafts")), { as: "ghost@contoso.com" });
    expect(res.messages).toHaveLength(2);
    for (const m of res.messages) expectError(m, "ErrorNonExistentMailbox");
    // SmtpAddress and PrincipalName work too
    for (const tag of ["SmtpAddress", "PrincipalName"]) {
      const raw = envelope(getFolder(dfid("inbox"))).replace(
        "</soap:Header>",
        `<t:ExchangeImpersonation><t:ConnectingSID><t:${tag}>${B}</t:${tag}></t:ConnectingSID></t:ExchangeImpersonation></soap:Header>`,
      );
      res = await ok("", { raw });
      expect(res.messages[0].Folders.Folder[0].FolderId["@Id"]).toBe(b.wellKnownFolders.inbox);
    }
  });

  it("accepts the documentation's ExportItems request verbatim (https namespace URIs)", async () => {
    const raw = readFileSync(join(__dirname, "fixtures/ews/export-request.xml"), "utf8");
    const res = await ok("", { raw, anchor: A });
    expect(res.messages).toHaveLength(3);
    for (const m of res.messages) {
      expectError(m, "ErrorItemNotFound");
      expect(m.MessageText).toBe("The specified object was not found in the store.");
      expect(m.ItemId).toBeUndefined();
    }
  });
});

describe("GetFolder", () => {
  it("resolves distinguished and real ids in request order, with errors per message", async () => {
    const user = sim.addFolder(a.mailboxId, { displayName: "Projects & <Plans>" });
    const cal = sim.addFolder(a.mailboxId, { displayName: "Team Calendar", type: "IPF.Appointment" });
    sim.addItem(a.mailboxId, user.id, { size: 10 });
    const ids = dfid("inbox") + fid(user.id) + dfid("calendar") + dfid("root") + fid("AAMkNope=") + fid(cal.id) + dfid("Inbox") + dfid("msgfolderroot");
    const res = await ok(getFolder(ids), { as: A });
    const m = res.messages;
    expect(m).toHaveLength(8);
    expectSuccess(m[0]);
    const inbox = m[0].Folders.Folder[0];
    expect(inbox).toMatchObject({ FolderClass: "IPF.Note", DisplayName: "Inbox", TotalCount: "0", ChildFolderCount: "0", UnreadCount: "0" });
    expect(inbox.ParentFolderId["@Id"]).toBe(a.wellKnownFolders.msgfolderroot);
    expect(inbox.FolderId["@ChangeKey"]).toMatch(/^[A-Za-z0-9+/]+=*$/);
    const u = m[1].Folders.Folder[0];
    expect(u).toMatchObject({ DisplayName: "Projects & <Plans>", TotalCount: "1" });
    expect(res.text).toContain("Projects &amp; &lt;Plans&gt;");
    expectError(m[2], "ErrorFolderNotFound");
    expect(m[3].Folders.Folder[0].FolderId["@Id"]).toBe(a.wellKnownFolders.msgfolderroot);
    expectError(m[4], "ErrorFolderNotFound");
    expect(m[5].Folders.CalendarFolder[0]).toMatchObject({ FolderClass: "IPF.Appointment", DisplayName: "Team Calendar" });
    expectError(m[6], "ErrorFolderNotFound");
    expect(m[7].Folders.Folder[0].DisplayName).toBe("Top of Information Store");
  });

  it("IdOnly gives only FolderId (plus AdditionalProperties); delegate access by Mailbox, by id, or ErrorMissingEmailAddress", async () => {
    let res = await ok(getFolder(dfid("sentitems", A), "IdOnly"));
    expect(Object.keys(res.messages[0].Folders.Folder[0])).toEqual(["FolderId"]);
    res = await ok(
      `<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="folder:DisplayName"/></t:AdditionalProperties></m:FolderShape><m:FolderIds>${dfid("sentitems", A)}</m:FolderIds></m:GetFolder>`,
    );
    expect(Object.keys(res.messages[0].Folders.Folder[0])).toEqual(["FolderId", "DisplayName"]);
    // delegate: a FolderId resolves in whichever mailbox owns it; a distinguished id needs a Mailbox
    res = await ok(getFolder(fid(b.wellKnownFolders.drafts) + dfid("drafts") + dfid("drafts", "ghost@contoso.com")), { auth: "bearer" });
    expect(res.messages[0].Folders.Folder[0].DisplayName).toBe("Drafts");
    expectError(res.messages[1], "ErrorMissingEmailAddress");
    expectError(res.messages[2], "ErrorNonExistentMailbox");
    // impersonating A: B's folder ids are not found
    res = await ok(getFolder(fid(b.wellKnownFolders.drafts)), { as: A });
    expectError(res.messages[0], "ErrorFolderNotFound");
  });
});

describe("SyncFolderHierarchy", () => {
  it("full sync lists every folder parents first; incremental gives Create, Update and Delete; bad states fail", async () => {
    const m = sim.addMailbox({ upn: "hier@contoso.com" });
    const p = sim.addFolder(m.mailboxId, { displayName: "P" });
    const c = sim.addFolder(m.mailboxId, { parentFolderId: p.id, displayName: "C" });
    const gone = sim.addFolder(m.mailboxId, { displayName: "Gone" });
    sim.addFolder(m.mailboxId, { displayName: "Tasks", type: "IPF.Task" });
    let res = await ok(hierarchy(), { as: "hier@contoso.com" });
    let msg = res.messages[0];
    expectSuccess(msg);
    expect(msg.IncludesLastFolderInRange).toBe("true");
    const creates = (msg.Changes.Create as X[]).map(entity);
    expect(creates.map((e) => e.value.FolderId["@Id"])).toEqual(sim.listFolders(m.mailboxId).map((f) => f.id));
    expect(creates.find((e) => e.value.DisplayName === "Tasks")?.kind).toBe("TasksFolder");
    const cEntry = creates.find((e) => e.value.FolderId["@Id"] === c.id)?.value as X;
    expect(cEntry).toMatchObject({ FolderClass: "IPF.Note", DisplayName: "C", TotalCount: "0", ChildFolderCount: "0", UnreadCount: "0" });
    expect(cEntry.ParentFolderId["@Id"]).toBe(p.id);
    expect(msg.Changes.Update).toBeUndefined();
    const state1 = msg.SyncState as string;
    expect(state1).toMatch(/^[A-Za-z0-9+/]+=*$/);

    // nothing changed
    res = await ok(hierarchy(state1), { as: "hier@contoso.com" });
    expect(res.messages[0].Changes).toBe("");

    const n = sim.addFolder(m.mailboxId, { parentFolderId: c.id, displayName: "New" });
    sim.renameFolder(m.mailboxId, p.id, "P2");
    sim.moveFolder(m.mailboxId, c.id, m.wellKnownFolders.inbox);
    sim.deleteFolder(m.mailboxId, gone.id);
    res = await ok(hierarchy(state1), { as: "hier@contoso.com" });
    msg = res.messages[0];
    expect((msg.Changes.Create as X[]).map((x) => entity(x).value.FolderId["@Id"])).toEqual([n.id]);
    const updates = (msg.Changes.Update as X[]).map((x) => entity(x).value);
    expect(updates.map((u) => u.FolderId["@Id"]).sort()).toEqual([p.id, c.id].sort());
    expect(updates.find((u) => u.FolderId["@Id"] === c.id)?.ParentFolderId["@Id"]).toBe(m.wellKnownFolders.inbox);
    expect(updates.find((u) => u.FolderId["@Id"] === p.id)?.DisplayName).toBe("P2");
    expect((msg.Changes.Delete as X[]).map((d) => d.FolderId["@Id"])).toEqual([gone.id]);
    expect((msg.Changes.Delete as X[])[0].FolderId["@ChangeKey"]).toBeTruthy();
    const state2 = msg.SyncState as string;

    for (const bad of ["garbage", "H4sIAAAAAAAEAO29B2AcSZ", state2.slice(0, -4)]) {
      res = await ok(hierarchy(bad), { as: "hier@contoso.com" });
      expectError(res.messages[0], "ErrorInvalidSyncStateData");
    }
    // a state of another folder, or of another mailbox, is foreign
    res = await ok(hierarchy(state2, dfid("inbox")), { as: "hier@contoso.com" });
    expectError(res.messages[0], "ErrorInvalidSyncStateData");
    res = await ok(hierarchy(state2), { as: A });
    expectError(res.messages[0], "ErrorInvalidSyncStateData");
    sim.invalidateDeltaTokens(m.mailboxId);
    res = await ok(hierarchy(state2), { as: "hier@contoso.com" });
    expectError(res.messages[0], "ErrorInvalidSyncStateData");
    expect(res.messages[0].MessageText).toBe("Synchronization state data is corrupt or otherwise invalid.");
  });
});

describe("SyncFolderItems", () => {
  it("pages 1,200 items by MaxChangesReturned, then reports creates, updates, deletes and moves", async () => {
    const upn = "sync@contoso.com";
    const m = sim.addMailbox({ upn });
    const f = sim.addFolder(m.mailboxId, { displayName: "Big" });
    const other = sim.addFolder(m.mailboxId, { displayName: "Other" });
    const ids: string[] = [];
    for (let i = 0; i < 1200; i++) {
      const type = i === 5 ? "IPM.Appointment" : i === 6 ? "IPM.Schedule.Meeting.Request" : "IPM.Note";
      ids.push(sim.addItem(m.mailboxId, f.id, { size: 100 + i, type, createdDateTime: "2024-02-03T04:05:06Z" }).id);
    }
    const outsider = sim.addItem(m.mailboxId, other.id, { size: 7 }).id;

    const seen: X[] = [];
    const lasts: string[] = [];
    let state: string | undefined;
    for (;;) {
      const res = await ok(syncItems(fid(f.id), 512, state), { as: upn });
      const msg = res.messages[0];
      expectSuccess(msg);
      lasts.push(msg.IncludesLastItemInRange as string);
      seen.push(...((msg.Changes.Create ?? []) as X[]).map(entity));
      expect(msg.Changes.Update).toBeUndefined();
      state = msg.SyncState as string;
      if (msg.IncludesLastItemInRange === "true") break;
    }
    expect(lasts).toEqual(["false", "false", "true"]);
    expect(seen.map((e) => e.value.ItemId["@Id"])).toEqual(ids);
    expect(seen[0].kind).toBe("Message");
    expect(seen[5].kind).toBe("CalendarItem");
    expect(seen[6].kind).toBe("Item");
    expect(seen[10].value).toMatchObject({ ItemClass: "IPM.Note", Size: "110", DateTimeCreated: "2024-02-03T04:05:06Z" });
    expect(seen[10].value.ItemId["@ChangeKey"]).toBe(sim.getItem(m.mailboxId, ids[10])?.changeKey);
    const finalState = state as string;

    // nothing new
    let res = await ok(syncItems(fid(f.id), 512, finalState), { as: upn });
    expect(res.messages[0].Changes).toBe("");
    expect(res.messages[0].IncludesLastItemInRange).toBe("true");

    const added = sim.addItem(m.mailboxId, f.id, { size: 5 }).id;
    const changed = sim.modifyItem(m.mailboxId, ids[1]);
    sim.deleteItem(m.mailboxId, ids[2]);
    sim.moveItem(m.mailboxId, ids[3], other.id);
    sim.moveItem(m.mailboxId, outsider, f.id);
    res = await ok(syncItems(fid(f.id), 512, finalState), { as: upn });
    const msg = res.messages[0];
    expect((msg.Changes.Create as X[]).map((x) => entity(x).value.ItemId["@Id"]).sort()).toEqual([added, outsider].sort());
    const upd = (msg.Changes.Update as X[]).map((x) => entity(x).value);
    expect(upd.map((u) => u.ItemId["@Id"])).toEqual([ids[1]]);
    expect(upd[0].ItemId["@ChangeKey"]).toBe(changed.changeKey);
    const dels = msg.Changes.Delete as X[];
    expect(dels.map((d) => d.ItemId["@Id"]).sort()).toEqual([ids[2], ids[3]].sort());
    for (const d of dels) expect(d.ItemId["@ChangeKey"]).toBeTruthy();
    const st2 = msg.SyncState as string;

    // a mid-round state replays its page (paging with MaxChangesReturned 1)
    sim.addItem(m.mailboxId, other.id, { size: 8 });
    res = await ok(syncItems(fid(other.id), 1, undefined), { as: upn });
    expect(res.messages[0].IncludesLastItemInRange).toBe("false");
    const mid = res.messages[0].SyncState as string;
    const p1 = await ok(syncItems(fid(other.id), 1, mid), { as: upn });
    const p1again = await ok(syncItems(fid(other.id), 1, mid), { as: upn });
    expect(entity(p1.messages[0].Changes.Create[0]).value.ItemId["@Id"]).toBe(entity(p1again.messages[0].Changes.Create[0]).value.ItemId["@Id"]);

    // invalidated, foreign and garbled states
    res = await ok(syncItems(fid(other.id), 10, st2), { as: upn });
    expectError(res.messages[0], "ErrorInvalidSyncStateData");
    res = await ok(syncItems(fid(f.id), 10, "bm90IGEgc3RhdGU="), { as: upn });
    expectError(res.messages[0], "ErrorInvalidSyncStateData");
    sim.invalidateDeltaTokens(m.mailboxId);
    res = await ok(syncItems(fid(f.id), 10, st2), { as: upn });
    expectError(res.messages[0], "ErrorInvalidSyncStateData");
  });

  it("rejects a missing or out-of-range MaxChangesReturned and unknown folders; IdOnly without extras gives only ItemId", async () => {
    const f = sim.addFolder(a.mailboxId, { displayName: "SmallSync" });
    sim.addItem(a.mailboxId, f.id, { size: 3 });
    const before = sim.stats.ews.invalidMaxChanges;
    for (const max of [0, 513, null]) {
      const res = await ok(syncItems(fid(f.id), max), { as: A });
      expectError(res.messages[0], "ErrorInvalidRequest");
    }
    expect(sim.stats.ews.invalidMaxChanges).toBe(before + 3);
    let res = await ok(syncItems(fid("AAMkNope="), 10), { as: A });
    expectError(res.messages[0], "ErrorFolderNotFound");
    res = await ok(
      `<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:SyncFolderId>${fid(f.id)}</m:SyncFolderId><m:MaxChangesReturned>5</m:MaxChangesReturned></m:SyncFolderItems>`,
      { as: A },
    );
    expect(Object.keys(entity(res.messages[0].Changes.Create[0]).value)).toEqual(["ItemId"]);
    res = await ok(syncItems(dfid("inbox", A), 5, undefined, "Default"));
    expectSuccess(res.messages[0]);
  });
});

describe("ExportItems", () => {
  it("streams each item's exact bytes as base64 (76-character lines), in request order", async () => {
    const f = sim.addFolder(a.mailboxId, { displayName: "Export" });
    const sizes = [0, 1, 57, 1000, 300_000, 2_500_000];
    const items = sizes.map((size) => sim.addItem(a.mailboxId, f.id, { size }));
    const order = [...items].reverse();
    const res = await ok(exportItems(order.map((i) => i.id)), { as: A });
    expect(res.messages).toHaveLength(sizes.length);
    for (const [k, m] of res.messages.entries()) {
      expectSuccess(m);
      expect(m.ItemId["@Id"]).toBe(order[k].id);
      expect(m.ItemId["@ChangeKey"]).toBe(order[k].changeKey);
      const data = typeof m.Data === "string" ? m.Data : "";
      for (const line of data.split("\n")) expect(line.length).toBeLessThanOrEqual(76);
      const bytes = Buffer.from(data.replace(/\s+/g, ""), "base64");
      expect(bytes.length).toBe(order[k].size);
      expect(sha(bytes)).toBe(sim.itemSha256(a.mailboxId, order[k].id));
    }
    expect(await itemSha(a.mailboxId, items[4].id)).toBe(sim.itemSha256(a.mailboxId, items[4].id));
    sim.config.ewsWrapBase64 = false;
    const one = await ok(exportItems([items[4].id]), { as: A });
    expect(one.messages[0].Data).not.toContain("\n");
    expect(sha(Buffer.from(one.messages[0].Data as string, "base64"))).toBe(sim.itemSha256(a.mailboxId, items[4].id));
  });

  it("gives the seed's per-item errors without ItemId: invalid change key, another mailbox's item, unknown id", async () => {
    const good = sim.addItem(a.mailboxId, a.wellKnownFolders.inbox, { size: 20 });
    const ofB = sim.addItem(b.mailboxId, b.wellKnownFolders.inbox, { size: 20 });
    const before = sim.stats.ews.itemErrors;
    const res = await ok(exportItems([{ id: good.id, ck: good.changeKey }, { id: good.id, ck: "not base64!" }, ofB.id, "AAMkAGYzZjZmRiUsidkC+NAAAAY87NAAA="]), { as: A });
    const [m0, m1, m2, m3] = res.messages;
    expectSuccess(m0);
    expect(m0.ItemId["@Id"]).toBe(good.id);
    expectError(m1, "ErrorInvalidChangeKey");
    expect(m1.MessageText).toBe("The change key is invalid.");
    expectError(m2, "ErrorNonExistentMailbox");
    expect(m2.MessageText).toBe("No mailbox with such guid.");
    expect(m2.MessageXml.Value).toEqual([{ "@Name": "MailboxGuid", "#text": b.mailboxGuid }]);
    expectError(m3, "ErrorItemNotFound");
    expect(m3.MessageText).toBe("The specified object was not found in the store.");
    for (const m of [m1, m2, m3]) {
      expect(m.ItemId).toBeUndefined();
      expect(m.Data).toBeUndefined();
    }
    // the error element order of the seed: MessageText, ResponseCode, DescriptiveLinkKey, MessageXml
    expect(res.text).toMatch(
      /<m:ExportItemsResponseMessage ResponseClass="Error"><m:MessageText>No mailbox with such guid\.<\/m:MessageText><m:ResponseCode>ErrorNonExistentMailbox<\/m:ResponseCode><m:DescriptiveLinkKey>0<\/m:DescriptiveLinkKey><m:MessageXml><t:Value Name="MailboxGuid">[0-9a-f-]{36}<\/t:Value><\/m:MessageXml><\/m:ExportItemsResponseMessage>/,
    );
    expect(sim.stats.ews.itemErrors).toBe(before + 3);
  });

  it("rejects zero ids and more than ewsMaxExportItems with an ErrorInvalidRequest fault", async () => {
    const ids = Array.from({ length: 101 }, (_, i) => `id${i}`);
    let res = await call(exportItems(ids), { as: A });
    expect(res.status).toBe(500);
    expect(fault(res).code).toBe("ErrorInvalidRequest");
    res = await call(exportItems([]), { as: A });
    expect(res.status).toBe(500);
    expect(fault(res).code).toBe("ErrorInvalidRequest");
    res = await ok(exportItems(ids.slice(0, 100)), { as: A });
    expect(res.messages).toHaveLength(100);
  });
});

describe("concurrency", () => {
  it("answers ErrorServerBusy with BackOffMilliseconds above ewsMaxConcurrentPerMailbox and logs it", async () => {
    sim.config.latencyMs = 300;
    sim.config.ewsBackOffMs = 150;
    const throttled = sim.stats.ews.throttled;
    const logFrom = sim.stats.ews.log.length;
    const busyFrom = sim.stats.ews.serverBusy.length;
    const results = await Promise.all(Array.from({ length: 6 }, () => call(getFolder(dfid("inbox")), { as: A })));
    const busy = results.filter((r) => r.status === 500);
    expect(results.filter((r) => r.status === 200)).toHaveLength(4);
    expect(busy).toHaveLength(2);
    for (const r of busy) {
      expect(fault(r)).toEqual({
        code: "ErrorServerBusy",
        faultcode: "a:ErrorServerBusy",
        message: "The server cannot service this request right now. Try again later.",
        backOff: "150",
      });
      expect(r.text).toContain(`<faultcode xmlns:a="${NS_T}">a:ErrorServerBusy</faultcode><faultstring xml:lang="en-US">`);
      expect(r.text).toContain('<e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorServerBusy</e:ResponseCode>');
    }
    expect(sim.stats.ews.throttled).toBe(throttled + 2);
    expect(sim.stats.ews.peakInFlight[a.mailboxId]).toBe(4);
    const busyLog = sim.stats.ews.serverBusy.slice(busyFrom);
    expect(busyLog).toHaveLength(2);
    for (const e of busyLog) expect(e).toMatchObject({ mailboxId: a.mailboxId, operation: "GetFolder", backOffMs: 150, source: "concurrency" });
    expect(sim.stats.ews.log.slice(logFrom)).toHaveLength(4);

    // a client that honours the back-off: the log shows the retry came BackOffMilliseconds later
    sim.config.latencyMs = 0;
    const lastBusy = busyLog[busyLog.length - 1];
    await new Promise((r) => setTimeout(r, 150));
    await ok(getFolder(dfid("inbox")), { as: A });
    const retry = sim.stats.ews.log[sim.stats.ews.log.length - 1];
    expect(retry).toMatchObject({ mailboxId: a.mailboxId, operation: "GetFolder" });
    expect(retry.at - lastBusy.at).toBeGreaterThanOrEqual(lastBusy.backOffMs);
  });

  it("a streamed ExportItems body holds its slot until it ends", async () => {
    sim.config.ewsMaxConcurrentPerMailbox = 1;
    sim.config.bytesPerSecond = 3_000_000;
    const big = sim.addItem(a.mailboxId, a.wellKnownFolders.inbox, { size: 1_500_000 });
    const r = await send(exportItems([big.id]), { as: A });
    expect(r.status).toBe(200);
    expect(sim.ewsInFlight(a.mailboxId)).toBe(1);
    const busy = await call(getFolder(dfid("inbox")), { as: A });
    expect(fault(busy).code).toBe("ErrorServerBusy");
    // another mailbox is not affected
    await ok(getFolder(dfid("inbox")), { as: B });
    const text = await r.text();
    expect(text).toContain("</m:ExportItemsResponse>");
    await new Promise((res) => setTimeout(res, 20));
    expect(sim.ewsInFlight(a.mailboxId)).toBe(0);
    await ok(getFolder(dfid("inbox")), { as: A });
  });
});

describe("UploadItems", () => {
  it("CreateNew, Update and UpdateOrCreate put exact bytes in place, visible through Graph too", async () => {
    const f = sim.addFolder(a.mailboxId, { displayName: "Restore" });
    const d1 = Buffer.from("first version of a message");
    const d2 = Buffer.from("second version, longer than the first one");
    const d3 = Buffer.alloc(100_000, 7);
    const wrapped = (d: Buffer): string => `\n  ${d.toString("base64").replace(/(.{76})/g, "$1\n  ")}\n`;
    let res = await ok(upload([{ action: "CreateNew", parent: f.id, data: wrapped(d1) }]), { as: A });
    expectSuccess(res.messages[0]);
    const id = res.messages[0].ItemId["@Id"] as string;
    const ck1 = res.messages[0].ItemId["@ChangeKey"] as string;
    expect(sim.itemSha256(a.mailboxId, id)).toBe(sha(d1));
    expect(sim.getItem(a.mailboxId, id)).toMatchObject({ folderId: f.id, size: d1.length, changeKey: ck1 });

    res = await ok(upload([{ action: "Update", parent: f.id, id, ck: ck1, data: d2.toString("base64") }]), { as: A });
    expect(res.messages[0].ItemId["@Id"]).toBe(id);
    const ck2 = res.messages[0].ItemId["@ChangeKey"] as string;
    expect(ck2).not.toBe(ck1);
    expect(sim.itemSha256(a.mailboxId, id)).toBe(sha(d2));

    res = await ok(
      upload([
        { action: "UpdateOrCreate", parent: f.id, id, data: d3.toString("base64") },
        { action: "UpdateOrCreate", parent: f.id, id: "AAMkDoesNotExist=", data: d1.toString("base64") },
      ]),
      { as: A },
    );
    expect(res.messages[0].ItemId["@Id"]).toBe(id);
    const created = res.messages[1].ItemId["@Id"] as string;
    expect(created).not.toBe("AAMkDoesNotExist=");
    expect(sim.itemSha256(a.mailboxId, id)).toBe(sha(d3));
    expect(sim.itemSha256(a.mailboxId, created)).toBe(sha(d1));

    const log = sim.importedItems(a.mailboxId).filter((x) => x.folderId === f.id);
    expect(log.map((x) => [x.mode, x.via])).toEqual([
      ["create", "ews"],
      ["update", "ews"],
      ["update", "ews"],
      ["create", "ews"],
    ]);
    expect(log[0].sha256).toBe(sha(d1));

    // the same mailbox through Graph
    const g = await fetch(`${sim.mailboxUrl(a.mailboxId)}/folders/${encodeURIComponent(f.id)}/items`, { headers: { Authorization: `Bearer ${sim.token}` } });
    const body = (await g.json()) as { value: Array<{ id: string; size: number }> };
    expect(body.value.map((x) => x.id).sort()).toEqual([id, created].sort());
    // and ExportItems gives the uploaded bytes back
    res = await ok(exportItems([id]), { as: A });
    expect(sha(Buffer.from((res.messages[0].Data as string).replace(/\s+/g, ""), "base64"))).toBe(sha(d3));
  });

  it("reports per-item errors in request order", async () => {
    const f = sim.addFolder(a.mailboxId, { displayName: "UploadErrors" });
    const existing = sim.addItem(a.mailboxId, f.id, { size: 4 });
    const ofB = sim.addItem(b.mailboxId, b.wellKnownFolders.inbox, { size: 4 });
    const good = Buffer.from("ok").toString("base64");
    const res = await ok(
      upload([
        { action: "CreateNew", parent: f.id, id: existing.id, data: good },
        { action: "Update", parent: f.id, data: good },
        { action: "Update", parent: f.id, id: "AAMkMissing=", data: good },
        { action: "CreateNew", parent: f.id, data: "%%%not-base64%%%" },
        { action: "CreateNew", parent: f.id, data: "  " },
        { action: "CreateNew", parent: "AAMkNoFolder=", data: good },
        { action: "Update", parent: f.id, id: ofB.id, data: good },
        { action: "Replace", parent: f.id, data: good },
        { action: "CreateNew", parent: f.id, data: good },
      ]),
      { as: A },
    );
    const codes = res.messages.map((m) => m.ResponseCode);
    expect(codes).toEqual([
      "ErrorInvalidRequest",
      "ErrorInvalidRequest",
      "ErrorItemNotFound",
      "ErrorCorruptData",
      "ErrorInvalidRequest",
      "ErrorFolderNotFound",
      "ErrorItemNotFound",
      "ErrorInvalidRequest",
      "NoError",
    ]);
    expect(sim.listItems(a.mailboxId, f.id)).toHaveLength(2);
  });

  it("refuses bodies above ewsMaxRequestBodyBytes with 413", async () => {
    sim.config.ewsMaxRequestBodyBytes = 2000;
    const r = await send(upload([{ action: "CreateNew", parent: a.wellKnownFolders.inbox, data: Buffer.alloc(3000).toString("base64") }]), { as: A });
    expect(r.status).toBe(413);
    await r.text();
  });
});

describe("CreateFolder", () => {
  it("creates folders Graph sees too; same name is ErrorFolderExists; missing parent ErrorFolderNotFound", async () => {
    const op = (parent: string, folders: string): string =>
      `<m:CreateFolder><m:ParentFolderId>${parent}</m:ParentFolderId><m:Folders>${folders}</m:Folders></m:CreateFolder>`;
    let res = await ok(
      op(
        dfid("msgfolderroot", A),
        `<t:Folder><t:FolderClass>IPF.Note</t:FolderClass><t:DisplayName>Restored 2024</t:DisplayName></t:Folder><t:CalendarFolder><t:DisplayName>Restored Calendar</t:DisplayName></t:CalendarFolder><t:Folder><t:DisplayName>restored 2024</t:DisplayName></t:Folder>`,
      ),
    );
    expectSuccess(res.messages[0]);
    const id = res.messages[0].Folders.Folder[0].FolderId["@Id"] as string;
    expect(sim.getFolder(a.mailboxId, id)).toMatchObject({ displayName: "Restored 2024", type: "IPF.Note", parentFolderId: a.wellKnownFolders.msgfolderroot });
    const calId = res.messages[1].Folders.CalendarFolder[0].FolderId["@Id"] as string;
    expect(sim.getFolder(a.mailboxId, calId)?.type).toBe("IPF.Appointment");
    expectError(res.messages[2], "ErrorFolderExists");

    res = await ok(op(fid(id), `<t:Folder><t:DisplayName>Child</t:DisplayName></t:Folder>`), { as: A });
    const child = res.messages[0].Folders.Folder[0].FolderId["@Id"] as string;
    expect(sim.getFolder(a.mailboxId, child)?.parentFolderId).toBe(id);
    res = await ok(op(fid("AAMkNoParent="), `<t:Folder><t:DisplayName>X</t:DisplayName></t:Folder>`), { as: A });
    expectError(res.messages[0], "ErrorFolderNotFound");
    res = await ok(op(fid(id), `<t:Folder><t:DisplayName>Inbox</t:DisplayName></t:Folder><t:Folder><t:DisplayName> </t:DisplayName></t:Folder>`), { as: A });
    expectSuccess(res.messages[0]);
    expectError(res.messages[1], "ErrorInvalidRequest");

    const g = await fetch(`${sim.mailboxUrl(a.mailboxId)}/folders/${encodeURIComponent(id)}/childFolders`, { headers: { Authorization: `Bearer ${sim.token}` } });
    const body = (await g.json()) as { value: Array<{ displayName: string }> };
    expect(body.value.map((x) => x.displayName).sort()).toEqual(["Child", "Inbox"]);
  });
});

describe("faults", () => {
  it("status, soapFault, delayMs and containsItemId on EWS routes", async () => {
    const item = sim.addItem(a.mailboxId, a.wellKnownFolders.inbox, { size: 10 });
    sim.faults.add({ route: "ewsGetFolder", kind: "status", status: 503, retryAfterSeconds: 2 });
    let r = await send(getFolder(dfid("inbox")), { as: A });
    expect(r.status).toBe(503);
    expect(r.headers.get("retry-after")).toBe("2");
    expect(await r.text()).toBe("");

    sim.faults.add({ route: "ewsGetFolder", kind: "status", status: 500 });
    let res = await call(getFolder(dfid("inbox")), { as: A });
    expect(res.status).toBe(500);
    expect(fault(res).code).toBe("ErrorInternalServerError");

    sim.faults.add({ route: "ewsSyncFolderItems", kind: "soapFault", code: "ErrorServerBusy", backOffMs: 4321 });
    res = await call(syncItems(dfid("inbox"), 10), { as: A });
    expect(res.status).toBe(500);
    expect(fault(res)).toMatchObject({ code: "ErrorServerBusy", faultcode: "a:ErrorServerBusy", backOff: "4321" });
    expect(sim.stats.ews.serverBusy.at(-1)).toMatchObject({ backOffMs: 4321, source: "soapFault", operation: "SyncFolderItems", route: "ewsSyncFolderItems" });

    sim.faults.add({ route: "ewsCreateFolder", kind: "soapFault", code: "ErrorAccessDenied", message: "Access is denied.", httpStatus: 403 });
    res = await call(`<m:CreateFolder><m:ParentFolderId>${dfid("inbox")}</m:ParentFolderId><m:Folders><t:Folder><t:DisplayName>No</t:DisplayName></t:Folder></m:Folders></m:CreateFolder>`, { as: A });
    expect(res.status).toBe(403);
    expect(fault(res)).toMatchObject({ code: "ErrorAccessDenied", message: "Access is denied." });
    expect(fault(res).backOff).toBeUndefined();

    sim.faults.add({ route: "ewsExportItems", kind: "status", status: 502, containsItemId: "poison" });
    expect((await send(exportItems([item.id]), { as: A })).status).toBe(200);
    expect((await send(exportItems([item.id, "poison"]), { as: A })).status).toBe(502);

    sim.faults.add({ route: "ewsGetFolder", kind: "delayMs", ms: 200 });
    const t0 = Date.now();
    await ok(getFolder(dfid("inbox")), { as: A });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(190);
    expect(sim.faults.pending).toHaveLength(0);
  });

  it("resetMidBody and truncateJson cut the XML body of a 200", async () => {
    const item = sim.addItem(a.mailboxId, a.wellKnownFolders.inbox, { size: 50_000 });
    sim.faults.add({ route: "ewsExportItems", kind: "resetMidBody", afterBytes: 2000 });
    const r = await send(exportItems([item.id]), { as: A });
    expect(r.status).toBe(200);
    await expect(r.text()).rejects.toThrow();

    sim.faults.add({ route: "ewsSyncFolderHierarchy", kind: "truncateJson", afterBytes: 300 });
    const t = await send(hierarchy(), { as: A });
    expect(t.status).toBe(200);
    const text = await t.text();
    expect(text.length).toBe(300);
    expect(XMLValidator.validate(text)).not.toBe(true);
  });

  it("itemError (with backOffMs) replaces one item's message; invalidBase64 corrupts its Data", async () => {
    const i1 = sim.addItem(a.mailboxId, a.wellKnownFolders.inbox, { size: 300 });
    const i2 = sim.addItem(a.mailboxId, a.wellKnownFolders.inbox, { size: 300 });
    const i3 = sim.addItem(a.mailboxId, a.wellKnownFolders.inbox, { size: 300 });
    sim.faults.add(
      { route: "ewsExportItems", kind: "itemError", itemId: i2.id, code: "ErrorServerBusy", message: "The server cannot service this request right now. Try again later.", backOffMs: 777 },
      { route: "ewsExportItems", kind: "invalidBase64", itemId: i3.id },
    );
    const res = await ok(exportItems([i1.id, i2.id, i3.id]), { as: A });
    expectSuccess(res.messages[0]);
    expectError(res.messages[1], "ErrorServerBusy");
    expect(res.messages[1].ItemId).toBeUndefined();
    expect(res.messages[1].MessageXml.Value).toEqual([{ "@Name": "BackOffMilliseconds", "#text": "777" }]);
    expectSuccess(res.messages[2]);
    expect(res.messages[2].Data).toMatch(/[^A-Za-z0-9+/=\s]/);
    expect(sim.stats.ews.serverBusy.at(-1)).toMatchObject({ source: "itemError", backOffMs: 777, itemId: i2.id, operation: "ExportItems" });
    expect(sim.stats.requests.ewsExportItems).toBe(sim.stats.ews.requests.ExportItems);
    expect(sim.stats.ews.requests.ExportItems).toBeGreaterThan(0);
    expect(sim.stats.ews.errorCodes.ErrorServerBusy).toBeGreaterThan(0);
  });
});
