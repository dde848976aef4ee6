/**
 * The EWS side of the simulator: `POST /EWS/Exchange.asmx` (SOAP 1.1) over the same model as the
 * Graph routes. Operations: GetFolder, SyncFolderHierarchy, SyncFolderItems, ExportItems (streamed),
 * UploadItems, CreateFolder. Auth (Basic or Bearer), ExchangeImpersonation + X-AnchorMailbox,
 * RequestServerVersion, per-mailbox concurrency (ErrorServerBusy with BackOffMilliseconds), latency,
 * pacing and fault injection. Requests are parsed by local names only (namespace URIs and prefixes
 * are ignored); responses use the real namespaces and prefixes (s, m, t).
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import type { Socket } from "node:net";
import { ntlm } from "httpntlm";
import { XMLParser, XMLValidator } from "fast-xml-parser";
import type { FaultPlan } from "./faults";
import { BodyAbort, BodyWriter, sleep } from "./http";
import { isStrictBase64 } from "./imports";
import { folderChangeKey, WELL_KNOWN_FOLDERS, type FolderRec, type ItemRec, type MailboxState, type SimModel } from "./model";
import { changeKeyFor } from "./prng";
import type { EwsOperation, EwsRouteName, RouteName, SimStats } from "./stats";

export const NS_SOAP = "http://schemas.xmlsoap.org/soap/envelope/";
export const NS_MESSAGES = "http://schemas.microsoft.com/exchange/services/2006/messages";
export const NS_TYPES = "http://schemas.microsoft.com/exchange/services/2006/types";
export const NS_ERRORS = "http://schemas.microsoft.com/exchange/services/2006/errors";
export const EWS_PATH = "/EWS/Exchange.asmx";
export const EWS_CONTENT_TYPE = "text/xml; charset=utf-8";

/** Live EWS settings (on `sim.config`; may be changed between requests). */
export interface EwsConfig {
  /** Basic auth user name (compared case-insensitively). Default `svc-backup`. */
  ewsUsername: string;
  /** Basic auth password. Default: random. */
  ewsPassword: string;
  /** Impersonated requests must carry `X-AnchorMailbox` = the impersonated address. Default true. */
  ewsRequireAnchorMailbox: boolean;
  /** Most ItemIds per ExportItems call (more: HTTP 500 fault ErrorInvalidRequest). Default 100. */
  ewsMaxExportItems: number;
  /** Largest EWS request body (larger: HTTP 413). Default 35 MiB. */
  ewsMaxRequestBodyBytes: number;
  /** EWS requests in flight per acting mailbox before ErrorServerBusy. Default 4. */
  ewsMaxConcurrentPerMailbox: number;
  /** BackOffMilliseconds of concurrency ErrorServerBusy faults. Default 1000. */
  ewsBackOffMs: number;
  /** Wrap ExportItems `m:Data` base64 at 76 characters with newlines. Default true. */
  ewsWrapBase64: boolean;
  /** Offer and accept NTLM (connection-based) besides Basic and Bearer. Default true. */
  ewsNtlm: boolean;
  /** The NTLM domain the service account belongs to. Default CONTOSO. */
  ewsNtlmDomain: string;
}

/** The shared settings the EWS handler uses (a subset of the simulator's config). */
export interface EwsHandlerConfig extends EwsConfig {
  token: string;
  latencyMs: number | ((route: RouteName) => number);
  bytesPerSecond: number | undefined;
  onError: (err: unknown) => void;
}

const OPERATIONS = {
  GetFolder: "ewsGetFolder",
  SyncFolderHierarchy: "ewsSyncFolderHierarchy",
  SyncFolderItems: "ewsSyncFolderItems",
  ExportItems: "ewsExportItems",
  UploadItems: "ewsUploadItems",
  CreateFolder: "ewsCreateFolder",
  ResolveNames: "ewsResolveNames",
} as const satisfies Record<EwsOperation, EwsRouteName>;
type Operation = EwsOperation;

/** RequestServerVersion values accepted for every operation. */
const VERSIONS_2010_SP1_PLUS = new Set(["Exchange2010_SP1", "Exchange2010_SP2", "Exchange2013", "Exchange2013_SP1", "Exchange2015", "Exchange2016"]);
/** Older values: accepted, except for ExportItems/UploadItems (introduced in Exchange 2010 SP1). */
const VERSIONS_OLDER = new Set(["Exchange2007", "Exchange2007_SP1", "Exchange2010"]);
const NEEDS_2010_SP1: ReadonlySet<Operation> = new Set<Operation>(["ExportItems", "UploadItems"]);

const SERVER_VERSION_INFO =
  `<h:ServerVersionInfo MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" MinorBuildNumber="6" Version="V2017_07_11" ` +
  `xmlns:h="${NS_TYPES}" xmlns="${NS_TYPES}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema"/>`;
const ENVELOPE_START =
  `<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="${NS_SOAP}"><s:Header>${SERVER_VERSION_INFO}</s:Header>` +
  `<s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">`;
const ENVELOPE_END = "</s:Body></s:Envelope>";

const TEXT = {
  ErrorFolderNotFound: "The specified folder could not be found in the store.",
  ErrorItemNotFound: "The specified object was not found in the store.",
  ErrorNonExistentMailboxGuid: "No mailbox with such guid.",
  ErrorNonExistentMailboxSmtp: "The SMTP address has no mailbox associated with it.",
  ErrorInvalidChangeKey: "The change key is invalid.",
  ErrorInvalidSyncStateData: "Synchronization state data is corrupt or otherwise invalid.",
  ErrorInvalidRequest: "The request is invalid.",
  ErrorFolderExists: "A folder with the specified name already exists.",
  ErrorCorruptData: "The data is corrupt.",
  ErrorInvalidServerVersion: "The specified server version is invalid.",
  ErrorServerBusy: "The server cannot service this request right now. Try again later.",
  ErrorMissingEmailAddress:
    "When making a request as an account that does not have a mailbox, you must specify the mailbox primary SMTP address for any distinguished folder Ids.",
  ErrorInvalidIdMalformed: "Id is malformed.",
  ErrorInternalServerError: "An internal server error occurred. The operation failed.",
  ErrorInternalServerTransientError: "An internal server error occurred. Try again later.",
} as const;

/** Distinguished folder names the simulator maps (others, valid EWS names included: ErrorFolderNotFound). */
const DISTINGUISHED: ReadonlySet<string> = new Set<string>(["msgfolderroot", "root", ...WELL_KNOWN_FOLDERS]);
const FOLDER_CLASS = /^IPF(\.[A-Za-z0-9_-]+)*$/;
const MAX_FOLDER_NAME = 255;
const MAX_SYNC_STATES = 20_000;
/** ExportItems chunk: a multiple of 57 bytes (= one 76-character base64 line) and of 3. */
const EXPORT_CHUNK = 57 * 3450;
const MAX_CHANGES = 512;

// ---- XML in ------------------------------------------------------------------------------------

/** A parsed element: local name, attributes by local name, element children, concatenated text. */
interface XNode {
  name: string;
  attrs: Record<string, string>;
  children: XNode[];
  text: string;
}

const parser = new XMLParser({
  preserveOrder: true,
  removeNSPrefix: true,
  ignoreAttributes: false,
  attributeNamePrefix: "",
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: false,
  ignoreDeclaration: true,
  ignorePiTags: true,
});

