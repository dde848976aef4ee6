import { GraphError, InvalidInputError } from "../errors";
import type { ExportElement } from "../export/exportResponse";
import { readAll, sleep } from "../graph/graphClient";
import { type DeltaPage, type MailboxFolder, type MailboxItemInfo, type ResolvedMailbox, validateExportIds } from "../graph/mailboxApi";
import type { ImportedItem, ImportRequest, MailboxSource } from "../source";
import { base64Of } from "../util/base64";
import type { EwsClient } from "./ewsClient";
import { readEwsExportResponse } from "./exportItemsReader";
import { EwsError, messageError, type ResponseMessage, responseMessages, soapEnvelope, TRANSIENT_EWS_CODES } from "./soap";
import { child, childrenNamed, parseXml, textOf, type XmlNode, type XmlSpec } from "./xml";

/**
 * Exchange Server mailboxes through EWS (research/graph-api.md §10), with the same shapes the
 * backup and restore code gets from Graph:
 *
 *   resolveMailbox   GetFolder msgfolderroot of the address (ErrorNonExistentMailbox: unknown)
 *   walkFolders      SyncFolderHierarchy from msgfolderroot (+ GetFolder for well-known names)
 *   itemsDeltaPage   SyncFolderItems, at most 512 changes a call; the SyncState is the "link"
 *   exportItems      ExportItems, up to MAILVAULT_EWS_BATCH_ITEMS ids, read as a stream
 *   importItem       UploadItems with CreateNew, Update or UpdateOrCreate, the item streamed in
 *
 * Mailbox ids are `EWS:<smtp address>`.
 */

export const EWS_MAX_SYNC_CHANGES = 512;
/** Microsoft advises at most 100 items per ExportItems call. */
export const EWS_MAX_EXPORT_IDS = 100;

