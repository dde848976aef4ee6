import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EwsClient } from "../shared/ews/ewsClient";
import { readEwsExportResponse } from "../shared/ews/exportItemsReader";
import { EwsSource, ewsAddress } from "../shared/ews/ewsSource";
import { soapEnvelope, soapFault } from "../shared/ews/soap";
import { parseXml, path } from "../shared/ews/xml";
import { exportBatch } from "../shared/export/exportBatch";
import type { ExportElement } from "../shared/export/exportResponse";
import { StaticTokenCredential } from "../shared/graph/graphClient";
import { LocalItemStore } from "../shared/store/localItemStore";
import { ExchangeSimulator } from "./simulator";
import { createServices } from "../shared/services";
import { sourceFor } from "../shared/source";

/**
 * The EWS ExportItems seed (../shared/seeds/ews-ExportItems-operation.txt): its request and its two
 * responses, copied verbatim into test/fixtures/ews/, read by the product's streaming reader and,
 * served over real HTTP, by the whole export path down to the store.
 */

const fixture = (name: string) => readFileSync(join(__dirname, "fixtures", "ews", name), "utf8");
const SUCCESS = fixture("export-response-success.xml");
const ERRORS = fixture("export-response-errors.xml");
const REQUEST = fixture("export-request.xml");

/** The seed's Data values as a strict reader of xs:base64Binary sees them (whitespace dropped). */
function seedData(xml: string): Buffer[] {
  return [...xml.matchAll(/<m:Data>([\s\S]*?)<\/m:Data>/g)].map((m) => Buffer.from(m[1].replace(/\s+/g, ""), "base64"));
}
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

function chunked(text: string, size: number): Readable {
  const buf = Buffer.from(text, "utf8");
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) parts.push(buf.subarray(i, i + size));
  return Readable.from(parts);
}

interface Outcome {
  kind: string;
  itemId: string;
  changeKey?: string;
  sha256?: string;
  bytes?: number;
  error?: { code: string; message: string };
  backOffMs?: number;
}

async function collect(elements: AsyncIterable<ExportElement>): Promise<Outcome[]> {
  const out: Outcome[] = [];
  for await (const el of elements) {
    if (el.kind === "data") {
      const parts: Buffer[] = [];
      for await (const c of el.data) parts.push(c);
      const b = Buffer.concat(parts);
      out.push({ kind: "data", itemId: el.itemId, changeKey: el.changeKey, sha256: sha(b), bytes: el.data.bytes });
    } else out.push({ kind: "error", itemId: el.itemId, error: el.error, ...(el.backOffMs !== undefined ? { backOffMs: el.backOffMs } : {}) });
  }
  return out;
}

const SUCCESS_IDS = ["AAMkAGYzZjZmRiUsidkC+NAAAAY89GAAA=", "AAMkAGYzZjZmRiUsidkC+NAAAAY89FAAA=", "AAMkAGYzZjZmRiUsidkC+NAAAAY87NAAA="];
// The error example exports three items; only the first one's id is printed (error messages carry none).
const ERROR_IDS = ["AAMkADhhOGU0oMf0GPIQeAAAAUC8iAABseAAAAUFZ7AAA=", "AAMkADhhOGU0oMf0GPIQeAAAAUC8iAABseAAAAUFZ8AAA=", "AAMkAGYzZjZmRiUsidkC+NAAAAY89HAAA="];