function toNodes(list: unknown): XNode[] {
  const out: XNode[] = [];
  if (!Array.isArray(list)) return out;
  for (const entry of list as Array<Record<string, unknown>>) {
    for (const [k, v] of Object.entries(entry)) {
      if (k === ":@" || k === "#text" || k === "#comment") continue;
      const rawAttrs = (entry[":@"] ?? {}) as Record<string, unknown>;
      const attrs: Record<string, string> = {};
      for (const [a, av] of Object.entries(rawAttrs)) attrs[a] = String(av);
      const kids = Array.isArray(v) ? (v as Array<Record<string, unknown>>) : [];
      let text = "";
      for (const kid of kids) if (typeof kid["#text"] === "string" || typeof kid["#text"] === "number") text += String(kid["#text"]);
      out.push({ name: k, attrs, children: toNodes(kids), text });
    }
  }
  return out;
}

/**
 * Parses a (validated) SOAP body. Large `Data` texts (UploadItems, tens of MB of base64) are lifted
 * out before XMLParser runs, which is slow on huge text nodes, and put back afterwards. Only plain
 * text is lifted (no markup, entities or CDATA inside), so the result is the same.
 */
function parseXml(body: string): XNode[] {
  const lifted: string[] = [];
  const parts: string[] = [];
  const open = /<(?:[A-Za-z_][\w.-]*:)?Data(?:\s[^>]*)?>/g;
  let from = 0;
  for (let m = open.exec(body); m; m = open.exec(body)) {
    const start = m.index + m[0].length;
    const end = body.indexOf("<", start);
    if (end < 0 || end - start < 4096 || body.startsWith("</", end) === false) continue;
    const text = body.slice(start, end);
    if (text.includes("&")) continue;
    parts.push(body.slice(from, start), `@@ews-data-${lifted.length}@@`);
    lifted.push(text);
    from = end;
    open.lastIndex = end;
  }
  parts.push(body.slice(from));
  const nodes = toNodes(parser.parse(lifted.length > 0 ? parts.join("") : body));
  if (lifted.length > 0) {
    for (const root of nodes) {
      for (const n of walk(root)) {
        const m = /^@@ews-data-(\d+)@@$/.exec(n.text);
        if (n.name === "Data" && m) n.text = lifted[Number(m[1])];
      }
    }
  }
  return nodes;
}

function child(n: XNode | undefined, name: string): XNode | undefined {
  return n?.children.find((c) => c.name === name);
}

function kids(n: XNode | undefined, ...names: string[]): XNode[] {
  return n ? n.children.filter((c) => names.includes(c.name)) : [];
}

function* walk(n: XNode): Generator<XNode> {
  yield n;
  for (const c of n.children) yield* walk(c);
}

// ---- XML out -----------------------------------------------------------------------------------

// eslint-disable-next-line no-control-regex
const INVALID_XML_CHARS = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF]/g;
const ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;" };

/** Escapes a text or attribute value (characters XML 1.0 cannot carry become U+FFFD). */
export function escXml(s: string | number): string {
  return String(s)
    .replace(INVALID_XML_CHARS, "\uFFFD")
    .replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

function el(name: string, text: string | number): string {
  return `<${name}>${escXml(text)}</${name}>`;
}

function idEl(name: string, id: string, changeKey?: string): string {
  return `<${name} Id="${escXml(id)}"${changeKey === undefined ? "" : ` ChangeKey="${escXml(changeKey)}"`}/>`;
}

/** Inner XML of a MessageXml carrying BackOffMilliseconds. */
function backOffValue(ms: number): string {
  return `<t:Value Name="BackOffMilliseconds">${escXml(ms)}</t:Value>`;
}

/** A whole SOAP fault response body. */
export function soapFaultXml(code: string, message: string, backOffMs?: number): string {
  const detail =
    `<e:ResponseCode xmlns:e="${NS_ERRORS}">${escXml(code)}</e:ResponseCode><e:Message xmlns:e="${NS_ERRORS}">${escXml(message)}</e:Message>` +
    (backOffMs === undefined ? "" : `<t:MessageXml xmlns:t="${NS_TYPES}"><t:Value Name="BackOffMilliseconds">${escXml(backOffMs)}</t:Value></t:MessageXml>`);
  return (
    `${ENVELOPE_START}<s:Fault><faultcode xmlns:a="${NS_TYPES}">a:${escXml(code)}</faultcode>` +
    `<faultstring xml:lang="en-US">${escXml(message)}</faultstring><detail>${detail}</detail></s:Fault>${ENVELOPE_END}`
  );
}

// ---- errors ------------------------------------------------------------------------------------

/** A whole-request SOAP fault. */
class SoapFault extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly httpStatus = 500,
    readonly backOffMs?: number,
  ) {
    super(message);
  }
}

/** An HTTP answer with an empty body (401, 405, 413, 415, injected statuses). */
class HttpReply extends Error {
  constructor(
    readonly status: number,
    readonly headers: Record<string, string> = {},
  ) {
    super(`HTTP ${status}`);
  }
}

/** A per-response-message error. */
interface MsgError {
  error: true;
  code: string;
  text: string;
  /** Inner XML of `m:MessageXml`. */
  messageXml?: string;
}

function msgError(code: keyof typeof TEXT | string, text?: string, messageXml?: string): MsgError {
  return { error: true, code, text: text ?? (TEXT as Record<string, string>)[code] ?? code, messageXml };
}

function isError(x: unknown): x is MsgError {
  return typeof x === "object" && x !== null && (x as MsgError).error === true;
}

const nonExistentSmtp = (): MsgError => msgError("ErrorNonExistentMailbox", TEXT.ErrorNonExistentMailboxSmtp);

// ---- state -------------------------------------------------------------------------------------

interface ItemChange {
  kind: "Create" | "Update" | "Delete";
  id: string;
  changeKey: string | undefined;
  type: string;
  size: number;
  created: string;
  modified: string;
  folderId: string;
}

interface ItemRound {
  changes: ItemChange[];
  untilSeq: number;
}

interface SyncRec {
  kind: "items" | "folders";
  mailboxId: string;
  epoch: number;
  folderId: string;
  /** Final states: changes after this seq come next. */
  sinceSeq: number;
  /** Mid-round states (SyncFolderItems paging): the round and where the next page starts. */
  round: ItemRound | null;
  offset: number;
}

interface Shape {
  base: "IdOnly" | "Default" | "AllProperties";
  fields: Set<string>;
}

/** One parsed, authenticated request. */
interface Req {
  req: IncomingMessage;
  res: ServerResponse;
  op: Operation;
  route: EwsRouteName;
  body: XNode;
  /** The impersonated address (ExchangeImpersonation header), or null for delegate access. */
  impersonated: string | null;
  /** The acting mailbox: the impersonated one, else the one the request names (see resolveActing). */
  acting: MailboxState | null;
  /** Basic auth user name (null for Bearer). */
  principal: string | null;
  /** Every ItemId Id in the request (for `containsItemId`). */
  itemIds: string[];
}

export class EwsHandler {
  private readonly inFlight = new Map<string, number>();
  private readonly syncStates = new Map<string, SyncRec>();

  constructor(
    private readonly model: SimModel,
    private readonly faults: FaultPlan,
    private readonly stats: SimStats,
    private readonly config: EwsHandlerConfig,
  ) {}