/** Distinguished folders of Exchange 2010 SP1 that Graph also knows by these names (for restores into original folders). */
const WELL_KNOWN = ["inbox", "sentitems", "drafts", "deleteditems", "junkemail", "outbox", "calendar", "contacts", "tasks", "notes", "journal"];
const FOLDER_ELEMENTS = new Set(["Folder", "CalendarFolder", "ContactsFolder", "TasksFolder"]);
/** local@domain: the builder escapes what XML needs (' and & are valid in local parts); no spaces, controls, brackets or quotes. */
const ADDRESS = /^[^\s@<>"\x00-\x1f\\/]{1,64}@[A-Za-z0-9.-]{1,253}$/;

const NO_MAILBOX = new Set(["ErrorNonExistentMailbox", "ErrorMailboxNotFound", "ErrorImpersonateUserDenied", "ErrorImpersonationDenied", "ErrorMissingEmailAddress"]);

const ACTIONS = { create: "CreateNew", update: "Update", upsert: "UpdateOrCreate" } as const;

export class EwsSource implements MailboxSource {
  readonly kind = "ews" as const;
  readonly maxDeltaPageSize = EWS_MAX_SYNC_CHANGES;
  readonly importModes = ["create", "update", "upsert"] as const;

  constructor(
    readonly client: EwsClient,
    readonly maxExportIds: number = 50,
    /** retryDelayMs: first pause before a transient per-message answer (ErrorServerBusy without a back-off, ...) is asked again. */
    private readonly options: { retryDelayMs?: number } = {},
  ) {
    if (!Number.isInteger(maxExportIds) || maxExportIds < 1 || maxExportIds > EWS_MAX_EXPORT_IDS) {
      throw new InvalidInputError(`MAILVAULT_EWS_BATCH_ITEMS must be 1 to ${EWS_MAX_EXPORT_IDS}`, "InvalidSetting");
    }
  }

  async resolveMailbox(mailbox: string, signal?: AbortSignal): Promise<ResolvedMailbox> {
    // One mailbox, one id: an alias resolves to the primary address, so that two names never make
    // two backup histories (or two backups of one mailbox at once).
    const address = await this.primaryAddress(ewsAddress(mailbox), signal);
    const unknown = (code: string) => new GraphError(404, "MailboxNotFound", `Exchange (EWS) has no mailbox ${address} the service account may open (${code})`);
    let m: ResponseMessage;
    try {
      m = (await this.getFolders(address, [this.distinguished("msgfolderroot", address)], "IdOnly", signal))[0];
    } catch (e) {
      // Servers answer an unknown or forbidden impersonated mailbox with a SOAP fault, not a message.
      if (e instanceof EwsError && NO_MAILBOX.has(e.code)) throw unknown(e.code);
      throw e;
    }
    if (!m.ok) {
      if (NO_MAILBOX.has(m.code)) throw unknown(m.code);
      throw messageError(m, "GetFolder");
    }
    return { mailboxId: `EWS:${address}`, requested: mailbox };
  }

  async *walkFolders(mailboxId: string, signal?: AbortSignal): AsyncGenerator<MailboxFolder> {
    const address = ewsAddress(mailboxId);
    const wellKnown = await this.wellKnownIds(address, signal);
    const seen = new Set<string>();
    const all: MailboxFolder[] = [];
    let syncState: string | undefined;
    for (let round = 0; round < 1000; round++) {
      const m = raiseIfError(
        await this.callOne(address, "SyncFolderHierarchy", {
          "m:SyncFolderHierarchy": {
            "m:FolderShape": { "t:BaseShape": "AllProperties" },
            "m:SyncFolderId": this.distinguished("msgfolderroot", address),
            ...(syncState ? { "m:SyncState": syncState } : {}),
          },
        }, signal),
        "SyncFolderHierarchy",
      );
      syncState = textOf(m.node, "SyncState");
      for (const change of child(m.node, "Changes")?.children ?? []) {
        if (change.name !== "Create" && change.name !== "Update") continue;
        const f = change.children.find((c) => FOLDER_ELEMENTS.has(c.name));
        const id = child(f, "FolderId")?.attrs.Id;
        if (!f || !id || seen.has(id)) continue; // search folders hold links, not items: skipped
        seen.add(id);
        all.push({
          id,
          displayName: textOf(f, "DisplayName") ?? "",
          parentFolderId: child(f, "ParentFolderId")?.attrs.Id,
          type: textOf(f, "FolderClass") || "IPF.Note",
          wellKnownName: wellKnown.get(id) ?? null,
          totalItemCount: intOf(textOf(f, "TotalCount")),
          childFolderCount: intOf(textOf(f, "ChildFolderCount")),
        });
      }
      if (textOf(m.node, "IncludesLastFolderInRange") !== "false" || !syncState) {
        yield* parentsFirst(all);
        return;
      }
    }
    throw new EwsError(200, "SyncDidNotEnd", "SyncFolderHierarchy kept saying more folders follow");
  }

  async itemsDeltaPage(mailboxId: string, folderId: string, link?: string, options?: { pageSize?: number; signal?: AbortSignal }): Promise<DeltaPage> {
    const address = ewsAddress(mailboxId);
    const max = Math.max(1, Math.min(EWS_MAX_SYNC_CHANGES, options?.pageSize ?? EWS_MAX_SYNC_CHANGES));
    const m = raiseIfError(
      await this.callOne(address, "SyncFolderItems", {
        "m:SyncFolderItems": {
          "m:ItemShape": {
            "t:BaseShape": "IdOnly",
            "t:AdditionalProperties": { "t:FieldURI": [{ "@_FieldURI": "item:ItemClass" }, { "@_FieldURI": "item:Size" }, { "@_FieldURI": "item:DateTimeCreated" }] },
          },
          "m:SyncFolderId": { "t:FolderId": { "@_Id": folderId } },
          ...(link ? { "m:SyncState": link } : {}),
          "m:MaxChangesReturned": max,
          "m:SyncScope": "NormalItems",
        },
      }, options?.signal),
      "SyncFolderItems",
    );
    const state = textOf(m.node, "SyncState");
    if (!state) throw new EwsError(200, "DeltaWithoutLink", "a SyncFolderItems answer carried no SyncState", { retryable: true });
    const items: MailboxItemInfo[] = [];
    const removed: string[] = [];
    for (const change of child(m.node, "Changes")?.children ?? []) {
      if (change.name === "Delete") {
        const id = child(change, "ItemId")?.attrs.Id;
        if (id) removed.push(id);
        continue;
      }
      // Create, Update, and ReadFlagChange (the read flag is part of the item: its changeKey moved on).
      const item = change.name === "ReadFlagChange" ? change : change.children.find((c) => child(c, "ItemId"));
      const idNode = child(item, "ItemId");
      if (!item || !idNode?.attrs.Id) continue;
      items.push({
        id: idNode.attrs.Id,
        changeKey: idNode.attrs.ChangeKey || undefined,
        size: intOf(textOf(item, "Size")),
        type: textOf(item, "ItemClass") || undefined,
        createdDateTime: textOf(item, "DateTimeCreated") || undefined,
      });
    }
    const done = textOf(m.node, "IncludesLastItemInRange") !== "false";
    return { items, removed, ...(done ? { deltaLink: state } : { nextLink: state }) };
  }

  async exportItems(mailboxId: string, itemIds: readonly string[], consume: (elements: AsyncIterable<ExportElement>) => Promise<void>, signal?: AbortSignal): Promise<void> {
    const address = ewsAddress(mailboxId);
    const ids = validateExportIds(itemIds, this.maxExportIds, "ExportItems");
    const envelope = soapEnvelope(this.client.header(address), { "m:ExportItems": { "m:ItemIds": { "t:ItemId": ids.map((id) => ({ "@_Id": id })) } } });
    await this.client.stream(
      { mailbox: address, operation: "ExportItems", envelope: async function* () { yield Buffer.from(envelope); }, signal },
      (body) => consume(readEwsExportResponse(body, ids)),
    );
  }

  async getFolder(mailboxId: string, folderId: string, signal?: AbortSignal): Promise<MailboxFolder | undefined> {
    const address = ewsAddress(mailboxId);
    const ref = WELL_KNOWN.includes(folderId) || folderId === "msgfolderroot" ? this.distinguished(folderId, address) : { "t:FolderId": { "@_Id": folderId } };
    const m = (await this.getFolders(address, [ref], "AllProperties", signal))[0];
    if (!m.ok) {
      if (m.code === "ErrorFolderNotFound" || m.code === "ErrorItemNotFound" || m.code === "ErrorInvalidIdMalformed") return undefined;
      throw messageError(m, "GetFolder");
    }
    const f = child(child(m.node, "Folders"), "Folder") ?? child(m.node, "Folders")?.children[0];
    const id = child(f, "FolderId")?.attrs.Id;
    if (!f || !id) return undefined;
    return { id, displayName: textOf(f, "DisplayName") ?? "", parentFolderId: child(f, "ParentFolderId")?.attrs.Id, type: textOf(f, "FolderClass") || "IPF.Note" };
  }

  async createFolder(mailboxId: string, parentFolderId: string | undefined, spec: { displayName: string; type?: string }, signal?: AbortSignal): Promise<MailboxFolder> {
    const address = ewsAddress(mailboxId);
    const parent = parentFolderId ? { "t:FolderId": { "@_Id": parentFolderId } } : this.distinguished("msgfolderroot", address);
    const m = await this.callOne(address, "CreateFolder", { "m:CreateFolder": { "m:ParentFolderId": parent, "m:Folders": { "t:Folder": { "t:FolderClass": spec.type ?? "IPF.Note", "t:DisplayName": spec.displayName } } } }, signal);
    if (m.ok) {
      const id = child(child(m.node, "Folders")?.children[0], "FolderId")?.attrs.Id;
      if (!id) throw new EwsError(200, "MalformedResponse", "CreateFolder answered without a FolderId");
      return { id, displayName: spec.displayName, parentFolderId, type: spec.type ?? "IPF.Note" };
    }
    if (m.code !== "ErrorFolderExists") throw messageError(m, "CreateFolder");
    // Re-running a restore: the folder is there from last time; find it.
    const parentId = parentFolderId ?? (await this.getFolder(mailboxId, "msgfolderroot", signal))?.id;
    for await (const f of this.walkFolders(mailboxId, signal)) {
      if (f.parentFolderId === parentId && f.displayName.toLowerCase() === spec.displayName.toLowerCase()) return f;
    }
    throw messageError(m, "CreateFolder");
  }

  async importItem(mailboxId: string, r: ImportRequest): Promise<ImportedItem> {
    const address = ewsAddress(mailboxId);
    if (r.mode !== "create" && !r.itemId) throw new InvalidInputError(`restore mode ${r.mode} needs the id of the item to overwrite`);
    const marker = "\u2063MAILVAULT-DATA\u2063";
    const item: XmlSpec = {
      "@_CreateAction": ACTIONS[r.mode],
      "@_IsAssociated": "false",
      "t:ParentFolderId": { "@_Id": r.folderId },
      ...(r.mode !== "create" ? { "t:ItemId": { "@_Id": r.itemId as string } } : {}),
      "t:Data": marker,
    };
    const [before, after] = soapEnvelope(this.client.header(address), { "m:UploadItems": { "m:Items": { "t:Item": item } } }).split(marker);
    let delay = this.options.retryDelayMs ?? 1000;
    for (let attempt = 1; ; attempt++) {
      // Opened before the call: a stored object that cannot be read fails as itself, not as a
      // network error retried eight times. Later sends of the same attempt open it afresh.
      let opened: AsyncIterable<Uint8Array> | undefined = await r.open();
      const env = await this.client.stream(
        {
          mailbox: address,
          operation: "UploadItems",
          signal: r.signal,
          envelope: async function* () {
            const bytes = opened ?? (await r.open());
            opened = undefined;
            yield Buffer.from(before);
            yield* base64Of(bytes);
            yield Buffer.from(after);
          },
        },
        async (body) => parseXml(await readAll(body, 1024 * 1024)),
      );
      const m = single(env, "UploadItems");
      if (m.ok) {
        const id = child(m.node, "ItemId");
        if (!id?.attrs.Id) throw new EwsError(200, "MalformedResponse", "UploadItems answered without an ItemId");
        return { itemId: id.attrs.Id, changeKey: id.attrs.ChangeKey || undefined };
      }
      if (!TRANSIENT_EWS_CODES.has(m.code) || attempt >= 5) throw messageError(m, "UploadItems");
      if (m.backOffMs !== undefined) this.client.holdOff(address, m.backOffMs);
      await sleep(Math.max(delay, m.backOffMs ?? 0), r.signal);
      delay *= 2;
    }
  }

  /**
   * A call about one thing, whose one response message is returned. A transient answer in the
   * message (ErrorServerBusy with BackOffMilliseconds, a store briefly unavailable) is asked again,
   * a few times, the next call of the mailbox waiting out the server's back-off.
   */
  private async callOne(address: string, operation: string, body: XmlSpec, signal?: AbortSignal): Promise<ResponseMessage> {
    let delay = this.options.retryDelayMs ?? 1000;
    for (let attempt = 1; ; attempt++) {
      const m = single(await this.client.call({ mailbox: address, operation, body, signal }), operation);
      if (m.ok || !TRANSIENT_EWS_CODES.has(m.code) || attempt >= 5) return m;
      if (m.backOffMs !== undefined) this.client.holdOff(address, m.backOffMs);
      else await sleep(delay, signal);
      delay *= 2;
    }
  }

  private distinguished(id: string, address: string): XmlSpec {
    // Naming the mailbox works with impersonation and is what delegate access needs.
    return { "t:DistinguishedFolderId": { "@_Id": id, "t:Mailbox": { "t:EmailAddress": address } } };
  }

  /**
   * The primary SMTP address of the mailbox that owns `address` (ResolveNames with `smtp:`, which
   * matches proxy addresses exactly). A server that will not answer the question leaves the
   * address as given; one that finds nothing means there is no such mailbox.
   */
  private async primaryAddress(address: string, signal?: AbortSignal): Promise<string> {
    let m: ResponseMessage;
    try {
      const env = await this.client.call({ mailbox: address, operation: "ResolveNames", impersonate: false, body: { "m:ResolveNames": { "@_ReturnFullContactData": "false", "m:UnresolvedEntry": `smtp:${address}` } }, signal });
      m = responseMessages(env, "ResolveNames")[0];
    } catch (e) {
      // Not allowed, or not understood (an answer of another shape): keep the address as given.
      if (e instanceof EwsError && e.status !== 401 && e.status !== 403 && (!e.retryable || e.code === "MalformedResponse")) return address;
      throw e;
    }
    // No results (hidden from address lists, outside the account's address book policy) or any other
    // refusal: keep the address as typed and let GetFolder decide whether the mailbox exists.
    if (!m || (!m.ok && m.code !== "ErrorNameResolutionMultipleResults")) return address;
    const mailboxes = childrenNamed(child(m.node, "ResolutionSet"), "Resolution")
      .map((r) => child(r, "Mailbox"))
      .filter((x) => x && (textOf(x, "MailboxType") ?? "Mailbox") === "Mailbox" && (textOf(x, "RoutingType") ?? "SMTP").toUpperCase() === "SMTP")
      .map((x) => (textOf(x, "EmailAddress") ?? "").toLowerCase())
      .filter((a) => ADDRESS.test(a));
    const unique = [...new Set(mailboxes)];
    if (unique.length !== 1 || unique[0] === address) return address;
    // ResolveNames matches prefixes ("bob@contoso.co" finds "bob@contoso.com"): a different primary
    // address counts only if it opens the very same mailbox as the address typed.
    const [typed, primary] = await Promise.all([this.rootFolderId(address, "SmtpAddress", signal), this.rootFolderId(unique[0], "PrimarySmtpAddress", signal)]);
    return typed !== undefined && typed === primary ? unique[0] : address;
  }

  /** The msgfolderroot id of a mailbox, or undefined when it cannot be opened. */
  private async rootFolderId(address: string, by: "PrimarySmtpAddress" | "SmtpAddress", signal?: AbortSignal): Promise<string | undefined> {
    try {
      const m = (await this.getFolders(address, [this.distinguished("msgfolderroot", address)], "IdOnly", signal, by))[0];
      return m?.ok ? child(child(m.node, "Folders")?.children[0], "FolderId")?.attrs.Id : undefined;
    } catch (e) {
      if (e instanceof EwsError && !e.retryable && e.status !== 401 && e.status !== 403) return undefined;
      throw e;
    }
  }

  private async getFolders(address: string, ids: XmlSpec[], shape: "IdOnly" | "AllProperties", signal?: AbortSignal, impersonateBy?: "PrimarySmtpAddress" | "SmtpAddress"): Promise<ResponseMessage[]> {
    const folderIds: XmlSpec = {};
    for (const ref of ids) for (const [k, v] of Object.entries(ref)) folderIds[k] = [...((folderIds[k] as XmlSpec[] | undefined) ?? []), v as XmlSpec];
    const env = await this.client.call({ mailbox: address, operation: "GetFolder", impersonateBy, body: { "m:GetFolder": { "m:FolderShape": { "t:BaseShape": shape }, "m:FolderIds": folderIds } }, signal });
    return responseMessages(env, "GetFolder");
  }

  /** Folder id -> distinguished name, for the folders both EWS and Graph name. */
  private async wellKnownIds(address: string, signal?: AbortSignal): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    let messages: ResponseMessage[];
    try {
      messages = await this.getFolders(address, WELL_KNOWN.map((n) => this.distinguished(n, address)), "IdOnly", signal);
    } catch (e) {
      if (e instanceof EwsError && !e.retryable) return out; // an older server refusing a name: no roles, still a backup
      throw e;
    }
    messages.forEach((m, i) => {
      const id = m.ok ? child(child(m.node, "Folders")?.children[0], "FolderId")?.attrs.Id : undefined;
      if (id && WELL_KNOWN[i]) out.set(id, WELL_KNOWN[i]);
    });
    return out;
  }
}