describe("EWS ExportItems responses from the seed, verbatim", () => {
  for (const size of [1 << 20, 64, 7]) {
    it(`three items exported (read in ${size}-byte pieces)`, async () => {
      const data = seedData(SUCCESS);
      const out = await collect(readEwsExportResponse(chunked(SUCCESS, size), SUCCESS_IDS));
      expect(out).toEqual([
        { kind: "data", itemId: SUCCESS_IDS[0], changeKey: "FwAAAA==", sha256: sha(data[0]), bytes: data[0].length },
        { kind: "data", itemId: SUCCESS_IDS[1], changeKey: "FwAAAA==", sha256: sha(data[1]), bytes: data[1].length },
        { kind: "data", itemId: SUCCESS_IDS[2], changeKey: "CQAAAA==", sha256: sha(data[2]), bytes: data[2].length },
      ]);
      // The first item's stream starts like every FastTransfer export (research/graph-api.md §9).
      expect(data[0].subarray(0, 8).toString("hex")).toBe("0100000008000000");
    });

    it(`mixed success and errors: one item, ErrorInvalidChangeKey, ErrorNonExistentMailbox with its MailboxGuid (${size}-byte pieces)`, async () => {
      const data = seedData(ERRORS);
      const out = await collect(readEwsExportResponse(chunked(ERRORS, size), ERROR_IDS));
      expect(out).toEqual([
        { kind: "data", itemId: ERROR_IDS[0], changeKey: "CQAAAA==", sha256: sha(data[0]), bytes: data[0].length },
        { kind: "error", itemId: ERROR_IDS[1], error: { code: "ErrorInvalidChangeKey", message: "The change key is invalid." } },
        { kind: "error", itemId: ERROR_IDS[2], error: { code: "ErrorNonExistentMailbox", message: "No mailbox with such guid. (MailboxGuid f3f6f699-2254-40ce-9994-388d9d98419e)" } },
      ]);
    });
  }

  it("builds the seed's request: same operation, version header and ids in order", () => {
    const ours = parseXml(soapEnvelope({ serverVersion: "Exchange2010_SP1" }, { "m:ExportItems": { "m:ItemIds": { "t:ItemId": SUCCESS_IDS.map((id) => ({ "@_Id": id })) } } }));
    const seed = parseXml(REQUEST);
    for (const env of [ours, seed]) {
      expect(path(env, "Header", "RequestServerVersion")?.attrs.Version).toBe("Exchange2010_SP1");
      expect(path(env, "Body", "ExportItems", "ItemIds")?.children.map((c) => [c.name, c.attrs.Id])).toEqual(SUCCESS_IDS.map((id) => ["ItemId", id]));
    }
  });

  it("Data written with a character reference or a CDATA section decodes to the same bytes (any piece size)", async () => {
    const data = seedData(SUCCESS);
    const odd = SUCCESS.replace("AQAAAAgAAAAAAAAALgBlAHgAdABlAHMAdAAuAG0AaQBjAHIAbwBzAG8AZgB0AC4A", "AQAAAAgA&#65;AAAAAAALgBlAHgAdABl<![CDATA[AHMAdAAuAG0AaQBjAHIAbwBzAG8A]]>ZgB0AC4A");
    expect(odd).not.toBe(SUCCESS);
    for (const size of [1 << 20, 13, 5]) {
      const out = await collect(readEwsExportResponse(chunked(odd, size), SUCCESS_IDS));
      expect(out.map((o) => o.sha256)).toEqual(data.map(sha));
    }
  });

  it("a per-item ErrorServerBusy carries its BackOffMilliseconds", async () => {
    const xml = ERRORS.replace("<m:ResponseCode>ErrorInvalidChangeKey</m:ResponseCode>", "<m:ResponseCode>ErrorServerBusy</m:ResponseCode><m:MessageXml><t:Value Name=\"BackOffMilliseconds\">1500</t:Value></m:MessageXml>");
    const out = await collect(readEwsExportResponse(chunked(xml, 100), ERROR_IDS));
    expect(out[1]).toMatchObject({ kind: "error", itemId: ERROR_IDS[1], error: { code: "ErrorServerBusy" }, backOffMs: 1500 });
  });

  it("a response that breaks off, bad XML, bad base64 or a DTD is a typed error, never data", async () => {
    await expect(collect(readEwsExportResponse(chunked(SUCCESS.slice(0, SUCCESS.indexOf("</m:Data>") - 30), 50), SUCCESS_IDS))).rejects.toMatchObject({ code: "TruncatedResponse" });
    await expect(collect(readEwsExportResponse(chunked(SUCCESS.replace("</m:ResponseCode>", "</m:ResponseCod>"), 50), SUCCESS_IDS))).rejects.toMatchObject({ code: "MalformedXml" });
    await expect(collect(readEwsExportResponse(chunked(SUCCESS.replace("AQAAAAgAAAAAAAAALgBl", "AQAAAAgAAAAAAAAALg*l"), 50), SUCCESS_IDS))).rejects.toMatchObject({ code: "InvalidBase64" });
    await expect(collect(readEwsExportResponse(chunked(`<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]>${SUCCESS.slice(SUCCESS.indexOf("<s:Envelope"))}`, 50), SUCCESS_IDS))).rejects.toMatchObject({ code: "MalformedXml" });
    await expect(collect(readEwsExportResponse(chunked("not xml at all", 50), SUCCESS_IDS))).rejects.toMatchObject({ code: expect.stringMatching(/MalformedXml|TruncatedResponse/) });
  });

  it("a 40 MB item streams through in pieces (no whole-item string)", async () => {
    const item = Buffer.alloc(40 * 1024 * 1024);
    for (let i = 0; i < item.length; i += 4096) item.writeUInt32LE(i, i);
    async function* body() {
      yield Buffer.from(SUCCESS.slice(0, SUCCESS.indexOf("<m:Data>") + 8));
      const b64 = item.toString("base64");
      for (let i = 0; i < b64.length; i += 76 * 800) yield Buffer.from(b64.slice(i, i + 76 * 800).replace(/(.{76})/g, "$1\n"));
      yield Buffer.from(`</m:Data></m:ExportItemsResponseMessage></m:ResponseMessages></m:ExportItemsResponse></s:Body></s:Envelope>`);
    }
    let pieces = 0;
    let largest = 0;
    const h = createHash("sha256");
    for await (const el of readEwsExportResponse(Readable.from(body()), [SUCCESS_IDS[0]])) {
      if (el.kind !== "data") throw new Error("expected data");
      for await (const c of el.data) {
        pieces++;
        largest = Math.max(largest, c.length);
        h.update(c);
      }
    }
    expect(h.digest("hex")).toBe(sha(item));
    expect(pieces).toBeGreaterThan(50);
    expect(largest).toBeLessThan(2 * 1024 * 1024);
  });

  it("parses the EWS throttling fault", () => {
    const fault = soapFault(
      parseXml(
        `<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:ErrorServerBusy</faultcode><faultstring xml:lang="en-US">The server cannot service this request right now. Try again later.</faultstring><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorServerBusy</e:ResponseCode><e:Message xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">The server cannot service this request right now. Try again later.</e:Message><t:MessageXml xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><t:Value Name="BackOffMilliseconds">297749</t:Value></t:MessageXml></detail></s:Fault></s:Body></s:Envelope>`,
      ),
    );
    expect(fault).toEqual({ code: "ErrorServerBusy", message: "The server cannot service this request right now. Try again later.", backOffMs: 297749 });
  });

  it("mailbox addresses", () => {
    expect(ewsAddress("ews:Alice@Contoso.com")).toBe("alice@contoso.com");
    expect(ewsAddress("EWS:bob@contoso.local")).toBe("bob@contoso.local");
    expect(ewsAddress("ews:o'brien&co@contoso.com")).toBe("o'brien&co@contoso.com");
    for (const bad of ["ews:", "ews:alice", "ews:a b@c.d", "ews:<x>@y.z", "ews:a@b/c", 'ews:"q"@c.d']) expect(() => ewsAddress(bad)).toThrow(/SMTP address/);
  });
});

