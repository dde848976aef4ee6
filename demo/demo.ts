/**
 * npm run demo: the whole product on this machine, no Azure account needed.
 *
 *  1. starts the Exchange simulator (real HTTP on loopback, Graph's JSON shapes and EWS's SOAP, with
 *     their limits) with a small sample organisation: two Exchange Online mailboxes (Graph) and one
 *     Exchange Server mailbox (EWS);
 *  2. starts the app on the local durable host (the real Functions registrations and the real
 *     durable-functions replay engine), storing into a local folder;
 *  3. backs up the three mailboxes through the app's HTTP trigger, exactly as a caller would in Azure
 *     (POST /api/mailboxes/{mailbox}/backups with a function key), and follows the status URL;
 *  4. verifies every stored item against its manifest;
 *  5. changes a few items and backs up again: only the changes are exported (incremental);
 *  6. restores one mailbox's latest run into the other mailbox, under a new folder, through the
 *     restore trigger, and checks the imported bytes; then prints where to look.
 */
import { resolve } from "node:path";
import { startLocalApp } from "../cli/localRun";
import { formatBytes } from "../cli/main";
import type { RunSummary } from "../shared/backup/backupRun";
import { pickRun } from "../shared/catalog";
import { lineLogger } from "../shared/log";
import { createServices } from "../shared/services";
import { LocalItemStore } from "../shared/store/localItemStore";
import { verifyRun } from "../shared/verify";
import { ExchangeSimulator } from "../test/simulator";

const STORE_DIR = resolve(process.env.MAILVAULT_DEMO_STORE ?? "mailvault-demo");
const FUNCTION_KEY = "demo-function-key";