/** Parents before children (restores create folders in this order), whatever order the server used. */
function parentsFirst(folders: MailboxFolder[]): MailboxFolder[] {
  const ids = new Set(folders.map((f) => f.id));
  const children = new Map<string, MailboxFolder[]>();
  const roots: MailboxFolder[] = [];
  for (const f of folders) {
    if (f.parentFolderId && ids.has(f.parentFolderId) && f.parentFolderId !== f.id) children.set(f.parentFolderId, [...(children.get(f.parentFolderId) ?? []), f]);
    else roots.push(f);
  }
  const out: MailboxFolder[] = [];
  const queue = [...roots];
  while (queue.length) {
    const f = queue.shift() as MailboxFolder;
    out.push(f);
    queue.push(...(children.get(f.id) ?? []));
  }
  // A cycle (never from a sane server) would leave folders out: keep them, at the end.
  const placed = new Set(out.map((f) => f.id));
  return [...out, ...folders.filter((f) => !placed.has(f.id))];
}

/** `ews:alice@contoso.com`, `EWS:alice@contoso.com` or `alice@contoso.com` -> `alice@contoso.com`. */
export function ewsAddress(mailbox: string): string {
  const address = mailbox.replace(/^ews:/i, "").trim().toLowerCase();
  if (!ADDRESS.test(address)) {
    throw new InvalidInputError(`an Exchange Server (EWS) mailbox is named by its SMTP address, e.g. ews:alice@contoso.com; got ${JSON.stringify(mailbox).slice(0, 80)}`, "InvalidMailbox");
  }
  return address;
}

function raiseIfError(m: ResponseMessage, operation: string): ResponseMessage {
  if (!m.ok) throw messageError(m, operation);
  return m;
}

/** The only response message of a one-thing call. */
function single(env: XmlNode, operation: string): ResponseMessage {
  const m = responseMessages(env, operation)[0];
  if (!m) throw new EwsError(200, "MalformedResponse", `the ${operation} response has no response message`, { retryable: true });
  return m;
}

function intOf(s: string | undefined): number | undefined {
  if (s === undefined || s === "") return undefined;
  const n = Number(s);
  return Number.isFinite(n) ? n : undefined;
}