  /** Current EWS in-flight count of a mailbox. */
  inFlightOf(mailboxId: string): number {
    return this.inFlight.get(mailboxId.toLowerCase()) ?? 0;
  }

  /** True for the EWS endpoint path (case-insensitive, query ignored). */
  static matches(url: string | undefined): boolean {
    const path = (url ?? "/").split("?")[0];
    return path.toLowerCase() === EWS_PATH.toLowerCase();
  }

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.stats.totalRequests++;
    let counted = false;
    const countStatus = (): void => {
      if (counted) return;
      counted = true;
      this.stats.statuses[res.statusCode] = (this.stats.statuses[res.statusCode] ?? 0) + 1;
    };
    res.once("finish", countStatus);
    res.once("close", countStatus);
    try {
      await this.dispatch(req, res, Date.now());
    } catch (err) {
      if (err instanceof BodyAbort) return;
      if (err instanceof HttpReply) return this.sendEmpty(res, err.status, err.headers);
      if (err instanceof SoapFault) return this.sendFault(res, err);
      this.config.onError(err);
      this.sendFault(res, new SoapFault("ErrorInternalServerError", err instanceof Error ? `Simulator error: ${err.message}` : "Simulator error"));
    }
  }

  // ---- plumbing ----------------------------------------------------------------------------

  private sendEmpty(res: ServerResponse, status: number, headers: Record<string, string>): void {
    if (res.headersSent || res.writableEnded) {
      res.destroy();
      return;
    }
    res.statusCode = status;
    for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
    res.setHeader("Content-Length", 0);
    res.end();
  }

  private sendFault(res: ServerResponse, f: SoapFault): void {
    if (res.headersSent || res.writableEnded) {
      res.destroy();
      return;
    }
    this.countCode(f.code);
    const body = Buffer.from(soapFaultXml(f.code, f.message, f.backOffMs), "utf8");
    res.statusCode = f.httpStatus;
    res.setHeader("Content-Type", EWS_CONTENT_TYPE);
    res.setHeader("Content-Length", body.length);
    this.stats.bytesSent += body.length;
    res.end(body);
  }

  private countCode(code: string): void {
    this.stats.ews.errorCodes[code] = (this.stats.ews.errorCodes[code] ?? 0) + 1;
  }

  private writer(r: Req): BodyWriter {
    const mbx = r.acting?.mailboxId ?? null;
    const reset = this.faults.take("resetMidBody", r.route, mbx, undefined, r.itemIds);
    const trunc = reset ? undefined : this.faults.take("truncateJson", r.route, mbx, undefined, r.itemIds);
    const cut = reset
      ? { kind: "reset" as const, afterBytes: reset.afterBytes ?? 100 }
      : trunc
        ? { kind: "truncate" as const, afterBytes: trunc.afterBytes ?? 100 }
        : undefined;
    return new BodyWriter(r.res, this.stats, cut, this.config.bytesPerSecond);
  }

  /** A whole (non-streamed) 200 response of response messages. */
  private async respond(r: Req, messages: string[]): Promise<void> {
    const w = this.writer(r);
    const buf = Buffer.from(`${ENVELOPE_START}${responseStart(r.op)}${messages.join("")}${responseEnd(r.op)}`, "utf8");
    r.res.statusCode = 200;
    r.res.setHeader("Content-Type", EWS_CONTENT_TYPE);
    if (w.plain) r.res.setHeader("Content-Length", buf.length);
    await w.write(buf);
    await w.end();
  }

  private ok(op: Operation, inner: string): string {
    return `<m:${op}ResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>${inner}</m:${op}ResponseMessage>`;
  }

  private err(op: Operation, e: MsgError): string {
    this.countCode(e.code);
    return (
      `<m:${op}ResponseMessage ResponseClass="Error">${el("m:MessageText", e.text)}${el("m:ResponseCode", e.code)}` +
      `<m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>${e.messageXml === undefined ? "" : `<m:MessageXml>${e.messageXml}</m:MessageXml>`}</m:${op}ResponseMessage>`
    );
  }

  private async readBody(req: IncomingMessage): Promise<Buffer> {
    const limit = this.config.ewsMaxRequestBodyBytes;
    const tooLarge = (): HttpReply => new HttpReply(413, { Connection: "close" });
    const declared = Number(req.headers["content-length"] ?? NaN);
    const hardCap = Math.max(limit * 4, 64 * 1024 * 1024);
    if (declared > hardCap) throw tooLarge();
    const chunks: Buffer[] = [];
    let total = 0;
    for await (const chunk of req) {
      const b = chunk as Buffer;
      total += b.length;
      if (total > hardCap) throw tooLarge();
      if (total <= limit) chunks.push(b);
    }
    if (total > limit) throw tooLarge();
    return Buffer.concat(chunks);
  }

  /** null: authenticated by Bearer; string: the Basic user name. Throws 401 otherwise. */
  /** NTLM: the challenge issued on a connection, and the user a connection authenticated as. */
  private readonly ntlmChallenges = new WeakMap<Socket, Buffer>();
  private readonly ntlmUsers = new WeakMap<Socket, string>();

  private authenticate(req: IncomingMessage): string | null {
    const fail = new HttpReply(401, { "WWW-Authenticate": `${this.config.ewsNtlm ? "NTLM, " : ""}Basic realm="sim", Bearer` });
    const h = req.headers.authorization ?? "";
    try {
      return this.checkCredentials(req, h, fail);
    } catch (e) {
      if (e === fail) this.stats.ews.unauthorized++;
      throw e;
    }
  }

  private checkCredentials(req: IncomingMessage, h: string, fail: HttpReply): string | null {
    if (this.config.ewsNtlm) {
      const ntlmUser = this.ntlmAuthenticate(req, h, fail);
      if (ntlmUser !== undefined) return ntlmUser;
    }
    const bearer = /^Bearer\s+(.+)$/i.exec(h);
    if (bearer) {
      if (bearer[1].trim() === this.config.token) return null;
      throw fail;
    }
    const basic = /^Basic\s+(.+)$/i.exec(h);
    if (!basic) throw fail;
    const decoded = Buffer.from(basic[1].trim(), "base64").toString("utf8");
    const colon = decoded.indexOf(":");
    if (colon < 0) throw fail;
    const user = decoded.slice(0, colon);
    const pass = decoded.slice(colon + 1);
    if (user.toLowerCase() !== this.config.ewsUsername.toLowerCase() || pass !== this.config.ewsPassword) throw fail;
    return user;
  }

  /**
   * NTLM (connection-based, as IIS does it): Type 1 gets a 401 with a Type 2 challenge; Type 3 is
   * checked as NTLMv2 against `ewsUsername`/`ewsPassword` in domain `ewsNtlmDomain`, and then the
   * connection is authenticated for every later request on it. Undefined: not NTLM.
   */
  private ntlmAuthenticate(req: IncomingMessage, header: string, fail: HttpReply): string | undefined {
    const socket = req.socket;
    const m = /^NTLM\s+(\S+)$/i.exec(header);
    if (!m) {
      const known = this.ntlmUsers.get(socket);
      return header === "" && known !== undefined ? known : undefined;
    }
    const msg = Buffer.from(m[1], "base64");
    if (msg.length < 12 || msg.toString("latin1", 0, 8) !== "NTLMSSP\0") throw fail;
    const type = msg.readUInt32LE(8);
    if (type === 1) {
      const challenge = randomBytes(8);
      this.ntlmChallenges.set(socket, challenge);
      this.ntlmUsers.delete(socket);
      this.stats.ews.ntlmHandshakes++;
      throw new HttpReply(401, { "WWW-Authenticate": `NTLM ${ntlmType2(challenge, this.config.ewsNtlmDomain).toString("base64")}` });
    }
    const challenge = this.ntlmChallenges.get(socket);
    this.ntlmChallenges.delete(socket);
    if (type !== 3 || !challenge || msg.length < 52) throw fail;
    const field = (at: number) => msg.subarray(msg.readUInt32LE(at + 4), msg.readUInt32LE(at + 4) + msg.readUInt16LE(at));
    const nt = field(20);
    const domain = field(28).toString("utf16le");
    const user = field(36).toString("utf16le");
    if (nt.length < 48 || user.toLowerCase() !== this.config.ewsUsername.toLowerCase() || domain.toUpperCase() !== this.config.ewsNtlmDomain.toUpperCase()) throw fail;
    // NTLMv2: NTProofStr = HMAC-MD5(NTOWFv2, serverChallenge || blob), NTOWFv2 = HMAC-MD5(NT hash, UPPER(user) || domain).
    const ntowf = createHmac("md5", ntlm.create_NT_hashed_password(this.config.ewsPassword)).update(Buffer.from(user.toUpperCase() + domain, "utf16le")).digest();
    const proof = createHmac("md5", ntowf).update(Buffer.concat([challenge, nt.subarray(16)])).digest();
    if (!timingSafeEqual(proof, nt.subarray(0, 16))) throw fail;
    this.ntlmUsers.set(socket, user);
    return user;
  }

  // ---- mailbox resolution ------------------------------------------------------------------

  /** Secondary SMTP addresses (proxy addresses), lowercased, to the mailbox's primary one. */
  readonly aliases = new Map<string, string>();

  /** A mailbox by primary SMTP address (= UPN in the model), case-insensitive. */
  mailboxBySmtp(address: string): MailboxState | undefined {
    const u = this.model.findUser(address.trim());
    if (!u || !u.mailboxId || u.userPrincipalName.toLowerCase() !== address.trim().toLowerCase()) return undefined;
    return this.model.mailboxes.get(u.mailboxId.toLowerCase());
  }

  /** A mailbox by any of its SMTP addresses (primary or alias). */
  mailboxByAnySmtp(address: string): MailboxState | undefined {
    const a = address.trim().toLowerCase();
    return this.mailboxBySmtp(this.aliases.get(a) ?? a);
  }

  private folderOwner(id: string): { mbx: MailboxState; folder: FolderRec } | undefined {
    for (const mbx of this.model.mailboxes.values()) {
      const folder = mbx.folders.get(id);
      if (folder) return { mbx, folder };
    }
    return undefined;
  }

  private itemOwner(id: string): MailboxState | undefined {
    for (const mbx of this.model.mailboxes.values()) if (mbx.items.has(id)) return mbx;
    return undefined;
  }

  /**
   * The acting mailbox: the impersonated one; else (delegate access) the mailbox of the first
   * DistinguishedFolderId/Mailbox in the request, else the owner of the first FolderId/ItemId that
   * exists, else the Basic user's own mailbox (if the user name is a mailbox address).
   */
  private resolveActing(r: Req): MailboxState | null {
    if (r.impersonated !== null) return this.mailboxBySmtp(r.impersonated) ?? null;
    for (const n of walk(r.body)) {
      if (n.name !== "DistinguishedFolderId") continue;
      const addr = child(child(n, "Mailbox"), "EmailAddress")?.text.trim();
      if (addr) {
        const m = this.mailboxByAnySmtp(addr);
        if (m) return m;
      }
    }
    for (const n of walk(r.body)) {
      const id = n.attrs.Id;
      if (!id) continue;
      if (n.name === "FolderId" || n.name === "ParentFolderId") {
        const o = this.folderOwner(id);
        if (o) return o.mbx;
      } else if (n.name === "ItemId") {
        const o = this.itemOwner(id);
        if (o) return o;
      }
    }
    return this.principalMailbox(r) ?? null;
  }

  private principalMailbox(r: Req): MailboxState | undefined {
    return r.principal === null ? undefined : this.mailboxBySmtp(r.principal);
  }

  /** A FolderId or DistinguishedFolderId element to its mailbox and folder. */
  private resolveFolderRef(r: Req, ref: XNode): { mbx: MailboxState; folder: FolderRec } | MsgError {
    if (ref.name === "FolderId") {
      const id = ref.attrs.Id ?? "";
      if (id === "") return msgError("ErrorInvalidIdMalformed");
      if (r.impersonated !== null) {
        if (!r.acting) return nonExistentSmtp();
        const folder = r.acting.folders.get(id);
        return folder ? { mbx: r.acting, folder } : msgError("ErrorFolderNotFound");
      }
      return this.folderOwner(id) ?? msgError("ErrorFolderNotFound");
    }
    if (ref.name === "DistinguishedFolderId") {
      const name = ref.attrs.Id ?? "";
      const addr = child(child(ref, "Mailbox"), "EmailAddress")?.text.trim();
      let mbx: MailboxState | undefined;
      if (addr) mbx = this.mailboxByAnySmtp(addr);
      else if (r.impersonated !== null) mbx = r.acting ?? undefined;
      else {
        mbx = this.principalMailbox(r);
        if (!mbx) return msgError("ErrorMissingEmailAddress");
      }
      if (!mbx) return nonExistentSmtp();
      if (!DISTINGUISHED.has(name)) return msgError("ErrorFolderNotFound");
      const folderId = name === "msgfolderroot" || name === "root" ? mbx.rootId : (mbx.wellKnown.get(name) ?? "");
      const folder = mbx.folders.get(folderId);
      return folder ? { mbx, folder } : msgError("ErrorFolderNotFound");
    }
    return msgError("ErrorInvalidRequest");
  }

  // ---- dispatch ----------------------------------------------------------------------------

  private async dispatch(req: IncomingMessage, res: ServerResponse, arrivedAt: number): Promise<void> {
    const principal = this.authenticate(req);
    if ((req.method ?? "GET") !== "POST") throw new HttpReply(405, { Allow: "POST" });
    const ct = req.headers["content-type"] ?? "";
    if (!/^(text\/xml|application\/soap\+xml)\b/i.test(ct)) throw new HttpReply(415);
    const raw = await this.readBody(req);
    let xml = raw.toString("utf8");
    if (xml.charCodeAt(0) === 0xfeff) xml = xml.slice(1);
    if (xml.trim() === "" || XMLValidator.validate(xml) !== true) throw new SoapFault("ErrorInvalidRequest", TEXT.ErrorInvalidRequest, 400);
    const root = parseXml(xml).find((n) => n.name === "Envelope");
    const soapBody = child(root, "Body");
    const opNode = soapBody?.children[0];
    if (!root || !opNode || !(opNode.name in OPERATIONS)) {
      this.stats.ews.unknownOperations++;
      throw new SoapFault("ErrorInvalidRequest", `${TEXT.ErrorInvalidRequest} The operation '${opNode?.name ?? ""}' is not supported.`);
    }
    const op = opNode.name as Operation;
    const route = OPERATIONS[op];
    this.stats.requests[route]++;
    this.stats.ews.requests[op]++;
    const header = child(root, "Header");

    const version = child(header, "RequestServerVersion")?.attrs.Version;
    if (version === undefined || !(VERSIONS_2010_SP1_PLUS.has(version) || (VERSIONS_OLDER.has(version) && !NEEDS_2010_SP1.has(op)))) {
      throw new SoapFault("ErrorInvalidServerVersion", TEXT.ErrorInvalidServerVersion);
    }

    let impersonated: string | null = null;
    const imp = child(header, "ExchangeImpersonation");
    if (imp) {
      const sid = child(imp, "ConnectingSID");
      const addr = (child(sid, "PrimarySmtpAddress") ?? child(sid, "SmtpAddress") ?? child(sid, "PrincipalName"))?.text.trim();
      if (!addr) throw new SoapFault("ErrorInvalidExchangeImpersonationHeaderData", "The impersonation header must name the user by PrimarySmtpAddress, SmtpAddress or PrincipalName.");
      const anchor = req.headers["x-anchormailbox"];
      if (this.config.ewsRequireAnchorMailbox && (typeof anchor !== "string" || anchor.trim().toLowerCase() !== addr.toLowerCase())) {
        this.stats.ews.anchorMailboxRejected++;
        throw new SoapFault("ErrorInvalidRequest", `${TEXT.ErrorInvalidRequest} The X-AnchorMailbox header must name the impersonated mailbox (${addr}).`, 400);
      }
      // SmtpAddress may name the mailbox by any of its addresses; PrimarySmtpAddress must be the primary one.
      impersonated = child(sid, "PrimarySmtpAddress") ? addr : (this.aliases.get(addr.toLowerCase()) ?? addr);
    }

    const itemIds: string[] = [];
    for (const n of walk(opNode)) if (n.name === "ItemId" && n.attrs.Id !== undefined) itemIds.push(n.attrs.Id);
    const r: Req = { req, res, op, route, body: opNode, impersonated, acting: null, principal, itemIds };
    // ResolveNames asks the directory, not a mailbox: no acting mailbox, no per-mailbox slot.
    r.acting = op === "ResolveNames" && impersonated === null ? null : this.resolveActing(r);
    const mbxId = r.acting?.mailboxId ?? null;
    if (r.acting) this.admit(r, r.acting);
    this.stats.ews.log.push({ at: arrivedAt, mailboxId: mbxId, operation: op, route });

    const lat = this.config.latencyMs;
    await sleep(typeof lat === "function" ? lat(route) : lat);
    const delay = this.faults.take("delayMs", route, mbxId, undefined, itemIds);
    if (delay) await sleep(delay.ms);
    const st = this.faults.take("status", route, mbxId, undefined, itemIds);
    if (st) {
      const headers: Record<string, string> = {};
      if (st.retryAfterSeconds !== undefined) headers["Retry-After"] = String(st.retryAfterSeconds);
      if (st.status === 500) {
        const code = st.code ?? "ErrorInternalServerError";
        for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
        throw new SoapFault(code, st.message ?? (TEXT as Record<string, string>)[code] ?? code, 500);
      }
      throw new HttpReply(st.status, headers);
    }
    const sf = this.faults.take("soapFault", route, mbxId, undefined, itemIds);
    if (sf) {
      if (sf.code === "ErrorServerBusy") {
        this.stats.ews.serverBusy.push({ at: Date.now(), mailboxId: mbxId, operation: op, route, backOffMs: sf.backOffMs ?? 0, source: "soapFault" });
      }
      throw new SoapFault(sf.code, sf.message ?? (TEXT as Record<string, string>)[sf.code] ?? sf.code, sf.httpStatus ?? 500, sf.backOffMs);
    }

    switch (op) {
      case "GetFolder":
        return this.getFolder(r);
      case "SyncFolderHierarchy":
        return this.syncFolderHierarchy(r);
      case "SyncFolderItems":
        return this.syncFolderItems(r);
      case "ExportItems":
        return this.exportItems(r);
      case "UploadItems":
        return this.uploadItems(r);
      case "CreateFolder":
        return this.createFolder(r);
      case "ResolveNames":
        return this.resolveNames(r);
    }
  }

  private admit(r: Req, mbx: MailboxState): void {
    const key = mbx.mailboxId.toLowerCase();
    const now = this.inFlight.get(key) ?? 0;
    if (now >= this.config.ewsMaxConcurrentPerMailbox) {
      this.stats.ews.throttled++;
      const backOffMs = this.config.ewsBackOffMs;
      this.stats.ews.serverBusy.push({ at: Date.now(), mailboxId: mbx.mailboxId, operation: r.op, route: r.route, backOffMs, source: "concurrency" });
      throw new SoapFault("ErrorServerBusy", TEXT.ErrorServerBusy, 500, backOffMs);
    }
    this.inFlight.set(key, now + 1);
    const peak = this.stats.ews.peakInFlight;
    if (now + 1 > (peak[mbx.mailboxId] ?? 0)) peak[mbx.mailboxId] = now + 1;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      this.inFlight.set(key, (this.inFlight.get(key) ?? 1) - 1);
    };
    r.res.once("finish", release);
    r.res.once("close", release);
  }

  // ---- shapes and rendering ----------------------------------------------------------------

  private shape(n: XNode | undefined): Shape {
    const b = child(n, "BaseShape")?.text.trim();
    const base = b === "Default" || b === "AllProperties" ? b : "IdOnly";
    const fields = new Set<string>();
    for (const f of kids(child(n, "AdditionalProperties"), "FieldURI")) if (f.attrs.FieldURI) fields.add(f.attrs.FieldURI);
    return { base, fields };
  }

  private folderKey(mbx: MailboxState, id: string): string {
    const f = mbx.folders.get(id);
    return f ? folderChangeKey(mbx, f) : changeKeyFor(mbx.mailboxId, id, "folder", 0);
  }

  /** A folder element; `shape` null: every property. */
  private renderFolder(mbx: MailboxState, f: FolderRec, shape: Shape | null): string {
    const name = `t:${folderElement(f.type)}`;
    const full = shape === null || shape.base !== "IdOnly";
    const want = (uri: string): boolean => full || (shape?.fields.has(uri) ?? false);
    let s = `<${name}>${idEl("t:FolderId", f.id, folderChangeKey(mbx, f))}`;
    if (want("folder:ParentFolderId")) s += idEl("t:ParentFolderId", f.parentFolderId, this.folderKey(mbx, f.parentFolderId));
    if (want("folder:FolderClass")) s += el("t:FolderClass", f.type);
    if (want("folder:DisplayName")) s += el("t:DisplayName", f.displayName);
    if (want("folder:TotalCount")) s += el("t:TotalCount", f.items.size);
    if (want("folder:ChildFolderCount")) s += el("t:ChildFolderCount", f.children.size);
    if (want("folder:UnreadCount")) s += el("t:UnreadCount", 0);
    return `${s}</${name}>`;
  }

  private renderItem(mbx: MailboxState, c: ItemChange, shape: Shape): string {
    const name = `t:${itemElement(c.type)}`;
    const full = shape.base !== "IdOnly";
    const want = (uri: string): boolean => full || shape.fields.has(uri);
    let s = `<${name}>${idEl("t:ItemId", c.id, c.changeKey)}`;
    if (shape.fields.has("item:ParentFolderId")) s += idEl("t:ParentFolderId", c.folderId, this.folderKey(mbx, c.folderId));
    if (want("item:ItemClass")) s += el("t:ItemClass", c.type);
    if (want("item:Size")) s += el("t:Size", c.size);
    if (want("item:DateTimeCreated")) s += el("t:DateTimeCreated", c.created);
    if (shape.fields.has("item:LastModifiedTime")) s += el("t:LastModifiedTime", c.modified);
    return `${s}</${name}>`;
  }

  // ---- sync states -------------------------------------------------------------------------

  private issueState(rec: SyncRec): string {
    const token = randomBytes(48).toString("base64");
    this.syncStates.set(token, rec);
    while (this.syncStates.size > MAX_SYNC_STATES) {
      const oldest = this.syncStates.keys().next().value;
      if (oldest === undefined) break;
      this.syncStates.delete(oldest);
    }
    return token;
  }

  /** The SyncState element's record; undefined: no state given; MsgError: stale, foreign or garbled. */
  private syncState(op: XNode, kind: SyncRec["kind"], mbx: MailboxState, folder: FolderRec): SyncRec | MsgError | undefined {
    const text = child(op, "SyncState")?.text.replace(/\s+/g, "") ?? "";
    if (text === "") return undefined;
    const rec = this.syncStates.get(text);
    if (!rec || rec.kind !== kind || rec.mailboxId !== mbx.mailboxId || rec.epoch !== mbx.epoch || rec.folderId !== folder.id) {
      return msgError("ErrorInvalidSyncStateData");
    }
    return rec;
  }

  // ---- operations --------------------------------------------------------------------------

  private async getFolder(r: Req): Promise<void> {
    const shape = this.shape(child(r.body, "FolderShape"));
    const refs = kids(child(r.body, "FolderIds"), "FolderId", "DistinguishedFolderId");
    if (refs.length === 0) throw new SoapFault("ErrorInvalidRequest", `${TEXT.ErrorInvalidRequest} FolderIds must name at least one folder.`);
    const out = refs.map((ref) => {
      const x = this.resolveFolderRef(r, ref);
      if (isError(x)) return this.err(r.op, x);
      return this.ok(r.op, `<m:Folders>${this.renderFolder(x.mbx, x.folder, shape)}</m:Folders>`);
    });
    await this.respond(r, out);
  }

  /** The sync folder: SyncFolderId's FolderId/DistinguishedFolderId, or (absent) the acting mailbox's root. */
  private syncFolder(r: Req): { mbx: MailboxState; folder: FolderRec } | MsgError {
    const ref = child(r.body, "SyncFolderId")?.children[0];
    if (ref) return this.resolveFolderRef(r, ref);
    if (!r.acting) return r.impersonated !== null ? nonExistentSmtp() : msgError("ErrorMissingEmailAddress");
    return { mbx: r.acting, folder: this.model.folder(r.acting, r.acting.rootId) };
  }

  private async syncFolderHierarchy(r: Req): Promise<void> {
    const target = this.syncFolder(r);
    if (isError(target)) return this.respond(r, [this.err(r.op, target)]);
    const { mbx, folder } = target;
    const st = this.syncState(r.body, "folders", mbx, folder);
    if (isError(st)) return this.respond(r, [this.err(r.op, st)]);
    const since = st?.sinceSeq ?? 0;
    let changes = "";
    for (const f of this.model.folderTree(mbx, folder)) {
      if (f.seq <= since) continue;
      const kind = st === undefined || f.createdSeq > since ? "Create" : "Update";
      changes += `<t:${kind}>${this.renderFolder(mbx, f, null)}</t:${kind}>`;
    }
    if (st !== undefined) {
      for (const [id, seq] of mbx.folderTombstones) {
        if (seq > since && !mbx.folders.has(id)) changes += `<t:Delete>${idEl("t:FolderId", id, mbx.deletedChangeKeys.get(id))}</t:Delete>`;
      }
    }
    const state = this.issueState({ kind: "folders", mailboxId: mbx.mailboxId, epoch: mbx.epoch, folderId: folder.id, sinceSeq: mbx.seq, round: null, offset: 0 });
    await this.respond(r, [
      this.ok(r.op, `${el("m:SyncState", state)}<m:IncludesLastFolderInRange>true</m:IncludesLastFolderInRange><m:Changes>${changes}</m:Changes>`),
    ]);
  }

  private itemRound(mbx: MailboxState, folder: FolderRec, since: number, initial: boolean): ItemRound {
    const changes: ItemChange[] = [];
    const snap = (kind: ItemChange["kind"], i: ItemRec): ItemChange => ({
      kind,
      id: i.id,
      changeKey: i.changeKey,
      type: i.type,
      size: i.size,
      created: i.created,
      modified: i.modified,
      folderId: i.folderId,
    });
    for (const id of folder.items) {
      const i = mbx.items.get(id);
      if (!i || i.seq <= since) continue;
      changes.push(snap(initial || i.enteredSeq > since ? "Create" : "Update", i));
    }
    if (!initial) {
      for (const [id, seq] of folder.itemTombstones) {
        if (seq <= since || folder.items.has(id)) continue;
        const moved = mbx.items.get(id);
        changes.push({ kind: "Delete", id, changeKey: moved?.changeKey ?? mbx.deletedChangeKeys.get(id), type: "", size: 0, created: "", modified: "", folderId: folder.id });
      }
    }
    return { changes, untilSeq: mbx.seq };
  }

  private async syncFolderItems(r: Req): Promise<void> {
    const target = this.syncFolder(r);
    if (isError(target)) return this.respond(r, [this.err(r.op, target)]);
    const { mbx, folder } = target;
    const shape = this.shape(child(r.body, "ItemShape"));
    const maxText = child(r.body, "MaxChangesReturned")?.text.trim() ?? "";
    const max = /^\d{1,6}$/.test(maxText) ? Number(maxText) : NaN;
    if (!(max >= 1 && max <= MAX_CHANGES)) {
      this.stats.ews.invalidMaxChanges++;
      return this.respond(r, [this.err(r.op, msgError("ErrorInvalidRequest", `${TEXT.ErrorInvalidRequest} MaxChangesReturned must be between 1 and ${MAX_CHANGES}.`))]);
    }
    const st = this.syncState(r.body, "items", mbx, folder);
    if (isError(st)) return this.respond(r, [this.err(r.op, st)]);
    let round: ItemRound;
    let offset = 0;
    if (st?.round) {
      round = st.round;
      offset = st.offset;
    } else {
      round = this.itemRound(mbx, folder, st?.sinceSeq ?? 0, st === undefined);
    }
    const ignore = new Set(kids(child(r.body, "Ignore"), "ItemId").map((n) => n.attrs.Id ?? ""));
    const page = round.changes.slice(offset, offset + max);
    const more = offset + max < round.changes.length;
    const base = { kind: "items" as const, mailboxId: mbx.mailboxId, epoch: mbx.epoch, folderId: folder.id };
    const state = more
      ? this.issueState({ ...base, sinceSeq: 0, round, offset: offset + max })
      : this.issueState({ ...base, sinceSeq: round.untilSeq, round: null, offset: 0 });
    let changes = "";
    for (const c of page) {
      if (ignore.has(c.id)) continue;
      if (c.kind === "Delete") changes += `<t:Delete>${idEl("t:ItemId", c.id, c.changeKey)}</t:Delete>`;
      else changes += `<t:${c.kind}>${this.renderItem(mbx, c, shape)}</t:${c.kind}>`;
    }
    await this.respond(r, [
      this.ok(r.op, `${el("m:SyncState", state)}<m:IncludesLastItemInRange>${more ? "false" : "true"}</m:IncludesLastItemInRange><m:Changes>${changes}</m:Changes>`),
    ]);
  }

  private async exportItems(r: Req): Promise<void> {
    const refs = kids(child(r.body, "ItemIds"), "ItemId");
    const max = this.config.ewsMaxExportItems;
    if (refs.length === 0) throw new SoapFault("ErrorInvalidRequest", `${TEXT.ErrorInvalidRequest} ItemIds must contain at least one ItemId.`);
    if (refs.length > max) throw new SoapFault("ErrorInvalidRequest", `${TEXT.ErrorInvalidRequest} Too many ItemIds: ${refs.length}. The maximum is ${max} per ExportItems request.`);
    const acting = r.acting;
    const mbxId = acting?.mailboxId ?? null;
    const w = this.writer(r);
    r.res.statusCode = 200;
    r.res.setHeader("Content-Type", EWS_CONTENT_TYPE);
    const enc = (s: string): Buffer => Buffer.from(s, "utf8");
    await w.write(enc(`${ENVELOPE_START}${responseStart(r.op)}`));
    for (const ref of refs) {
      const id = ref.attrs.Id ?? "";
      const injected = this.faults.take("itemError", r.route, mbxId, id);
      let failure: MsgError | undefined;
      let rec: ItemRec | undefined;
      if (injected) {
        const code = injected.code ?? "ErrorInternalServerTransientError";
        failure = msgError(code, injected.message, injected.backOffMs === undefined ? undefined : backOffValue(injected.backOffMs));
        if (code === "ErrorServerBusy") {
          this.stats.ews.serverBusy.push({ at: Date.now(), mailboxId: mbxId, operation: r.op, route: r.route, backOffMs: injected.backOffMs ?? 0, source: "itemError", itemId: id });
        }
      } else if (ref.attrs.ChangeKey !== undefined && !(ref.attrs.ChangeKey !== "" && isStrictBase64(ref.attrs.ChangeKey))) {
        failure = msgError("ErrorInvalidChangeKey");
      } else if (id === "") {
        failure = msgError("ErrorInvalidIdMalformed");
      } else if (r.impersonated !== null && !acting) {
        failure = nonExistentSmtp();
      } else {
        rec = acting?.items.get(id);
        if (!rec) {
          const owner = this.itemOwner(id);
          failure = owner
            ? msgError("ErrorNonExistentMailbox", TEXT.ErrorNonExistentMailboxGuid, `<t:Value Name="MailboxGuid">${escXml(owner.mailboxGuid)}</t:Value>`)
            : msgError("ErrorItemNotFound");
        }
      }
      if (failure || !rec || !acting) {
        this.stats.ews.itemErrors++;
        await w.write(enc(this.err(r.op, failure ?? msgError("ErrorItemNotFound"))));
        continue;
      }
      const corrupt = this.faults.take("invalidBase64", r.route, mbxId, id);
      await w.write(enc(`<m:${r.op}ResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>${idEl("m:ItemId", rec.id, rec.changeKey)}<m:Data>`));
      let first = true;
      for (const chunk of this.model.itemChunks(acting, rec, EXPORT_CHUNK)) {
        let s = chunk.toString("base64");
        if (corrupt && first) s = `${s.slice(0, 4)}!*~${s.slice(7)}`;
        if (this.config.ewsWrapBase64) s = (first ? "" : "\n") + wrap76(s);
        first = false;
        await w.write(Buffer.from(s, "latin1"));
      }
      if (corrupt && first) await w.write(enc("!*~="));
      await w.write(enc(`</m:Data></m:${r.op}ResponseMessage>`));
      this.stats.ews.itemsExported++;
      this.stats.ews.exportedItemIds.set(id, (this.stats.ews.exportedItemIds.get(id) ?? 0) + 1);
    }
    await w.write(enc(responseEnd(r.op)));
    await w.end();
  }

  private async uploadItems(r: Req): Promise<void> {
    const items = kids(child(r.body, "Items"), "Item");
    if (items.length === 0) throw new SoapFault("ErrorInvalidRequest", `${TEXT.ErrorInvalidRequest} Items must contain at least one Item.`);
    const out = items.map((item) => {
      const x = this.uploadOne(r, item);
      if (isError(x)) return this.err(r.op, x);
      return this.ok(r.op, idEl("m:ItemId", x.id, x.changeKey));
    });
    await this.respond(r, out);
  }

  private uploadOne(r: Req, item: XNode): ItemRec | MsgError {
    const action = item.attrs.CreateAction;
    if (action !== "CreateNew" && action !== "Update" && action !== "UpdateOrCreate") {
      return msgError("ErrorInvalidRequest", `${TEXT.ErrorInvalidRequest} CreateAction must be CreateNew, Update or UpdateOrCreate.`);
    }
    const parentRef = child(item, "ParentFolderId");
    if (!parentRef) return msgError("ErrorInvalidRequest", `${TEXT.ErrorInvalidRequest} ParentFolderId is required.`);
    const parent = this.resolveFolderRef(r, { ...parentRef, name: "FolderId" });
    if (isError(parent)) return parent;
    const { mbx, folder } = parent;
    const itemRef = child(item, "ItemId");
    const itemId = itemRef?.attrs.Id;
    if (action === "CreateNew" && itemRef) return msgError("ErrorInvalidRequest", `${TEXT.ErrorInvalidRequest} ItemId must not be specified with CreateAction CreateNew.`);
    if (action === "Update" && !itemId) return msgError("ErrorInvalidRequest", `${TEXT.ErrorInvalidRequest} ItemId is required with CreateAction Update.`);
    const ck = itemRef?.attrs.ChangeKey;
    if (ck !== undefined && !(ck !== "" && isStrictBase64(ck))) return msgError("ErrorInvalidChangeKey");
    const dataNode = child(item, "Data");
    const data = dataNode?.text.replace(/\s+/g, "") ?? "";
    if (data === "") return msgError("ErrorInvalidRequest", `${TEXT.ErrorInvalidRequest} Data must not be empty.`);
    if (!isStrictBase64(data)) return msgError("ErrorCorruptData");
    const bytes = Buffer.from(data, "base64");
    const existing = itemId ? mbx.items.get(itemId) : undefined;
    let rec: ItemRec;
    if (action === "CreateNew" || (action === "UpdateOrCreate" && !existing)) {
      rec = this.model.importCreate(mbx, folder.id, bytes, "ews");
    } else {
      if (!existing) return msgError("ErrorItemNotFound");
      rec = this.model.importUpdate(mbx, existing.id, bytes, "ews");
    }
    this.stats.ews.uploadedItems++;
    this.stats.ews.uploadedBytes += bytes.length;
    return rec;
  }

  private async createFolder(r: Req): Promise<void> {
    const ref = child(r.body, "ParentFolderId")?.children[0];
    const folders = kids(child(r.body, "Folders"), "Folder", "CalendarFolder", "ContactsFolder", "TasksFolder", "SearchFolder");
    if (!ref || folders.length === 0) throw new SoapFault("ErrorInvalidRequest", `${TEXT.ErrorInvalidRequest} ParentFolderId and at least one folder are required.`);
    const parent = this.resolveFolderRef(r, ref);
    const out = folders.map((spec) => {
      if (isError(parent)) return this.err(r.op, parent);
      const x = this.createOne(parent.mbx, parent.folder, spec);
      if (isError(x)) return this.err(r.op, x);
      return this.ok(r.op, `<m:Folders>${this.renderFolder(parent.mbx, x, { base: "IdOnly", fields: new Set() })}</m:Folders>`);
    });
    await this.respond(r, out);
  }

  /**
   * ResolveNames for mailbox addresses, as Exchange answers it: an `smtp:`-prefixed (or bare)
   * UnresolvedEntry matches primary addresses and aliases that *start with* it (a prefix match, per
   * the docs), an exact address first. One match: Success; several: Warning
   * ErrorNameResolutionMultipleResults with every resolution; none: ErrorNameResolutionNoResults.
   * Each resolution names the mailbox's primary address.
   */
  private async resolveNames(r: Req): Promise<void> {
    const entry = (child(r.body, "UnresolvedEntry")?.text ?? "").trim().replace(/^smtp:/i, "").toLowerCase();
    if (!entry) throw new SoapFault("ErrorInvalidRequest", `${TEXT.ErrorInvalidRequest} UnresolvedEntry is required.`);
    const exact = this.mailboxByAnySmtp(entry);
    const found = new Map<string, MailboxState>();
    if (exact) found.set(exact.mailboxId, exact);
    else {
      for (const mbx of this.model.mailboxes.values()) if (mbx.upn.toLowerCase().startsWith(entry)) found.set(mbx.mailboxId, mbx);
      for (const [alias, primary] of this.aliases) if (alias.startsWith(entry)) {
        const mbx = this.mailboxBySmtp(primary);
        if (mbx) found.set(mbx.mailboxId, mbx);
      }
    }
    if (found.size === 0) {
      await this.respond(r, [this.err(r.op, msgError("ErrorNameResolutionNoResults", "No results were found."))]);
      return;
    }
    const resolutions = [...found.values()]
      .map((mbx) => `<t:Resolution><t:Mailbox>${el("t:Name", mbx.displayName)}${el("t:EmailAddress", mbx.upn)}<t:RoutingType>SMTP</t:RoutingType><t:MailboxType>Mailbox</t:MailboxType></t:Mailbox></t:Resolution>`)
      .join("");
    const set = `<m:ResolutionSet TotalItemsInView="${found.size}" IncludesLastItemInRange="true">${resolutions}</m:ResolutionSet>`;
    if (found.size === 1) {
      await this.respond(r, [this.ok(r.op, set)]);
      return;
    }
    await this.respond(r, [
      `<m:ResolveNamesResponseMessage ResponseClass="Warning"><m:MessageText>Multiple results were found.</m:MessageText><m:ResponseCode>ErrorNameResolutionMultipleResults</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>${set}</m:ResolveNamesResponseMessage>`,
    ]);
  }

  private createOne(mbx: MailboxState, parent: FolderRec, spec: XNode): FolderRec | MsgError {
    const defaults: Record<string, string> = { Folder: "IPF.Note", CalendarFolder: "IPF.Appointment", ContactsFolder: "IPF.Contact", TasksFolder: "IPF.Task" };
    if (!(spec.name in defaults)) return msgError("ErrorInvalidRequest", `${TEXT.ErrorInvalidRequest} ${spec.name} cannot be created by the simulator.`);
    const cls = child(spec, "FolderClass")?.text.trim() || defaults[spec.name];
    if (!FOLDER_CLASS.test(cls)) return msgError("ErrorInvalidRequest", `${TEXT.ErrorInvalidRequest} Invalid FolderClass '${cls}'.`);
    const name = child(spec, "DisplayName")?.text ?? "";
    if (name.trim() === "" || name.length > MAX_FOLDER_NAME) return msgError("ErrorInvalidRequest", `${TEXT.ErrorInvalidRequest} DisplayName must be 1 to ${MAX_FOLDER_NAME} characters.`);
    const lower = name.toLowerCase();
    for (const c of parent.children) if (mbx.folders.get(c)?.displayName.toLowerCase() === lower) return msgError("ErrorFolderExists");
    return this.model.addFolder(mbx, { parentFolderId: parent.id, displayName: name, type: cls });
  }
}

