#!/usr/bin/env node
import { Command, CommanderError, Option } from "commander";
import { SingleBar } from "cli-progress";
import type { BackupProgress } from "../shared/backup/orchestration";
import { findMailbox, listRuns, pickRun } from "../shared/catalog";
import { type Env, setting } from "../shared/config";
import { describeError, isMailvaultError } from "../shared/errors";
import { validateMailboxArg } from "../shared/graph/mailboxApi";
import { lineLogger, redact } from "../shared/log";
import { createServices, type Services } from "../shared/services";
import type { ItemStore } from "../shared/store/itemStore";
import { openStore } from "../shared/store/openStore";
import { verifyRun } from "../shared/verify";
import { prepareRestore } from "../shared/restore/prepare";
import { resolveMailboxArg } from "../shared/source";
import { backupOnHost, type BackupOutcome, startLocalApp } from "./localRun";

/**
 * mailvault: the CLI (design.md, "CLI contract"). It runs the app's own orchestrations in this
 * process on the local durable host, so a backup made here is the same as one made in Azure.
 *
 * Exit status: 0 all done; 3 finished but some items failed; 2 bad usage or input; 1 other failure.
 */

export interface CliIo {
  stdout: (s: string) => void;
  stderr: (s: string) => void;
  env: Env;
  /** Draw a live progress bar (stderr is a terminal). */
  tty: boolean;
}

export const EXIT = { ok: 0, failure: 1, usage: 2, itemsFailed: 3 } as const;

export async function runCli(argv: string[], io: CliIo): Promise<number> {
  let exitCode: number = EXIT.ok;
  const program = new Command()
    .name("mailvault")
    .description("Full-fidelity backup and restore of Exchange mailboxes into storage you own.")
    .exitOverride()
    .configureOutput({ writeOut: io.stdout, writeErr: io.stderr })
    .showHelpAfterError(false);

  const storeOption = () => new Option("--store <store>", "a folder, https://<account>.blob.core.windows.net/<container>, or blob:<container> (default: MAILVAULT_STORE or ./mailvault-backups)");
  const collect = (v: string, prev: string[] = []) => [...prev, v];
  const ewsOption = () => new Option("--ews-url <url>", "EWS endpoint of your Exchange Server, e.g. https://mail.contoso.com/EWS/Exchange.asmx (default: MAILVAULT_EWS_URL); needed for ews:<address> mailboxes");
  const withEws = (url: string | undefined): CliIo => (url ? { ...io, env: { ...io.env, MAILVAULT_EWS_URL: url } } : io);

  program
    .command("backup")
    .description("back up one or more mailboxes")
    .requiredOption("--mailbox <mailbox>", "UPN, user id or MBX: id (Exchange Online), or ews:<smtp address> (Exchange Server); repeatable", collect)
    .addOption(storeOption())
    .addOption(ewsOption())
    .option("--full", "re-read every folder instead of following stored delta links")
    .option("--json", "print one JSON document on stdout")
    .action(async (opts: { mailbox: string[]; store?: string; ewsUrl?: string; full?: boolean; json?: boolean }) => {
      exitCode = await backupCommand(opts, withEws(opts.ewsUrl));
    });

  program
    .command("restore")
    .description("import a stored run's items into the same or another mailbox")
    .requiredOption("--mailbox <mailbox>", "the backed-up mailbox (UPN, user id, MBX: id or ews:<address>)")
    .option("--run <runId>", "the run to restore from (default: the latest complete one)")
    .option("--to <mailbox>", "the target mailbox (default: the same one); ews:<address> for Exchange Server")
    .option("--folder <folderId>", "restore only this folder and its subfolders (repeatable)", collect)
    .option("--item <itemId>", "restore only this item (repeatable)", collect)
    .option("--folder-name <name>", "name of the new folder the restore goes under")
    .option("--into-original-folders", "put items back at their original folder paths instead of under a new folder")
    .addOption(new Option("--mode <mode>", "create: new items (default); update / upsert (EWS targets): overwrite the backed-up items in place, upsert re-creating deleted ones").choices(["create", "update", "upsert"]))
    .addOption(storeOption())
    .addOption(ewsOption())
    .option("--json", "print one JSON document on stdout")
    .action(async (opts: RestoreOpts) => {
      exitCode = await restoreCommand(opts, withEws(opts.ewsUrl));
    });

  program
    .command("runs")
    .description("list the runs stored for a mailbox")
    .requiredOption("--mailbox <mailbox>", "UPN, user id or MBX: id")
    .addOption(storeOption())
    .option("--json", "print one JSON document on stdout")
    .action(async (opts: { mailbox: string; store?: string; json?: boolean }) => {
      exitCode = await runsCommand(opts, io);
    });

  program
    .command("verify")
    .description("re-read a run's stored items and check them against its manifest")
    .requiredOption("--mailbox <mailbox>", "UPN, user id or MBX: id")
    .option("--run <runId>", "the run to verify (default: the latest complete one)")
    .addOption(storeOption())
    .option("--json", "print one JSON document on stdout")
    .action(async (opts: { mailbox: string; run?: string; store?: string; json?: boolean }) => {
      exitCode = await verifyCommand(opts, io);
    });

  if (argv.length === 0) {
    io.stderr(program.helpInformation());
    return EXIT.usage;
  }
  try {
    await program.parseAsync(argv, { from: "user" });
    return exitCode;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === "commander.helpDisplayed" || e.code === "commander.version" || e.code === "commander.help") return EXIT.ok;
      return EXIT.usage; // commander already printed its one-line message
    }
    return reportError(e, io);
  }
}

