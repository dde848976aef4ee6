import { type BackupRequest, backupInstanceId, DEFAULT_PAGE_ITEMS } from "./orchestration";
import type { Services } from "../services";
import { resolveMailboxArg, type SourceKind } from "../source";

export interface PreparedBackup {
  instanceId: string;
  request: BackupRequest;
}

/**
 * What every starter does before starting the root orchestration: resolve the mailbox (so that a
 * UPN and its MBX id share one singleton instance, and an unknown mailbox is a clear error now
 * rather than a failed run later) and fix the run's limits from the settings.
 */
export async function prepareBackup(svc: Services, mailbox: string, options: { full?: boolean; pageItems?: number; source?: SourceKind; signal?: AbortSignal } = {}): Promise<PreparedBackup> {
  const resolved = await resolveMailboxArg(svc.sources, mailbox, { source: options.source, signal: options.signal });
  return {
    instanceId: backupInstanceId(resolved.mailboxId),
    request: {
      mailbox,
      mailboxId: resolved.mailboxId,
      window: svc.limits.maxRequestsPerMailbox,
      batchMaxBytes: svc.limits.batchMaxBytes,
      pageItems: options.pageItems ?? DEFAULT_PAGE_ITEMS,
      ...(options.full ? { full: true } : {}),
    },
  };
}