function responseStart(op: Operation): string {
  return `<m:${op}Response xmlns:m="${NS_MESSAGES}" xmlns:t="${NS_TYPES}"><m:ResponseMessages>`;
}

function responseEnd(op: Operation): string {
  return `</m:ResponseMessages></m:${op}Response>${ENVELOPE_END}`;
}

/** The EWS folder element for a folder class. */
export function folderElement(cls: string): "Folder" | "CalendarFolder" | "ContactsFolder" | "TasksFolder" {
  if (/^IPF\.Appointment(\.|$)/i.test(cls)) return "CalendarFolder";
  if (/^IPF\.Contact(\.|$)/i.test(cls)) return "ContactsFolder";
  if (/^IPF\.Task(\.|$)/i.test(cls)) return "TasksFolder";
  return "Folder";
}

/** The EWS item element for an item class. */
export function itemElement(cls: string): "Message" | "CalendarItem" | "Contact" | "Task" | "Item" {
  if (/^IPM\.Note(\.|$)/i.test(cls)) return "Message";
  if (/^IPM\.Appointment(\.|$)/i.test(cls)) return "CalendarItem";
  if (/^IPM\.Contact$/i.test(cls)) return "Contact";
  if (/^IPM\.Task$/i.test(cls)) return "Task";
  return "Item";
}