function reportError(e: unknown, io: CliIo): number {
  const { code, message } = describeError(e);
  io.stderr(redact(`mailvault: ${message}${code && !message.includes(code) ? ` [${code}]` : ""}\n`));
  if (isMailvaultError(e) && e.kind === "invalid-input") return EXIT.usage;
  if (isMailvaultError(e) && e.code === "MailboxNotFound") return EXIT.usage;
  return EXIT.failure;
}

function storeFor(spec: string | undefined, env: Env): ItemStore {
  return openStore(spec ?? (setting(env, "MAILVAULT_STORE") as string), env);
}

async function ensureStore(store: ItemStore): Promise<void> {
  const s = store as ItemStore & { ensureContainer?: () => Promise<unknown> };
  if (typeof s.ensureContainer === "function") await s.ensureContainer();
}

async function backupCommand(opts: { mailbox: string[]; store?: string; full?: boolean; json?: boolean }, io: CliIo): Promise<number> {
  const mailboxes = [...new Set(opts.mailbox.map((m) => validateMailboxArg(m)))];
  const store = storeFor(opts.store, io.env);
  const services: Services = createServices(io.env, { store, logger: lineLogger((l) => io.stderr(l + "\n"), "warn") });
  // Resolve every mailbox before writing anything: an unknown one is a usage error, not a half-done run.
  for (const m of mailboxes) await resolveMailboxArg(services.sources, m);
  await ensureStore(store);

  const progress = new ProgressView(io, mailboxes);
  const app = await startLocalApp(services);
  let outcomes: BackupOutcome[];
  try {
    outcomes = await Promise.all(
      mailboxes.map((m) =>
        backupOnHost(app, services, m, { full: opts.full, onProgress: (p) => progress.update(m, p) }).catch((e: unknown) => ({ mailbox: m, error: describeError(e) })),
      ),
    );
  } finally {
    progress.stop();
    await app.stop();
  }

  const results = outcomes.map((o) =>
    o.summary
      ? {
          mailbox: o.mailbox,
          runId: o.summary.runId,
          mailboxId: o.summary.mailboxId,
          exported: o.summary.exported,
          unchanged: o.summary.unchanged,
          failed: o.summary.failed,
          deleted: o.summary.deleted,
          bytes: o.summary.bytes,
          manifest: o.summary.manifest,
        }
      : { mailbox: o.mailbox, error: o.error },
  );
  if (opts.json) io.stdout(JSON.stringify(results, null, 2) + "\n");
  else {
    for (const r of results) {
      if ("error" in r) io.stdout(`${r.mailbox}: run failed: ${r.error?.message}\n`);
      else io.stdout(`${r.mailbox}: run ${r.runId}: ${r.exported} exported, ${r.unchanged} unchanged, ${r.deleted} deleted, ${r.failed} failed, ${formatBytes(r.bytes)}\n  manifest: ${store.location}/${r.manifest}\n`);
    }
  }
  if (outcomes.some((o) => o.error)) return EXIT.failure;
  if (outcomes.some((o) => (o.summary?.failed ?? 0) > 0)) return EXIT.itemsFailed;
  return EXIT.ok;
}