/** A one-route server that answers with scripted responses and records what it was sent. */
class Scripted {
  server!: Server;
  url = "";
  readonly requests: Array<{ at: number; body: string; headers: IncomingMessage["headers"] }> = [];
  constructor(private readonly answer: (n: number, req: { body: string }, res: ServerResponse) => void) {}
  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8");
        this.requests.push({ at: Date.now(), body, headers: req.headers });
        this.answer(this.requests.length, { body }, res);
      });
    });
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/EWS/Exchange.asmx`;
  }
  async stop(): Promise<void> {
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

const BUSY = (ms: number) =>
  `<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:ErrorServerBusy</faultcode><faultstring xml:lang="en-US">The server cannot service this request right now. Try again later.</faultstring><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorServerBusy</e:ResponseCode><e:Message xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">The server cannot service this request right now. Try again later.</e:Message><t:MessageXml xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><t:Value Name="BackOffMilliseconds">${ms}</t:Value></t:MessageXml></detail></s:Fault></s:Body></s:Envelope>`;

describe("the seed's responses over HTTP, through exportBatch into a store", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "mailvault-ews-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("mixed response: the good item stored and verified, the two errors recorded with their codes, no retry of permanent errors", async () => {
    const server = new Scripted((_n, _req, res) => {
      res.writeHead(200, { "Content-Type": "text/xml; charset=utf-8" });
      res.end(ERRORS);
    });
    await server.start();
    try {
      const source = new EwsSource(new EwsClient({ url: server.url, auth: { kind: "basic", username: "svc", password: "pw-not-logged" }, baseRetryDelayMs: 5 }), 50);
      const store = new LocalItemStore(join(dir, "mixed"));
      const out = await exportBatch({ mailbox: source, store }, { mailboxId: "EWS:alice@contoso.com", items: ERROR_IDS.map((itemId) => ({ itemId, folderId: "f1" })) }, { retryDelayMs: 5 });
      const data = seedData(ERRORS);
      expect(out[0]).toMatchObject({ status: "exported", itemId: ERROR_IDS[0], changeKey: "CQAAAA==", size: data[0].length, sha256: sha(data[0]) });
      expect(out[1]).toMatchObject({ status: "failed", itemId: ERROR_IDS[1], error: { code: "ErrorInvalidChangeKey" }, retryable: false, scope: "item" });
      expect(out[2]).toMatchObject({ status: "failed", itemId: ERROR_IDS[2], error: { code: "ErrorNonExistentMailbox" }, retryable: false });
      expect(server.requests).toHaveLength(1);
      const sent = parseXml(server.requests[0].body);
      expect(path(sent, "Header", "ExchangeImpersonation", "ConnectingSID", "PrimarySmtpAddress")?.text).toBe("alice@contoso.com");
      expect(server.requests[0].headers["x-anchormailbox"]).toBe("alice@contoso.com");
      expect(server.requests[0].headers.authorization).toBe(`Basic ${Buffer.from("svc:pw-not-logged").toString("base64")}`);
      const parts: Buffer[] = [];
      for await (const c of await store.openObject(out[0].status === "exported" ? out[0].path : "")) parts.push(Buffer.from(c));
      const stored = Buffer.concat(parts);
      expect(sha(stored)).toBe(sha(data[0]));
    } finally {
      await server.stop();
    }
  });

  it("ErrorServerBusy: the fault's BackOffMilliseconds is waited before the next call, then the three items are stored", async () => {
    const server = new Scripted((n, _req, res) => {
      if (n === 1) {
        res.writeHead(500, { "Content-Type": "text/xml; charset=utf-8" });
        res.end(BUSY(400));
        return;
      }
      res.writeHead(200, { "Content-Type": "text/xml; charset=utf-8" });
      res.end(SUCCESS);
    });
    await server.start();
    try {
      const source = new EwsSource(new EwsClient({ url: server.url, auth: { kind: "oauth", credential: new StaticTokenCredential("tok"), scope: "x/.default" }, baseRetryDelayMs: 5 }), 50);
      const out = await exportBatch({ mailbox: source, store: new LocalItemStore(join(dir, "busy")) }, { mailboxId: "EWS:alice@contoso.com", items: SUCCESS_IDS.map((itemId) => ({ itemId, folderId: "f1" })) }, { retryDelayMs: 5 });
      expect(out.map((o) => o.status)).toEqual(["exported", "exported", "exported"]);
      expect(server.requests).toHaveLength(2);
      expect(server.requests[1].at - server.requests[0].at).toBeGreaterThanOrEqual(400);
      expect(server.requests[0].headers.authorization).toBe("Bearer tok");
    } finally {
      await server.stop();
    }
  });

  it("a per-item ErrorServerBusy: that item is asked for again after its BackOffMilliseconds, alone", async () => {
    const busyItem = ERRORS.replace(
      /<m:ExportItemsResponseMessage ResponseClass="Error">\s*<m:MessageText>The change key is invalid.<\/m:MessageText>\s*<m:ResponseCode>ErrorInvalidChangeKey<\/m:ResponseCode>/,
      `<m:ExportItemsResponseMessage ResponseClass="Error"><m:MessageText>busy</m:MessageText><m:ResponseCode>ErrorServerBusy</m:ResponseCode><m:MessageXml><t:Value Name="BackOffMilliseconds">300</t:Value></m:MessageXml>`,
    );
    expect(busyItem).not.toBe(ERRORS);
    const second = SUCCESS.replace(/<m:ResponseMessages>[\s\S]*<\/m:ResponseMessages>/, (all) => {
      const first = all.match(/<m:ExportItemsResponseMessage[\s\S]*?<\/m:ExportItemsResponseMessage>/)?.[0] ?? "";
      return `<m:ResponseMessages>${first.replace(SUCCESS_IDS[0], ERROR_IDS[1])}</m:ResponseMessages>`;
    });
    const server = new Scripted((n, _req, res) => {
      res.writeHead(200, { "Content-Type": "text/xml; charset=utf-8" });
      res.end(n === 1 ? busyItem : second);
    });
    await server.start();
    try {
      const source = new EwsSource(new EwsClient({ url: server.url, auth: { kind: "basic", username: "svc", password: "pw" } }), 50);
      const out = await exportBatch({ mailbox: source, store: new LocalItemStore(join(dir, "busy-item")) }, { mailboxId: "EWS:alice@contoso.com", items: ERROR_IDS.map((itemId) => ({ itemId, folderId: "f1" })) }, { retryDelayMs: 5 });
      expect(out.map((o) => [o.status, o.status === "failed" ? o.error.code : ""])).toEqual([["exported", ""], ["exported", ""], ["failed", "ErrorNonExistentMailbox"]]);
      expect(server.requests).toHaveLength(2);
      expect(path(parseXml(server.requests[1].body), "Body", "ExportItems", "ItemIds")?.children.map((c) => c.attrs.Id)).toEqual([ERROR_IDS[1]]);
      expect(server.requests[1].at - server.requests[0].at).toBeGreaterThanOrEqual(300);
    } finally {
      await server.stop();
    }
  });
});

