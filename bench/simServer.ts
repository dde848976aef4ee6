/**
 * The Exchange simulator in its own process, so that a benchmark's client side (the app, the
 * store) has a core to itself as it would against Exchange Online. Reads a JSON spec from argv,
 * prints one JSON line {url, token, mailboxes: [{upn, mailboxId, items, bytes}]}, then serves until
 * stdin closes.
 */
import { ExchangeSimulator } from "../test/simulator";

interface Spec {
  seed: number;
  latencyMs: number;
  /** Latency of exportItems calls (the throttle-bound figure's per-call latency). */
  exportLatencyMs: number;
  /** Upload budget of import sessions (scaled down from Exchange's 150 MB per 5 minutes). */
  importBytesPerWindow?: number;
  importWindowMs?: number;
  mailboxes: Array<{ upn: string; folders: number; items: number; sizes: "realistic" | "tiny" | "fixed"; fixedSize?: number }>;
}

function realistic(_i: number, rand: () => number): number {
  // Log-normal around a 50 KB median; about 1% above 5 MB (attachments).
  const u1 = Math.max(rand(), 1e-9);
  const z = Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * rand());
  if (rand() < 0.01) return 5 * 1024 * 1024 + Math.floor(rand() * 10 * 1024 * 1024);
  return Math.max(1024, Math.min(5 * 1024 * 1024, Math.round(50 * 1024 * Math.exp(1.0 * z))));
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2]) as Spec;
  const sim = await ExchangeSimulator.start({
    seed: spec.seed,
    latencyMs: (route) => (route === "exportItems" || route === "ewsExportItems" ? spec.exportLatencyMs : spec.latencyMs),
    ...(spec.importBytesPerWindow ? { importBytesPerWindow: spec.importBytesPerWindow, importWindowMs: spec.importWindowMs } : {}),
  });
  const mailboxes = spec.mailboxes.map((m, k) => {
    const mbx = sim.generateMailbox({
      upn: m.upn,
      folders: m.folders,
      items: m.items,
      seed: spec.seed + k,
      size: m.sizes === "realistic" ? realistic : m.sizes === "tiny" ? () => 200 : () => m.fixedSize ?? 1024,
    });
    const items = sim.listItems(mbx.mailboxId);
    return { upn: m.upn, mailboxId: mbx.mailboxId, items: items.length, bytes: items.reduce((n, i) => n + i.size, 0), ids: m.items <= 20 ? items.map((i) => ({ itemId: i.id, folderId: i.folderId, changeKey: i.changeKey })) : undefined };
  });
  process.stdout.write(JSON.stringify({ url: sim.url, ewsUrl: sim.ewsUrl, token: sim.token, mailboxes }) + "\n");
  process.stdin.resume();
  process.stdin.on("end", () => {
    void sim.close().then(() => process.exit(0));
  });
  // Stats on request: a line "stats" on stdin prints the simulator's counters.
  process.stdin.on("data", (d: Buffer) => {
    if (d.toString().includes("stats")) {
      process.stdout.write(JSON.stringify({ stats: { importThrottled: sim.stats.importThrottled, importedItems: sim.stats.importedItems, exportItemsCalls: sim.stats.exportItemsCalls, throttledByConcurrency: sim.stats.throttledByConcurrency, totalRequests: sim.stats.totalRequests, requests: sim.stats.requests, maxInFlight: Object.fromEntries(sim.stats.maxInFlight), ews: { requests: sim.stats.ews.requests, throttled: sim.stats.ews.throttled, peakInFlight: sim.stats.ews.peakInFlight } } }) + "\n");
      sim.resetStats();
    }
  });
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? e.stack : String(e)}\n`);
  process.exit(1);
});