interface RestoreOpts {
  mailbox: string;
  run?: string;
  to?: string;
  folder?: string[];
  item?: string[];
  folderName?: string;
  intoOriginalFolders?: boolean;
  mode?: "create" | "update" | "upsert";
  store?: string;
  ewsUrl?: string;
  json?: boolean;
}

async function restoreCommand(opts: RestoreOpts, io: CliIo): Promise<number> {
  const store = storeFor(opts.store, io.env);
  const services: Services = createServices(io.env, { store, logger: lineLogger((l) => io.stderr(l + "\n"), "warn") });
  const app = await startLocalApp(services);
  try {
    const r = await prepareRestore(
      services,
      opts.mailbox,
      { run: opts.run, target: opts.to, folders: opts.folder, items: opts.item, targetFolderName: opts.folderName, intoOriginalFolders: opts.intoOriginalFolders, mode: opts.mode },
      new Date(),
    );
    await resolveMailboxArg(services.sources, r.target);
    const instanceId = `restore-${r.restoreId}`;
    await app.host.startNew("restoreMailbox", { instanceId, input: r });
    const status = await app.host.waitForCompletion(instanceId, { timeoutMs: 7 * 24 * 3600_000 });
    if (status.runtimeStatus !== "Completed") {
      io.stderr(redact(`mailvault: restore ended ${status.runtimeStatus}: ${String(status.output ?? "")}\n`));
      return EXIT.failure;
    }
    const report = status.output as { restoreId: string; targetMailboxId: string; items: number; imported: number; alreadyImported: number; failed: number; bytes: number };
    if (opts.json) io.stdout(JSON.stringify(report, null, 2) + "\n");
    else io.stdout(`restore ${report.restoreId} into ${report.targetMailboxId}: ${report.imported} of ${report.items} items imported${report.alreadyImported ? ` (${report.alreadyImported} by an earlier attempt)` : ""} (${formatBytes(report.bytes)}), ${report.failed} failed\n`);
    return report.failed > 0 ? EXIT.itemsFailed : EXIT.ok;
  } finally {
    await app.stop();
  }
}

async function runsCommand(opts: { mailbox: string; store?: string; json?: boolean }, io: CliIo): Promise<number> {
  validateMailboxArg(opts.mailbox);
  const store = storeFor(opts.store, io.env);
  const mbx = await findMailbox(store, opts.mailbox);
  const runs = await listRuns(store, mbx.mailboxId);
  if (opts.json) {
    io.stdout(JSON.stringify({ mailboxId: mbx.mailboxId, addresses: mbx.addresses, runs: runs.map((r) => ({ runId: r.runId, state: r.state, manifest: r.manifest, ...(r.summary ? pickCounts(r.summary) : {}) })) }, null, 2) + "\n");
    return EXIT.ok;
  }
  io.stdout(`${mbx.mailboxId}${mbx.addresses.length ? ` (${mbx.addresses.join(", ")})` : ""}: ${runs.length} run(s) in ${store.location}\n`);
  for (const r of runs) {
    const s = r.summary;
    io.stdout(s ? `  ${r.runId}  ${s.exported} exported, ${s.unchanged} unchanged, ${s.deleted} deleted, ${s.failed} failed, ${formatBytes(s.bytes)}\n` : `  ${r.runId}  incomplete\n`);
  }
  return EXIT.ok;
}