async function main(): Promise<void> {
  const sim = await ExchangeSimulator.start({ seed: 2026, latencyMs: 5 });
  const mailboxes = [
    sim.generateMailbox({ upn: "adele.vance@contoso.com", folders: 12, maxDepth: 3, items: 400, seed: 1, size: sampleSize }),
    sim.generateMailbox({ upn: "alex.wilber@contoso.com", folders: 8, maxDepth: 2, items: 250, seed: 2, size: sampleSize }),
  ];
  // On premises: reached through EWS (`ews:<address>`), same orchestrations, same store format.
  const onPrem = sim.generateMailbox({ upn: "megan.bowen@contoso.local", folders: 6, maxDepth: 2, items: 200, seed: 3, size: sampleSize });
  const targets = [...mailboxes.map((m) => m.upn), `ews:${onPrem.upn}`];
  say(`Exchange simulator on ${sim.url}: ${mailboxes.length} Exchange Online mailboxes (Graph), 1 Exchange Server mailbox (EWS at ${sim.ewsUrl}), ${[...mailboxes, onPrem].reduce((n, m) => n + sim.listItems(m.mailboxId).length, 0)} items`);

  const env = { ...process.env, ...sim.env("v1.0"), ...sim.ewsEnv() };
  const store = new LocalItemStore(STORE_DIR);
  const services = createServices(env, { store, logger: lineLogger((l) => process.stderr.write(l + "\n"), "warn") });
  const app = await startLocalApp(services, { functionKey: FUNCTION_KEY });
  say(`app running on the local durable host at ${app.host.baseUrl}, storing into ${STORE_DIR}`);

  const summaries: RunSummary[] = [];
  const post = async (path: string, body: unknown) => {
    const res = await fetch(`${app.host.baseUrl}${path}`, { method: "POST", headers: { "x-functions-key": FUNCTION_KEY, "content-type": "application/json" }, body: JSON.stringify(body) });
    if (res.status !== 202) throw new Error(`POST ${path} answered ${res.status}: ${await res.text()}`);
    return (await res.json()) as { id: string; statusQueryGetUri: string };
  };
  try {
    await Promise.all(
      targets.map(async (m) => {
        const url = `${app.host.baseUrl}/api/mailboxes/${encodeURIComponent(m)}/backups`;
        const res = await fetch(url, { method: "POST", headers: { "x-functions-key": FUNCTION_KEY, "content-type": "application/json" }, body: "{}" });
        if (res.status !== 202) throw new Error(`POST ${url} answered ${res.status}: ${await res.text()}`);
        const check = (await res.json()) as { id: string; statusQueryGetUri: string };
        say(`POST /api/mailboxes/${m}/backups -> 202, instance ${check.id}`);
        summaries.push(await follow(check.statusQueryGetUri, m));
      }),
    );
    say("");
    say("mailbox                            exported  failed  size       manifest");
    for (const s of summaries) {
      say(`${s.mailbox.padEnd(34)} ${String(s.exported).padStart(8)}  ${String(s.failed).padStart(6)}  ${formatBytes(s.bytes).padEnd(9)}  ${s.manifest}`);
    }
    for (const s of summaries) {
      const run = await pickRun(store, s.mailboxId, s.runId);
      const report = await verifyRun(store, { mailboxId: s.mailboxId, runId: s.runId, manifest: run.manifest });
      say(`verified ${s.mailbox}: ${report.ok}/${report.checked} items match their sha256, ${report.problems.length} problems`);
      if (report.problems.length) process.exitCode = 1;
    }

    // Incremental: change a few items, back up again.
    const [adele, alex] = mailboxes;
    const items = sim.listItems(adele.mailboxId);
    sim.modifyItem(adele.mailboxId, items[0].id);
    sim.modifyItem(adele.mailboxId, items[1].id);
    sim.addItem(adele.mailboxId, adele.wellKnownFolders.inbox, { size: 12_345 });
    sim.deleteItem(adele.mailboxId, items[2].id);
    say("");
    say(`changed ${adele.upn}: 2 items modified, 1 added, 1 deleted; backing up again`);
    const again = await follow((await post(`/api/mailboxes/${encodeURIComponent(adele.upn)}/backups`, {})).statusQueryGetUri, adele.upn);
    say(`incremental run ${again.runId}: ${again.exported} exported, ${again.unchanged} unchanged, ${again.deleted} deleted`);

    // Restore Adele's latest run into Alex's mailbox, under a new folder.
    say("");
    const restore = await post(`/api/mailboxes/${encodeURIComponent(adele.upn)}/restores`, { target: alex.upn, targetFolderName: "Restored from Adele" });
    const report = (await follow(restore.statusQueryGetUri, `restore into ${alex.upn}`)) as unknown as { imported: number; failed: number; items: number };
    const imported = sim.importedItems(alex.mailboxId);
    const exact = imported.every((i) => sim.itemSha256(alex.mailboxId, i.itemId) === i.sha256);
    say(`restored ${report.imported}/${report.items} items of ${adele.upn} into ${alex.upn} (folder "Restored from Adele"), ${report.failed} failed; bytes identical: ${exact}`);
    if (report.failed || !exact) process.exitCode = 1;
  } finally {
    await app.stop();
    await sim.close();
  }


  say("");
  say(`Look in ${STORE_DIR}/mailboxes/: one folder per mailbox, items/ holds one object per item version,`);
  say(`runs/<runId>/manifest.jsonl lists every item with its sha256, summary.json the counts.`);
  say(`Try: npx tsx cli/main.ts runs --mailbox ${mailboxes[0].upn} --store ${STORE_DIR}`);
}

/** Follows the Durable status URL until the run ends, printing progress from customStatus. */
async function follow(statusUrl: string, mailbox: string): Promise<RunSummary> {
  let last = "";
  for (;;) {
    const res = await fetch(statusUrl, { headers: { "x-functions-key": FUNCTION_KEY } });
    const s = (await res.json()) as { runtimeStatus: string; output?: unknown; customStatus?: { phase?: string; items?: { done: number; total: number } } };
    const line = `${mailbox}: ${s.runtimeStatus}${s.customStatus?.items ? `, ${s.customStatus.phase}, ${s.customStatus.items.done}/${s.customStatus.items.total} items` : ""}`;
    if (line !== last) say(line);
    last = line;
    if (s.runtimeStatus === "Completed") return s.output as RunSummary;
    if (["Failed", "Terminated", "Canceled"].includes(s.runtimeStatus)) throw new Error(`backup of ${mailbox} ended ${s.runtimeStatus}: ${JSON.stringify(s.output)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Mostly small messages, some with attachments, a few large ones. */
function sampleSize(_i: number, rand: () => number): number {
  const r = rand();
  if (r < 0.8) return 2_000 + Math.floor(rand() * 60_000);
  if (r < 0.98) return 100_000 + Math.floor(rand() * 900_000);
  return 3_000_000 + Math.floor(rand() * 5_000_000);
}

function say(line: string): void {
  process.stdout.write(line + "\n");
}

main().catch((e: unknown) => {
  process.stderr.write(`demo failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
