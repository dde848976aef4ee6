import { InvalidInputError } from "./errors";
import type { ExportElement } from "./export/exportResponse";
import type { DeltaPage, MailboxFolder, ResolvedMailbox } from "./graph/mailboxApi";

/**
 * Where a mailbox's items come from and go back to. Two sources share the orchestrations, stores
 * and backup format: Microsoft Graph (Exchange Online, `MBX:` mailbox ids) and Exchange Web
 * Services (Exchange Server on premises, `EWS:<smtp address>` mailbox ids). The mailbox id says
 * which source a mailbox belongs to, so every activity finds its source from its input alone.
 */

export type SourceKind = "graph" | "ews";

export type ImportMode = "create" | "update" | "upsert";

export interface ImportRequest {
  folderId: string;
  /** Stored size in bytes (pacing). */
  size: number;
  /** A fresh stream of the stored bytes, for each attempt. */
  open: () => Promise<AsyncIterable<Uint8Array>>;
  /** create: a new item; update: overwrite `itemId`; upsert: overwrite it, or create it when it is gone. */
  mode: ImportMode;
  /** The item to overwrite (update, upsert). */
  itemId?: string;
  signal?: AbortSignal;
}

export interface ImportedItem {
  itemId: string;
  changeKey?: string;
}

export interface MailboxSource {
  readonly kind: SourceKind;
  /** Most ids one export call takes (Graph: 20; EWS: MAILVAULT_EWS_BATCH_ITEMS). */
  readonly maxExportIds: number;
  /** Most changes one item-delta page returns (Graph: 1,000; EWS SyncFolderItems: 512). */
  readonly maxDeltaPageSize: number;
  /** Import modes this source supports. */
  readonly importModes: readonly ImportMode[];
  resolveMailbox(mailbox: string, signal?: AbortSignal): Promise<ResolvedMailbox>;
  /** Every folder of the mailbox, parents before children, with well-known names where known. */
  walkFolders(mailboxId: string, signal?: AbortSignal): AsyncGenerator<MailboxFolder>;
  /** One page of a folder's item changes: no link starts a full round; a stored link continues from it. */
  itemsDeltaPage(mailboxId: string, folderId: string, link?: string, options?: { pageSize?: number; signal?: AbortSignal }): Promise<DeltaPage>;
  /** One export call for 1..maxExportIds ids; `consume` reads the per-item outcomes while they stream in. */
  exportItems(mailboxId: string, itemIds: readonly string[], consume: (elements: AsyncIterable<ExportElement>) => Promise<void>, signal?: AbortSignal): Promise<void>;
  /** A folder by id or well-known name; undefined when it does not exist. */
  getFolder(mailboxId: string, folderId: string, signal?: AbortSignal): Promise<MailboxFolder | undefined>;
  /** Creates a folder (undefined parent: the top of the mailbox), or returns the existing one of that name. */
  createFolder(mailboxId: string, parentFolderId: string | undefined, spec: { displayName: string; type?: string }, signal?: AbortSignal): Promise<MailboxFolder>;
  importItem(mailboxId: string, request: ImportRequest): Promise<ImportedItem>;
}

/** `EWS:` mailbox ids belong to the EWS source; everything else to Graph. */
export function sourceKindOf(mailboxId: string): SourceKind {
  return /^ews:/i.test(mailboxId) ? "ews" : "graph";
}

/** The sources of this process: Graph always, EWS when MAILVAULT_EWS_URL is set. */
export interface Sources {
  graph: MailboxSource;
  ews?: MailboxSource;
}

export function sourceFor(sources: Sources, mailboxId: string): MailboxSource {
  return sourceKindOf(mailboxId) === "graph" ? sources.graph : ewsSource(sources, mailboxId);
}

function ewsSource(sources: Sources, mailbox: string): MailboxSource {
  if (!sources.ews) throw new InvalidInputError(`${mailbox.slice(0, 80)} is an Exchange Server (EWS) mailbox, but MAILVAULT_EWS_URL is not set`, "EwsNotConfigured");
  return sources.ews;
}

/**
 * Resolves what a user typed: `ews:<address>` (or any address with `source: "ews"`) goes to EWS,
 * anything else (UPN, user id, `MBX:` id) to Graph.
 */
export function resolveMailboxArg(sources: Sources, mailbox: string, options: { source?: SourceKind; signal?: AbortSignal } = {}): Promise<ResolvedMailbox> {
  const kind = options.source ?? sourceKindOf(mailbox);
  if (kind === "ews") return ewsSource(sources, mailbox).resolveMailbox(mailbox, options.signal);
  if (sourceKindOf(mailbox) === "ews") throw new InvalidInputError(`${mailbox.slice(0, 80)} names an EWS mailbox but the Graph source was asked for`);
  return sources.graph.resolveMailbox(mailbox, options.signal);
}