async function verifyCommand(opts: { mailbox: string; run?: string; store?: string; json?: boolean }, io: CliIo): Promise<number> {
  validateMailboxArg(opts.mailbox);
  const store = storeFor(opts.store, io.env);
  const mbx = await findMailbox(store, opts.mailbox);
  const run = await pickRun(store, mbx.mailboxId, opts.run);
  const report = await verifyRun(store, { mailboxId: mbx.mailboxId, runId: run.runId, manifest: run.manifest });
  if (opts.json) io.stdout(JSON.stringify(report, null, 2) + "\n");
  else {
    io.stdout(`run ${report.runId}: ${report.ok} of ${report.checked} stored items verified (${formatBytes(report.bytes)}), ${report.problems.length} problem(s), ${report.failedInRun} item(s) failed in the run\n`);
    for (const p of report.problems.slice(0, 50)) io.stdout(`  ${p.problem}: ${p.path}: ${p.detail}\n`);
  }
  return report.problems.length > 0 ? EXIT.itemsFailed : EXIT.ok;
}

function pickCounts(s: { exported: number; unchanged: number; failed: number; deleted: number; bytes: number; startedAt: string; finishedAt: string }) {
  return { exported: s.exported, unchanged: s.unchanged, failed: s.failed, deleted: s.deleted, bytes: s.bytes, startedAt: s.startedAt, finishedAt: s.finishedAt };
}

export function formatBytes(n: number): string {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(1)} ${units[u]}`;
}

/** A live bar per mailbox on a terminal; otherwise a plain line when something changed, at most every few seconds. */
class ProgressView {
  private readonly bars = new Map<string, SingleBar>();
  private readonly lastLine = new Map<string, number>();

  constructor(private readonly io: CliIo, mailboxes: string[]) {
    if (!io.tty) return;
    for (const m of mailboxes) {
      const bar = new SingleBar(
        { format: `${m.slice(0, 32).padEnd(32)} [{bar}] {value}/{total} items | {phase} | {size} | {failed} failed`, hideCursor: true, clearOnComplete: false, stream: process.stderr },
      );
      bar.start(1, 0, { phase: "starting", size: "0 B", failed: 0 });
      this.bars.set(m, bar);
    }
  }

  update(mailbox: string, p: BackupProgress): void {
    const bar = this.bars.get(mailbox);
    if (bar) {
      bar.setTotal(Math.max(1, p.items.total));
      bar.update(p.items.done, { phase: p.phase, size: formatBytes(p.bytes), failed: p.failed });
      return;
    }
    const now = Date.now();
    if (p.phase !== "done" && now - (this.lastLine.get(mailbox) ?? 0) < 5000) return;
    this.lastLine.set(mailbox, now);
    this.io.stderr(`${mailbox}: ${p.phase}, ${p.items.done}/${p.items.total} items, ${formatBytes(p.bytes)}, ${p.failed} failed\n`);
  }

  stop(): void {
    for (const b of this.bars.values()) b.stop();
  }
}

if (require.main === module) {
  runCli(process.argv.slice(2), {
    stdout: (s) => process.stdout.write(s),
    stderr: (s) => process.stderr.write(s),
    env: process.env,
    tty: Boolean(process.stderr.isTTY),
  }).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      process.stderr.write(`mailvault: ${describeError(e).message}\n`);
      process.exitCode = EXIT.failure;
    },
  );
}
