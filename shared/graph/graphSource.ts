import { InvalidInputError } from "../errors";
import { type ExportElement, readExportResponse } from "../export/exportResponse";
import type { Logger } from "../log";
import { Importer, type ImportPacing } from "../restore/importer";
import type { ImportedItem, ImportRequest, MailboxSource } from "../source";
import { MAX_EXPORT_IDS, type MailboxApi } from "./mailboxApi";

/** Exchange Online through Microsoft Graph: the mailbox import/export API and import sessions. */
export class GraphSource implements MailboxSource {
  readonly kind = "graph" as const;
  readonly maxExportIds = MAX_EXPORT_IDS;
  readonly maxDeltaPageSize = 1000;
  // Graph's import `update` needs the target's current changeKey, which a backup does not know.
  readonly importModes = ["create"] as const;
  private readonly importer: Importer;

  constructor(readonly api: MailboxApi, options: { pacing?: ImportPacing; logger?: Logger; importRetryDelayMs?: number } = {}) {
    this.importer = new Importer(api, options.pacing, options.logger, options.importRetryDelayMs);
  }

  resolveMailbox(mailbox: string, signal?: AbortSignal) {
    return this.api.resolveMailbox(mailbox, signal);
  }

  walkFolders(mailboxId: string, signal?: AbortSignal) {
    return this.api.walkFolders(mailboxId, signal);
  }

  itemsDeltaPage(mailboxId: string, folderId: string, link?: string, options?: { pageSize?: number; signal?: AbortSignal }) {
    return this.api.itemsDeltaPage(mailboxId, folderId, link, options);
  }

  async exportItems(mailboxId: string, itemIds: readonly string[], consume: (elements: AsyncIterable<ExportElement>) => Promise<void>, signal?: AbortSignal): Promise<void> {
    await this.api.exportItems(mailboxId, itemIds, (body) => consume(readExportResponse(body)), signal);
  }

  getFolder(mailboxId: string, folderId: string, signal?: AbortSignal) {
    return this.api.getFolder(mailboxId, folderId, signal);
  }

  createFolder(mailboxId: string, parentFolderId: string | undefined, spec: { displayName: string; type?: string }, signal?: AbortSignal) {
    return this.api.createFolder(mailboxId, parentFolderId, spec, signal);
  }

  async importItem(mailboxId: string, r: ImportRequest): Promise<ImportedItem> {
    if (r.mode !== "create") throw new InvalidInputError(`restore mode ${r.mode} needs an Exchange Server (EWS) target; Graph import sessions restore with mode create`, "UnsupportedRestoreMode");
    return this.importer.importItem(mailboxId, r.folderId, r.size, r.open, { signal: r.signal });
  }
}