function wrap76(s: string): string {
  if (s.length <= 76) return s;
  const lines: string[] = [];
  for (let i = 0; i < s.length; i += 76) lines.push(s.slice(i, i + 76));
  return lines.join("\n");
}

/** An NTLM Type 2 (challenge) message: Unicode, NTLMv2 (extended security, target info), domain target. */
function ntlmType2(challenge: Buffer, domain: string): Buffer {
  const name = Buffer.from(domain.toUpperCase(), "utf16le");
  const info = Buffer.concat([avPair(2, name), avPair(0, Buffer.alloc(0))]);
  const flags = 0x1 | 0x4 | 0x200 | 0x8000 | 0x10000 | 0x80000 | 0x800000 | 0x2000000 | 0x20000000 | 0x80000000;
  const head = Buffer.alloc(56);
  head.write("NTLMSSP\0", 0, "latin1");
  head.writeUInt32LE(2, 8);
  head.writeUInt16LE(name.length, 12);
  head.writeUInt16LE(name.length, 14);
  head.writeUInt32LE(56, 16);
  head.writeUInt32LE(flags >>> 0, 20);
  challenge.copy(head, 24);
  head.writeUInt16LE(info.length, 40);
  head.writeUInt16LE(info.length, 42);
  head.writeUInt32LE(56 + name.length, 44);
  head.writeUInt8(10, 48); // version 10.0, build 17763, NTLM revision 15
  head.writeUInt16LE(17763, 50);
  head.writeUInt8(15, 55);
  return Buffer.concat([head, name, info]);
}

function avPair(id: number, value: Buffer): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt16LE(id, 0);
  b.writeUInt16LE(value.length, 2);
  return Buffer.concat([b, value]);
}

