import type { Readable } from "node:stream";
import { GraphError, InvalidInputError } from "../errors";
import type { GraphClient, OpenResponse } from "./graphClient";

/**
 * The Graph mailbox import/export surface mailvault uses (primary and shared mailboxes):
 * `/users/{id}/settings/exchange`, `/admin/exchange/mailboxes/{id}/folders…`, item listing and delta,
 * and `exportItems`. Shapes follow research/graph-api.md §1–4.
 */

export const MAX_EXPORT_IDS = 20;

export interface MailboxFolder {
  id: string;
  displayName: string;
  parentFolderId?: string;
  childFolderCount?: number;
  totalItemCount?: number;
  type?: string;
  wellKnownName?: string | null;
}

export interface MailboxItemInfo {
  id: string;
  changeKey?: string;
  size?: number;
  type?: string;
  createdDateTime?: string;
  lastModifiedDateTime?: string;
}

export interface DeltaPage {
  /** New or changed items. */
  items: MailboxItemInfo[];
  /** Ids reported as removed from the folder (deleted or moved away). */
  removed: string[];
  /** Set while the round goes on: call it for the next page. */
  nextLink?: string;
  /** Set on the last page of a round: store it and call it next time for the changes since. */
  deltaLink?: string;
}

export interface ResolvedMailbox {
  /** The `MBX:` id the mailbox APIs take. */
  mailboxId: string;
  /** What the caller gave (UPN, user id or MBX id). */
  requested: string;
}

/** A Graph change-notification subscription (research/graph-api.md §8.1). */
export interface GraphSubscription {
  id: string;
  resource: string;
  changeType: string;
  notificationUrl: string;
  lifecycleNotificationUrl?: string | null;
  expirationDateTime: string;
  /** Graph echoes it on create; list and get may not. A secret: never log it. */
  clientState?: string | null;
}

export interface NewSubscription {
  resource: string;
  changeType: string;
  /** A secret when it carries a function key: never log it. */
  notificationUrl: string;
  lifecycleNotificationUrl: string;
  expirationDateTime: string;
  clientState: string;
}

/** What `/users/{id}` tells about a user (for subscriptions, which are made on `/users/{id}/messages`). */
export interface UserInfo {
  id: string;
  userPrincipalName: string;
  mail: string | null;
}

interface Page<T> {
  value?: T[];
  "@odata.nextLink"?: string;
  "@odata.deltaLink"?: string;
}

