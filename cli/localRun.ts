import { LocalDurableHost } from "../localhost";
import type { RunSummary } from "../shared/backup/backupRun";
import type { BackupProgress } from "../shared/backup/orchestration";
import { prepareBackup } from "../shared/backup/start";
import { MailvaultError } from "../shared/errors";
import { type Services, setServices } from "../shared/services";

/**
 * Runs the app's real orchestrations in this process on the local durable host: the same code
 * that runs in Azure, without the Functions runtime. Used by the CLI (and the tests of the CLI).
 */

export interface LocalApp {
  host: LocalDurableHost;
  stop(): Promise<void>;
}

export async function startLocalApp(
  services: Services,
  options: { functionKey?: string; port?: number; timerScale?: number; maxEventsPerEpisode?: number } = {},
): Promise<LocalApp> {
  setServices(services);
  const host = await LocalDurableHost.start({
    loadApp: async () => {
      await import("../functions/index.js");
    },
    functionKey: options.functionKey,
    port: options.port,
    timerScale: options.timerScale,
    maxEventsPerEpisode: options.maxEventsPerEpisode,
  });
  return {
    host,
    async stop() {
      await host.stop();
      setServices(undefined);
    },
  };
}

export interface BackupOutcome {
  mailbox: string;
  summary?: RunSummary;
  /** Set when the run itself failed (not individual items). */
  error?: { code: string; message: string };
}

/** Backs up one mailbox on the local host and waits for the run to end. */
export async function backupOnHost(
  app: LocalApp,
  services: Services,
  mailbox: string,
  options: { full?: boolean; pageItems?: number; onProgress?: (p: BackupProgress) => void; pollMs?: number } = {},
): Promise<BackupOutcome> {
  const prepared = await prepareBackup(services, mailbox, { full: options.full, pageItems: options.pageItems });
  const existing = app.host.getStatus(prepared.instanceId);
  if (existing && ["Running", "Pending", "ContinuedAsNew"].includes(existing.runtimeStatus)) {
    throw new MailvaultError("internal", "BackupAlreadyRunning", `a backup of ${mailbox} is already running`);
  }
  await app.host.startNew("backupMailbox", { instanceId: prepared.instanceId, input: prepared.request });
  const timer = options.onProgress
    ? setInterval(() => {
        const s = app.host.getStatus(prepared.instanceId);
        if (s?.customStatus) options.onProgress?.(s.customStatus as BackupProgress);
      }, options.pollMs ?? 200)
    : undefined;
  try {
    const status = await app.host.waitForCompletion(prepared.instanceId, { timeoutMs: 7 * 24 * 3600_000 });
    if (status.customStatus) options.onProgress?.(status.customStatus as BackupProgress);
    if (status.runtimeStatus !== "Completed") {
      return { mailbox, error: { code: "RunFailed", message: `backup of ${mailbox} ended ${status.runtimeStatus}: ${String(status.output ?? "")}`.slice(0, 2000) } };
    }
    return { mailbox, summary: status.output as RunSummary };
  } finally {
    if (timer) clearInterval(timer);
  }
}