const FAULT = (code: string) =>
  `<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:${code}</faultcode><faultstring>no</faultstring><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">${code}</e:ResponseCode><e:Message xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">The impersonation principal name is invalid.</e:Message></detail></s:Fault></s:Body></s:Envelope>`;

describe("EwsClient and EwsSource against scripted servers", () => {
  it("the headers timeout does not cut a response body that takes longer to arrive", async () => {
    const server = new Scripted((_n, _req, res) => {
      res.writeHead(200, { "Content-Type": "text/xml; charset=utf-8" });
      const text = Buffer.from(SUCCESS);
      let i = 0;
      const t = setInterval(() => {
        res.write(text.subarray(i, i + 400));
        i += 400;
        if (i >= text.length) {
          clearInterval(t);
          res.end();
        }
      }, 40);
    });
    await server.start();
    try {
      const source = new EwsSource(new EwsClient({ url: server.url, auth: { kind: "basic", username: "svc", password: "pw" }, headersTimeoutMs: 150, maxRetries: 0 }), 50);
      const seen: Outcome[] = [];
      await source.exportItems("EWS:alice@contoso.com", SUCCESS_IDS, async (els) => void seen.push(...(await collect(els))));
      expect(seen.map((o) => o.kind)).toEqual(["data", "data", "data"]);
      expect(server.requests).toHaveLength(1);
    } finally {
      await server.stop();
    }
  });

  it("an unknown or forbidden mailbox answered with a SOAP fault resolves to MailboxNotFound", async () => {
    for (const code of ["ErrorNonExistentMailbox", "ErrorImpersonateUserDenied"]) {
      const server = new Scripted((_n, _req, res) => {
        res.writeHead(500, { "Content-Type": "text/xml; charset=utf-8" });
        res.end(FAULT(code));
      });
      await server.start();
      try {
        const source = new EwsSource(new EwsClient({ url: server.url, auth: { kind: "basic", username: "svc", password: "pw" }, baseRetryDelayMs: 1 }), 50);
        await expect(source.resolveMailbox("ews:nobody@contoso.local")).rejects.toMatchObject({ code: "MailboxNotFound", status: 404 });
        // ResolveNames (refused: the address is kept) and GetFolder; a permanent answer is not retried.
        expect(server.requests).toHaveLength(2);
      } finally {
        await server.stop();
      }
    }
  });

  it("folders come parents first even when the server lists a child before its parent", async () => {
    const folder = (id: string, parent: string, name: string) =>
      `<t:Create><t:Folder><t:FolderId Id="${id}" ChangeKey="AQ=="/><t:ParentFolderId Id="${parent}" ChangeKey="AQ=="/><t:FolderClass>IPF.Note</t:FolderClass><t:DisplayName>${name}</t:DisplayName><t:TotalCount>0</t:TotalCount><t:ChildFolderCount>0</t:ChildFolderCount></t:Folder></t:Create>`;
    const server = new Scripted((_n, req, res) => {
      res.writeHead(200, { "Content-Type": "text/xml; charset=utf-8" });
      const env = (body: string) => `<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="m" xmlns:t="t"><s:Body>${body}</s:Body></s:Envelope>`;
      if (req.body.includes("SyncFolderHierarchy>")) {
        res.end(env(`<m:SyncFolderHierarchyResponse><m:ResponseMessages><m:SyncFolderHierarchyResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:SyncState>s1</m:SyncState><m:IncludesLastFolderInRange>true</m:IncludesLastFolderInRange><m:Changes>${folder("C", "B", "Child &#233;t&#233;")}${folder("B", "ROOT", "Parent")}${folder("A", "ROOT", "Other")}</m:Changes></m:SyncFolderHierarchyResponseMessage></m:ResponseMessages></m:SyncFolderHierarchyResponse>`));
      } else {
        res.end(env(`<m:GetFolderResponse><m:ResponseMessages><m:GetFolderResponseMessage ResponseClass="Error"><m:MessageText>x</m:MessageText><m:ResponseCode>ErrorFolderNotFound</m:ResponseCode></m:GetFolderResponseMessage></m:ResponseMessages></m:GetFolderResponse>`));
      }
    });
    await server.start();
    try {
      const source = new EwsSource(new EwsClient({ url: server.url, auth: { kind: "basic", username: "svc", password: "pw" } }), 50);
      const got: Array<[string, string]> = [];
      for await (const f of source.walkFolders("EWS:alice@contoso.com")) got.push([f.id, f.displayName]);
      expect(got).toEqual([["B", "Parent"], ["A", "Other"], ["C", "Child été"]]);
    } finally {
      await server.stop();
    }
  });

  it("an empty <m:Data/> is recorded as a failure and leaves no object", async () => {
    const empty = SUCCESS.replace(/<m:Data>[\s\S]*?<\/m:Data>/, "<m:Data></m:Data>");
    const server = new Scripted((_n, _req, res) => {
      res.writeHead(200, { "Content-Type": "text/xml; charset=utf-8" });
      res.end(empty);
    });
    await server.start();
    const dir = await mkdtemp(join(tmpdir(), "mailvault-ews-empty-"));
    try {
      const store = new LocalItemStore(dir);
      const source = new EwsSource(new EwsClient({ url: server.url, auth: { kind: "basic", username: "svc", password: "pw" } }), 50);
      const out = await exportBatch({ mailbox: source, store }, { mailboxId: "EWS:alice@contoso.com", items: SUCCESS_IDS.map((itemId) => ({ itemId, folderId: "f" })) }, { retryDelayMs: 1, maxAttempts: 2 });
      expect(out.map((o) => (o.status === "failed" ? o.error.code : o.status))).toEqual(["EmptyData", "exported", "exported"]);
      const objects: string[] = [];
      for await (const p of store.listObjects("")) objects.push(p);
      expect(objects).toHaveLength(2);
    } finally {
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("a transient error inside a SyncFolderItems answer is asked again after its BackOffMilliseconds", async () => {
    const env = (msg: string) => `<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="m" xmlns:t="t"><s:Body><m:SyncFolderItemsResponse><m:ResponseMessages>${msg}</m:ResponseMessages></m:SyncFolderItemsResponse></s:Body></s:Envelope>`;
    const server = new Scripted((n, _req, res) => {
      res.writeHead(200, { "Content-Type": "text/xml; charset=utf-8" });
      res.end(
        n === 1
          ? env(`<m:SyncFolderItemsResponseMessage ResponseClass="Error"><m:MessageText>busy</m:MessageText><m:ResponseCode>ErrorServerBusy</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:MessageXml><t:Value Name="BackOffMilliseconds">250</t:Value></m:MessageXml></m:SyncFolderItemsResponseMessage>`)
          : env(`<m:SyncFolderItemsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:SyncState>S2</m:SyncState><m:IncludesLastItemInRange>true</m:IncludesLastItemInRange><m:Changes><t:Create><t:Message><t:ItemId Id="I1" ChangeKey="C1"/><t:ItemClass>IPM.Note</t:ItemClass><t:Size>42</t:Size></t:Message></t:Create><t:ReadFlagChange><t:ItemId Id="I2" ChangeKey="C2"/><t:IsRead>true</t:IsRead></t:ReadFlagChange><t:Delete><t:ItemId Id="I3" ChangeKey="C3"/></t:Delete></m:Changes></m:SyncFolderItemsResponseMessage>`),
      );
    });
    await server.start();
    try {
      const source = new EwsSource(new EwsClient({ url: server.url, auth: { kind: "basic", username: "svc", password: "pw" } }), 50, { retryDelayMs: 5 });
      const page = await source.itemsDeltaPage("EWS:alice@contoso.com", "F1", "S1");
      expect(page).toEqual({ items: [{ id: "I1", changeKey: "C1", size: 42, type: "IPM.Note", createdDateTime: undefined }, { id: "I2", changeKey: "C2", size: undefined, type: undefined, createdDateTime: undefined }], removed: ["I3"], deltaLink: "S2" });
      expect(server.requests).toHaveLength(2);
      expect(server.requests[1].at - server.requests[0].at).toBeGreaterThanOrEqual(250);
      // The request carried the stored state, at most 512 changes, the folder.
      const sent = parseXml(server.requests[0].body);
      expect(path(sent, "Body", "SyncFolderItems", "SyncState")?.text).toBe("S1");
      expect(path(sent, "Body", "SyncFolderItems", "MaxChangesReturned")?.text).toBe("512");
      expect(path(sent, "Body", "SyncFolderItems", "SyncFolderId", "FolderId")?.attrs.Id).toBe("F1");
    } finally {
      await server.stop();
    }
  });

  it("calls in flight are bounded for the service account across mailboxes, not only per mailbox", async () => {
    let inFlight = 0;
    let peak = 0;
    const server = new Scripted((_n, _req, res) => {
      inFlight++;
      peak = Math.max(peak, inFlight);
      setTimeout(() => {
        inFlight--;
        res.writeHead(200, { "Content-Type": "text/xml; charset=utf-8" });
        res.end(`<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:GetFolderResponse xmlns:m="m"><m:ResponseMessages><m:GetFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Folders><t:Folder xmlns:t="t"><t:FolderId Id="R"/></t:Folder></m:Folders></m:GetFolderResponseMessage></m:ResponseMessages></m:GetFolderResponse></s:Body></s:Envelope>`);
      }, 60);
    });
    await server.start();
    try {
      const source = new EwsSource(new EwsClient({ url: server.url, auth: { kind: "basic", username: "svc", password: "pw" }, maxRequests: 3, maxRequestsPerMailbox: 4 }), 50);
      await Promise.all(Array.from({ length: 12 }, (_, i) => source.resolveMailbox(`ews:user${i % 4}@contoso.local`)));
      expect(server.requests).toHaveLength(24); // ResolveNames and GetFolder per mailbox
      expect(peak).toBe(3);
    } finally {
      await server.stop();
    }
  });
});

describe("EWS settings and inputs are checked before anything is sent", () => {
  const base = { GRAPH_ACCESS_TOKEN: "t", MAILVAULT_STORE: "./x" };
  const make = (env: Record<string, string>) => createServices({ ...base, ...env }, { store: new LocalItemStore(join(tmpdir(), "mailvault-never-written")) });

  it("bad settings are clear errors", () => {
    expect(make({}).sources.ews).toBeUndefined();
    expect(make({ MAILVAULT_EWS_URL: "https://mail.contoso.local/EWS/Exchange.asmx", EWS_ACCESS_TOKEN: "tok" }).sources.ews?.kind).toBe("ews");
    const bad: Array<[Record<string, string>, RegExp]> = [
      [{ MAILVAULT_EWS_URL: "not a url" }, /MAILVAULT_EWS_URL is not a URL/],
      [{ MAILVAULT_EWS_URL: "http://mail.contoso.local/EWS/Exchange.asmx" }, /must be https/],
      [{ MAILVAULT_EWS_URL: "https://u:p@mail.contoso.local/EWS/Exchange.asmx" }, /must not carry credentials/],
      [{ MAILVAULT_EWS_URL: "https://mail.contoso.local/EWS/Exchange.asmx", MAILVAULT_EWS_AUTH: "kerberos" }, /must be oauth, ntlm or basic, got "kerberos" \(Kerberos is not supported: use ntlm/],
      [{ MAILVAULT_EWS_URL: "https://mail.contoso.local/EWS/Exchange.asmx", MAILVAULT_EWS_AUTH: "ntlm" }, /MAILVAULT_EWS_AUTH=ntlm needs MAILVAULT_EWS_USERNAME and MAILVAULT_EWS_PASSWORD/],
      [{ MAILVAULT_EWS_URL: "https://mail.contoso.local/EWS/Exchange.asmx", MAILVAULT_EWS_AUTH: "basic", MAILVAULT_EWS_USERNAME: "svc" }, /needs MAILVAULT_EWS_USERNAME and MAILVAULT_EWS_PASSWORD/],
      [{ MAILVAULT_EWS_URL: "https://mail.contoso.local/EWS/Exchange.asmx", EWS_ACCESS_TOKEN: "t", MAILVAULT_EWS_BATCH_ITEMS: "101" }, /MAILVAULT_EWS_BATCH_ITEMS must be a whole number from 1 to 100/],
      [{ MAILVAULT_EWS_URL: "https://mail.contoso.local/EWS/Exchange.asmx", EWS_ACCESS_TOKEN: "t", MAILVAULT_EWS_SERVER_VERSION: "Exchange2007_SP1" }, /Exchange2010_SP1 or later/],
      [{ MAILVAULT_EWS_URL: "https://mail.contoso.local/EWS/Exchange.asmx", EWS_ACCESS_TOKEN: "t", MAILVAULT_EWS_IMPERSONATION: "maybe" }, /must be true or false/],
      [{ MAILVAULT_EWS_URL: "https://mail.contoso.local/EWS/Exchange.asmx", EWS_ACCESS_TOKEN: "t", MAILVAULT_EWS_MAX_REQUESTS: "0" }, /MAILVAULT_EWS_MAX_REQUESTS must be a whole number/],
    ];
    for (const [env, why] of bad) expect(() => make(env), JSON.stringify(env)).toThrow(why);
    // An ews: mailbox without EWS configured is refused by name.
    expect(() => sourceFor(make({}).sources, "EWS:a@b.c")).toThrow(/MAILVAULT_EWS_URL is not set/);
  });

  it("export batches: more ids than configured, empty, malformed or duplicate ids are refused without a call", async () => {
    const server = new Scripted((_n, _req, res) => res.end());
    await server.start();
    try {
      const source = new EwsSource(new EwsClient({ url: server.url, auth: { kind: "basic", username: "svc", password: "pw" } }), 5);
      const store = new LocalItemStore(join(tmpdir(), "mailvault-never-written"));
      const items = (n: number) => Array.from({ length: n }, (_, i) => ({ itemId: `id-${i}`, folderId: "f" }));
      const run = (list: Array<{ itemId: unknown; folderId: string }>) => exportBatch({ mailbox: source, store }, { mailboxId: "EWS:a@contoso.local", items: list as Array<{ itemId: string; folderId: string }> });
      await expect(run(items(6))).rejects.toMatchObject({ code: "TooManyItemIds" });
      await expect(run([])).rejects.toMatchObject({ code: "InvalidItemIds" });
      await expect(run([{ itemId: "", folderId: "f" }])).rejects.toMatchObject({ code: "InvalidItemIds" });
      await expect(run([{ itemId: 42, folderId: "f" }])).rejects.toMatchObject({ code: "InvalidItemIds" });
      await expect(run([{ itemId: "a\u0000b", folderId: "f" }])).rejects.toMatchObject({ code: "InvalidItemIds" });
      await expect(run([{ itemId: "x", folderId: "f" }, { itemId: "x", folderId: "f" }])).rejects.toThrow(/duplicate/);
      expect(server.requests).toHaveLength(0);
    } finally {
      await server.stop();
    }
  });
});

describe("ExportItems reader: every split of the response into two pieces", () => {
  it("reads the same items wherever the body is cut (raw Data text never swallows a close tag)", async () => {
    const data = seedData(SUCCESS).map(sha);
    const buf = Buffer.from(SUCCESS);
    for (let cut = 1; cut < buf.length; cut++) {
      const out = await collect(readEwsExportResponse(Readable.from([buf.subarray(0, cut), buf.subarray(cut)]), SUCCESS_IDS));
      expect(out.map((o) => o.sha256), `cut at ${cut}`).toEqual(data);
    }
  });
});

describe("NTLM transport against the simulator", () => {
  it("a server that does not offer NTLM is a clear error at once, not a network retry loop", async () => {
    const server = new Scripted((_n, _req, res) => {
      res.writeHead(401, { "WWW-Authenticate": "Negotiate" });
      res.end();
    });
    await server.start();
    try {
      const client = new EwsClient({ url: server.url, auth: { kind: "ntlm", username: "contoso\\svc", password: "pw" }, baseRetryDelayMs: 1 });
      await expect(new EwsSource(client, 50).resolveMailbox("ews:a@contoso.local")).rejects.toMatchObject({ code: "NtlmNotOffered" });
      expect(server.requests).toHaveLength(1);
    } finally {
      await server.stop();
    }
  });

  it("re-handshakes when the server has dropped the authenticated connection; a wrong password is refused (401, not retried)", async () => {
    const sim = await ExchangeSimulator.start({ seed: 5 });
    try {
      sim.addMailbox({ upn: "ntlm@contoso.local" });
      const client = new EwsClient({ url: sim.ewsUrl, auth: { kind: "ntlm", username: `contoso\\${sim.ewsUsername}`, password: sim.ewsPassword } });
      const source = new EwsSource(client, 50);
      expect((await source.resolveMailbox("ews:ntlm@contoso.local")).mailboxId).toBe("EWS:ntlm@contoso.local");
      const first = sim.stats.ews.ntlmHandshakes;
      expect(first).toBe(1); // ResolveNames and GetFolder shared one connection
      sim.dropConnections();
      await new Promise((r) => setTimeout(r, 50)); // the client sees the close, as after an idle timeout
      expect((await source.resolveMailbox("ews:ntlm@contoso.local")).mailboxId).toBe("EWS:ntlm@contoso.local");
      expect(sim.stats.ews.ntlmHandshakes).toBe(2);
      // The closed socket was noticed before sending: no request went out unauthenticated.
      expect(sim.stats.ews.unauthorized).toBe(0);
      const wrong = new EwsSource(new EwsClient({ url: sim.ewsUrl, auth: { kind: "ntlm", username: `contoso\\${sim.ewsUsername}`, password: "nope" } }), 50);
      await expect(wrong.resolveMailbox("ews:ntlm@contoso.local")).rejects.toMatchObject({ status: 401, code: "Unauthorized" });
    } finally {
      await sim.close();
    }
  });
});