const MAILBOX_ARG = /^[^\s/\\?#%\x00-\x1f]{1,320}$/;

/** Validates a mailbox argument (UPN, user id or `MBX:` id) before it goes into a URL path. */
export function validateMailboxArg(value: unknown): string {
  if (typeof value !== "string" || !MAILBOX_ARG.test(value) || value === "." || value === "..") {
    throw new InvalidInputError(
      `mailbox must be a UPN, user id or MBX: id (1-320 characters, no spaces, slashes, '?', '#' or '%'), got ${JSON.stringify(value)?.slice(0, 80)}`,
      "InvalidMailbox",
    );
  }
  return value;
}

/**
 * Validates the ids of one export call: 1 to `max` non-empty strings (Graph's exportItems takes 20;
 * EWS ExportItems the configured batch, `call` names it in messages).
 */
export function validateExportIds(itemIds: unknown, max = MAX_EXPORT_IDS, call = "exportItems"): string[] {
  if (!Array.isArray(itemIds)) throw new InvalidInputError("itemIds must be an array of item id strings", "InvalidItemIds");
  if (itemIds.length === 0) throw new InvalidInputError(`itemIds is empty: ${call} takes 1 to ${max} ids`, "InvalidItemIds");
  if (itemIds.length > max) {
    throw new InvalidInputError(`itemIds has ${itemIds.length} ids: ${call} takes at most ${max}`, "TooManyItemIds");
  }
  itemIds.forEach((id, i) => {
    if (typeof id !== "string" || id.length === 0 || id.length > 1024 || /[\x00-\x1f]/.test(id)) {
      throw new InvalidInputError(`itemIds[${i}] is not a valid item id (a non-empty string of at most 1024 characters)`, "InvalidItemIds");
    }
  });
  return itemIds as string[];
}

export class MailboxApi {
  constructor(readonly graph: GraphClient) {}

  /** UPN or user id -> `MBX:` id through `/users/{id}/settings/exchange`; an `MBX:` id is taken as it is. */
  async resolveMailbox(idOrUpn: string, signal?: AbortSignal): Promise<ResolvedMailbox> {
    validateMailboxArg(idOrUpn);
    if (/^MBX:/i.test(idOrUpn)) return { mailboxId: idOrUpn, requested: idOrUpn };
    try {
      const s = await this.graph.json<{ primaryMailboxId?: unknown }>({
        method: "GET",
        url: `/users/${encodeURIComponent(idOrUpn)}/settings/exchange`,
        signal,
      });
      if (typeof s?.primaryMailboxId !== "string" || !s.primaryMailboxId) {
        throw new GraphError(200, "NoMailbox", `user ${idOrUpn} has no Exchange mailbox`);
      }
      return { mailboxId: s.primaryMailboxId, requested: idOrUpn };
    } catch (e) {
      if (e instanceof GraphError && e.status === 404) {
        throw new GraphError(404, "MailboxNotFound", `no user or mailbox ${idOrUpn} in this tenant`, { requestId: e.requestId });
      }
      throw e;
    }
  }

  /**
   * Users of the tenant that have a mail address, page by page (for "back up every mailbox").
   * A mail address does not guarantee an Exchange mailbox: resolving tells.
   */
  async *listMailUsers(signal?: AbortSignal): AsyncGenerator<{ id: string; userPrincipalName: string; mail: string }> {
    let link: string | undefined = "/users?$select=id,userPrincipalName,mail&$top=999";
    while (link) {
      const page: Page<{ id?: unknown; userPrincipalName?: unknown; mail?: unknown }> = await this.graph.json({ method: "GET", url: link, signal });
      for (const u of page.value ?? []) {
        if (typeof u.id === "string" && typeof u.userPrincipalName === "string" && typeof u.mail === "string" && u.mail) {
          yield { id: u.id, userPrincipalName: u.userPrincipalName, mail: u.mail };
        }
      }
      link = page["@odata.nextLink"];
    }
  }

  /** One page of a folder's child folders (`msgfolderroot` for the top level). */
  async childFoldersPage(mailboxId: string, parentFolderId: string, link?: string, signal?: AbortSignal): Promise<Page<MailboxFolder>> {
    const url = link ?? `${this.mailboxPath(mailboxId)}/folders/${encodeURIComponent(parentFolderId)}/childFolders?$top=100`;
    return this.graph.json<Page<MailboxFolder>>({ method: "GET", url, mailboxId, signal });
  }

  /** Every folder of the mailbox, walking child folders breadth first from the root. */
  async *walkFolders(mailboxId: string, signal?: AbortSignal): AsyncGenerator<MailboxFolder> {
    const queue = ["msgfolderroot"];
    const seen = new Set<string>();
    while (queue.length) {
      const parent = queue.shift() as string;
      let link: string | undefined;
      do {
        const page = await this.childFoldersPage(mailboxId, parent, link, signal);
        for (const f of page.value ?? []) {
          if (!isFolder(f) || seen.has(f.id)) continue;
          seen.add(f.id);
          yield f;
          if (f.childFolderCount === undefined || f.childFolderCount > 0) queue.push(f.id);
        }
        link = page["@odata.nextLink"];
      } while (link);
    }
  }

  /**
   * One page of a folder's item delta. With no link it starts a full round; with the stored
   * deltaLink it returns the changes since; with a nextLink it continues the round.
   */
  async itemsDeltaPage(mailboxId: string, folderId: string, link?: string, options?: { pageSize?: number; signal?: AbortSignal }): Promise<DeltaPage> {
    const pageSize = options?.pageSize ?? 500;
    const url =
      link ??
      `${this.mailboxPath(mailboxId)}/folders/${encodeURIComponent(folderId)}/items/delta?$select=id,changeKey,size,type,createdDateTime,lastModifiedDateTime`;
    const page = await this.graph.json<Page<Record<string, unknown>>>({
      method: "GET",
      url,
      mailboxId,
      headers: { Prefer: `odata.maxpagesize=${pageSize}` },
      signal: options?.signal,
    });
    const items: MailboxItemInfo[] = [];
    const removed: string[] = [];
    for (const v of page.value ?? []) {
      if (typeof v.id !== "string") continue;
      if (v["@removed"] !== undefined) removed.push(v.id);
      else items.push(toItemInfo(v));
    }
    if (!page["@odata.nextLink"] && !page["@odata.deltaLink"]) {
      throw new GraphError(200, "DeltaWithoutLink", "an item delta page carried neither a nextLink nor a deltaLink");
    }
    return { items, removed, nextLink: page["@odata.nextLink"], deltaLink: page["@odata.deltaLink"] };
  }

  /** A folder by id or well-known name (`inbox`, `msgfolderroot`, ...); undefined when it does not exist. */
  async getFolder(mailboxId: string, folderId: string, signal?: AbortSignal): Promise<MailboxFolder | undefined> {
    try {
      return await this.graph.json<MailboxFolder>({ method: "GET", url: `${this.mailboxPath(mailboxId)}/folders/${encodeURIComponent(folderId)}`, mailboxId, signal });
    } catch (e) {
      if (e instanceof GraphError && e.status === 404) return undefined;
      throw e;
    }
  }

  /**
   * Creates a folder under `parentFolderId` (undefined: the top of the mailbox). When a sibling of
   * that name exists (409), returns the existing one, so that re-running a restore is harmless.
   */
  async createFolder(mailboxId: string, parentFolderId: string | undefined, spec: { displayName: string; type?: string }, signal?: AbortSignal): Promise<MailboxFolder> {
    const url = parentFolderId
      ? `${this.mailboxPath(mailboxId)}/folders/${encodeURIComponent(parentFolderId)}/childFolders`
      : `${this.mailboxPath(mailboxId)}/folders`;
    try {
      return await this.graph.json<MailboxFolder>({ method: "POST", url, mailboxId, body: { displayName: spec.displayName, type: spec.type ?? "IPF.Note" }, signal });
    } catch (e) {
      if (!(e instanceof GraphError && e.status === 409)) throw e;
      let link: string | undefined;
      do {
        const page = await this.childFoldersPage(mailboxId, parentFolderId ?? "msgfolderroot", link, signal);
        const hit = (page.value ?? []).find((f) => f.displayName.toLowerCase() === spec.displayName.toLowerCase());
        if (hit) return hit;
        link = page["@odata.nextLink"];
      } while (link);
      throw e;
    }
  }

  /** A pre-authenticated import URL for the mailbox. The URL is a secret: never log it. */
  async createImportSession(mailboxId: string, signal?: AbortSignal): Promise<{ importUrl: string; expirationDateTime: string }> {
    const s = await this.graph.json<{ importUrl?: unknown; expirationDateTime?: unknown }>({ method: "POST", url: `${this.mailboxPath(mailboxId)}/createImportSession`, mailboxId, signal });
    if (typeof s?.importUrl !== "string" || typeof s.expirationDateTime !== "string") {
      throw new GraphError(200, "InvalidImportSession", "createImportSession returned no importUrl");
    }
    return { importUrl: s.importUrl, expirationDateTime: s.expirationDateTime };
  }

  /**
   * Calls exportItems once and hands the streamed JSON response to `consume`. Ids are validated
   * first (1 to 20 non-empty strings); the mailbox's in-flight slot is held while `consume` reads.
   */
  async exportItems<T>(mailboxId: string, itemIds: readonly string[], consume: (body: Readable, res: OpenResponse) => Promise<T>, signal?: AbortSignal): Promise<T> {
    const ids = validateExportIds(itemIds);
    return this.graph.stream(
      { method: "POST", url: `${this.mailboxPath(mailboxId)}/exportItems`, mailboxId, body: { itemIds: ids }, signal },
      (res) => consume(res.body, res),
    );
  }

  /** A user by UPN or id (`/users/{id}?$select=id,userPrincipalName,mail`). 404 becomes GraphError `UserNotFound`. */
  async getUser(idOrUpn: string, signal?: AbortSignal): Promise<UserInfo> {
    validateMailboxArg(idOrUpn);
    try {
      const u = await this.graph.json<{ id?: unknown; userPrincipalName?: unknown; mail?: unknown }>({
        method: "GET",
        url: `/users/${encodeURIComponent(idOrUpn)}?$select=id,userPrincipalName,mail`,
        signal,
      });
      if (typeof u?.id !== "string" || !u.id) throw new GraphError(200, "InvalidUser", `Graph returned no id for user ${idOrUpn}`);
      return { id: u.id, userPrincipalName: typeof u.userPrincipalName === "string" ? u.userPrincipalName : idOrUpn, mail: typeof u.mail === "string" && u.mail ? u.mail : null };
    } catch (e) {
      if (e instanceof GraphError && e.status === 404) throw new GraphError(404, "UserNotFound", `no user ${idOrUpn} in this tenant`, { requestId: e.requestId });
      throw e;
    }
  }

  /**
   * `POST /subscriptions`. Graph validates the notificationUrl (and lifecycleNotificationUrl) with
   * the validation handshake before it answers 201. Not idempotent: a create retried after a lost
   * response can leave a second subscription (the sync deletes such strays).
   */
  async createSubscription(spec: NewSubscription, signal?: AbortSignal): Promise<GraphSubscription> {
    const s = await this.graph.json<GraphSubscription>({ method: "POST", url: "/subscriptions", body: spec, signal });
    if (typeof s?.id !== "string" || typeof s.expirationDateTime !== "string") throw new GraphError(201, "InvalidSubscription", "POST /subscriptions returned no id or expirationDateTime");
    return s;
  }

  /** `PATCH /subscriptions/{id}` with a new expirationDateTime: renews and reauthorizes the subscription. */
  async renewSubscription(subscriptionId: string, expirationDateTime: string, signal?: AbortSignal): Promise<GraphSubscription> {
    const s = await this.graph.json<GraphSubscription>({ method: "PATCH", url: `/subscriptions/${encodeURIComponent(validateSubscriptionId(subscriptionId))}`, body: { expirationDateTime }, signal });
    if (typeof s?.id !== "string" || typeof s.expirationDateTime !== "string") return { id: subscriptionId, expirationDateTime, resource: "", changeType: "", notificationUrl: "" };
    return s;
  }

  /** `DELETE /subscriptions/{id}`; false when Graph no longer knows it (404). */
  async deleteSubscription(subscriptionId: string, signal?: AbortSignal): Promise<boolean> {
    try {
      await this.graph.json<unknown>({ method: "DELETE", url: `/subscriptions/${encodeURIComponent(validateSubscriptionId(subscriptionId))}`, signal });
      return true;
    } catch (e) {
      if (e instanceof GraphError && e.status === 404) return false;
      throw e;
    }
  }

  /** `GET /subscriptions`, every page: with an app-only token, the subscriptions this app created. */
  async *listSubscriptions(signal?: AbortSignal): AsyncGenerator<GraphSubscription> {
    let link: string | undefined = "/subscriptions";
    while (link) {
      const page: Page<GraphSubscription> = await this.graph.json({ method: "GET", url: link, signal });
      for (const s of page.value ?? []) if (typeof s?.id === "string") yield s;
      link = page["@odata.nextLink"];
    }
  }

  private mailboxPath(mailboxId: string): string {
    validateMailboxArg(mailboxId);
    return `/admin/exchange/mailboxes/${encodeURIComponent(mailboxId)}`;
  }
}

/** Subscription ids are GUIDs (Event Grid shows base64 ones): a bounded token without path characters. */
export function validateSubscriptionId(value: unknown): string {
  if (typeof value !== "string" || !/^[A-Za-z0-9+=_.-]{1,128}$/.test(value)) {
    throw new InvalidInputError(`not a subscription id: ${JSON.stringify(value)?.slice(0, 80)}`, "InvalidSubscriptionId");
  }
  return value;
}

function isFolder(f: unknown): f is MailboxFolder {
  return typeof f === "object" && f !== null && typeof (f as MailboxFolder).id === "string";
}

function toItemInfo(v: Record<string, unknown>): MailboxItemInfo {
  const str = (k: string) => (typeof v[k] === "string" ? (v[k] as string) : undefined);
  let changeKey = str("changeKey");
  const etag = str("@odata.etag");
  if (!changeKey && etag) changeKey = etag.replace(/^W\/"(.*)"$/, "$1");
  return {
    id: v.id as string,
    changeKey,
    size: typeof v.size === "number" ? v.size : undefined,
    type: str("type"),
    createdDateTime: str("createdDateTime"),
    lastModifiedDateTime: str("lastModifiedDateTime"),
  };
}
