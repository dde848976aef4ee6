/**
 * npm run bench [-- --quick]: mailvault's figures, each a ratio measured within one run against
 * the Exchange simulator (in its own process) on loopback, written to bench/RESULTS.md.
 *
 *  memory       peak RSS of one export activity for 20 large items, streaming vs a buffered client
 *  throughput   items/s of an orchestrated backup as a fraction of the throttle-bound limit
 *               (concurrency x 20 items / per-call latency), beside an all-at-once fan-out and a
 *               sequential client over the same items
 *  orchestration history events and orchestrator time per 1,000 items at growing mailbox sizes
 *  ews          the EWS source: one ExportItems activity's peak RSS for 20 large items, and an
 *               orchestrated backup's rate against its throttle-bound limit (4 x batch / latency)
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { cpus, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { backupOnHost, startLocalApp } from "../cli/localRun";
import { planBatches } from "../shared/backup/plan";
import { exportBatch } from "../shared/export/exportBatch";
import { GraphClient, StaticTokenCredential } from "../shared/graph/graphClient";
import { MailboxApi } from "../shared/graph/mailboxApi";
import { GraphSource } from "../shared/graph/graphSource";
import { createServices } from "../shared/services";
import { LocalItemStore } from "../shared/store/localItemStore";
import { Semaphore } from "../shared/util/semaphore";
import { prepareRestore } from "../shared/restore/prepare";

const quick = process.argv.includes("--quick");
const MB = 1024 * 1024;

interface Figure {
  id: string;
  title: string;
  goal: string;
  result: string;
  met: boolean | undefined;
  rows: Array<[string, string]>;
  notes?: string;
}

interface SimMailboxInfo {
  upn: string;
  mailboxId: string;
  items: number;
  bytes: number;
  ids?: Array<{ itemId: string; folderId: string; changeKey: string }>;
}

interface SimHandle {
  url: string;
  ewsUrl: string;
  token: string;
  mailboxes: SimMailboxInfo[];
  stats(): Promise<{ importThrottled: number; importedItems: number; exportItemsCalls: number; throttledByConcurrency: number; totalRequests: number; requests: Record<string, number>; maxInFlight: Record<string, number>; ews: { requests: Record<string, number>; throttled: number; peakInFlight: Record<string, number> } }>;
  close(): Promise<void>;
}

/** Starts the simulator in a child process (bench/simServer.ts). */
async function startSim(spec: object): Promise<SimHandle> {
  const child: ChildProcess = spawn(process.execPath, ["--import", "tsx", join(__dirname, "simServer.ts"), JSON.stringify(spec)], { stdio: ["pipe", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  const it = lines[Symbol.asyncIterator]();
  const first = await it.next();
  if (first.done) throw new Error("simulator did not start");
  const info = JSON.parse(first.value) as { url: string; ewsUrl: string; token: string; mailboxes: SimMailboxInfo[] };
  return {
    ...info,
    async stats() {
      child.stdin?.write("stats\n");
      const r = await it.next();
      return (JSON.parse(r.value as string) as { stats: Awaited<ReturnType<SimHandle["stats"]>> }).stats;
    },
    close: () =>
      new Promise<void>((resolve) => {
        child.once("exit", () => resolve());
        child.stdin?.end();
      }),
  };
}

function ratio(x: number): string {
  return x.toFixed(2);
}

async function memoryFigure(): Promise<Figure> {
  const size = quick ? 8 * MB : 40 * MB;
  // The buffered client has to hold the whole response as one string: V8 cannot above ~512 MB, so
  // the side-by-side comparison uses 20 x 8 MB, which both clients can do.
  const small = 8 * MB;
  const sim = await startSim({
    seed: 1,
    latencyMs: 0,
    exportLatencyMs: 0,
    mailboxes: [
      { upn: "big@contoso.com", folders: 1, items: 20, sizes: "fixed", fixedSize: size },
      { upn: "small@contoso.com", folders: 1, items: 20, sizes: "fixed", fixedSize: small },
    ],
  });
  try {
    const run = (mode: string, mbx: SimMailboxInfo) => {
      const out = execFileSync(process.execPath, ["--import", "tsx", join(__dirname, "exportWorker.ts"), JSON.stringify({ mode, endpoint: sim.url, token: sim.token, mailboxId: mbx.mailboxId, items: mbx.ids })], {
        encoding: "utf8",
        maxBuffer: 1024 * 1024,
      });
      return JSON.parse(out.trim().split("\n").pop() as string) as { items: number; bytes: number; ms: number; maxRssMB: number };
    };
    const [bigMbx, smallMbx] = sim.mailboxes;
    const stream = run("stream", bigMbx);
    const streamSmall = run("stream", smallMbx);
    const buffered = run("buffered", smallMbx);
    const rows: Array<[string, string]> = [
      [`streaming exportBatch, 20 x ${size / MB} MB (${((20 * size * 4) / 3 / MB).toFixed(0)} MB of base64 JSON): peak RSS`, `${stream.maxRssMB.toFixed(0)} MB`],
      ["streaming exportBatch: throughput", `${(stream.bytes / MB / (stream.ms / 1000)).toFixed(0)} MB/s decoded, hashed and stored`],
      [`20 x ${small / MB} MB: peak RSS, streaming / buffered JSON.parse client`, `${streamSmall.maxRssMB.toFixed(0)} MB / ${buffered.maxRssMB.toFixed(0)} MB = ${ratio(streamSmall.maxRssMB / buffered.maxRssMB)}`],
      [`20 x ${small / MB} MB: time, streaming / buffered`, ratio(streamSmall.ms / buffered.ms)],
      [`buffered client at 20 x ${size / MB} MB`, size > small ? "impossible: the response is larger than V8's maximum string length" : "as above"],
    ];
    return {
      id: "memory",
      title: "Memory of one export activity",
      goal: "peak RSS under 256 MB for 20 x 40 MB",
      result: `${stream.maxRssMB.toFixed(0)} MB peak RSS for 20 x ${size / MB} MB`,
      met: stream.maxRssMB < 256,
      rows,
    };
  } finally {
    await sim.close();
  }
}

async function throughputFigure(): Promise<Figure> {
  const items = quick ? 2000 : 20000;
  const compareItems = quick ? 400 : 1000;
  // Exchange Online answers an exportItems call of 20 small items in the order of a second; 500 ms is
  // a deliberately demanding model (a faster server leaves the client less time per item).
  const latency = 500;
  const sim = await startSim({
    seed: 2,
    latencyMs: 10,
    exportLatencyMs: latency,
    mailboxes: [
      { upn: "through@contoso.com", folders: 20, items, sizes: "realistic" },
      { upn: "compare@contoso.com", folders: 5, items: compareItems, sizes: "realistic" },
    ],
  });
  const dirs: string[] = [];
  const tempStore = async () => {
    const d = await mkdtemp(join(tmpdir(), "mailvault-bench-"));
    dirs.push(d);
    return new LocalItemStore(d);
  };
  try {
    const env = { GRAPH_ENDPOINT: sim.url, GRAPH_API_VERSION: "v1.0", GRAPH_ACCESS_TOKEN: sim.token };
    const bound = (4 * 20) / (latency / 1000); // items per second at 4 calls in flight
    const [big, small] = sim.mailboxes;

    // mailvault: the orchestrated backup on the local host (listing, planning, lanes, manifests).
    let retries429 = 0;
    const services = createServices(env, { store: await tempStore(), onGraphRetry: (r) => void (r.status === 429 && retries429++) });
    await sim.stats();
    const app = await startLocalApp(services);
    const t0 = performance.now();
    const outcome = await backupOnHost(app, services, big.upn);
    const secs = (performance.now() - t0) / 1000;
    await app.stop();
    const s1 = await sim.stats();
    if (!outcome.summary) throw new Error(`throughput run failed: ${JSON.stringify(outcome.error)}`);
    const rate = outcome.summary.exported / secs;

    // The same export path driven two other ways, over a smaller mailbox.
    const listed = await listAll(sim.url, sim.token, small.mailboxId);
    const batches = planBatches(listed, 100 * MB);
    const drive = async (concurrency: number, clientLimit: number) => {
      const api = new MailboxApi(new GraphClient({ endpoint: sim.url, apiVersion: "v1.0", credential: new StaticTokenCredential(sim.token), maxRequestsPerMailbox: clientLimit }));
      const store = await tempStore();
      const sem = new Semaphore(concurrency);
      await sim.stats();
      const t = performance.now();
      const out = (await Promise.all(batches.map((b) => sem.run(() => exportBatch({ mailbox: new GraphSource(api), store }, { mailboxId: small.mailboxId, items: b }))))).flat();
      const s = (performance.now() - t) / 1000;
      const st = await sim.stats();
      return { rate: out.filter((o) => o.status === "exported").length / s, failed: out.filter((o) => o.status === "failed").length, throttled: st.throttledByConcurrency };
    };
    const allAtOnce = await drive(batches.length, 10_000);
    const sequential = await drive(1, 4);

    const r = rate / bound;
    return {
      id: "throughput",
      title: "Throughput against the throttle-bound limit",
      goal: "at least 0.9 of the limit, zero 429s caused by our own concurrency",
      result: `${ratio(r)} of the limit, ${s1.throttledByConcurrency} self-inflicted 429s`,
      met: r >= 0.9 && s1.throttledByConcurrency === 0,
      rows: [
        ["mailbox", `${big.items} items, ${(big.bytes / MB).toFixed(0)} MB (median ~50 KB, ~1% above 5 MB), 20 folders`],
        ["latency model", `${latency} ms per exportItems call, 10 ms per listing call, 4 requests in flight per mailbox`],
        ["throttle-bound limit", `${bound.toFixed(0)} items/s (4 x 20 / ${latency / 1000} s)`],
        ["mailvault (orchestrated, lanes)", `${ratio(r)} of the limit; ${s1.throttledByConcurrency} 429s from our concurrency (${retries429} retries after 429); max in flight ${Math.max(...Object.values(s1.maxInFlight))}`],
        [`all-at-once fan-out (${compareItems} items)`, `${ratio(allAtOnce.rate / bound)} of the limit; ${allAtOnce.throttled} 429s; ${allAtOnce.failed} items failed`],
        [`sequential client (${compareItems} items)`, `${ratio(sequential.rate / bound)} of the limit`],
      ],
      notes: "The orchestrated figure includes folder walking, delta listing, planning and manifests; the two comparisons time the export calls only.",
    };
  } finally {
    await sim.close();
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  }
}

async function listAll(url: string, token: string, mailboxId: string) {
  const api = new MailboxApi(new GraphClient({ endpoint: url, apiVersion: "v1.0", credential: new StaticTokenCredential(token) }));
  const out: Array<{ itemId: string; folderId: string; changeKey?: string; size?: number }> = [];
  for await (const f of api.walkFolders(mailboxId)) {
    let link: string | undefined;
    for (;;) {
      const page = await api.itemsDeltaPage(mailboxId, f.id, link, { pageSize: 1000 });
      for (const i of page.items) out.push({ itemId: i.id, folderId: f.id, changeKey: i.changeKey, size: i.size });
      if (!page.nextLink) break;
      link = page.nextLink;
    }
  }
  return out;
}

async function orchestrationFigure(): Promise<Figure> {
  const sizes = quick ? [1000, 5000] : [1000, 10000, 100000];
  const rows: Array<[string, string]> = [];
  const perK: number[] = [];
  const cpuPerK: number[] = [];
  let worstHistory = 0;
  for (const n of sizes) {
    const sim = await startSim({ seed: 3, latencyMs: 0, exportLatencyMs: 0, mailboxes: [{ upn: `o${n}@contoso.com`, folders: 10, items: n, sizes: "tiny" }] });
    const dir = await mkdtemp(join(tmpdir(), "mailvault-bench-"));
    try {
      const services = createServices({ GRAPH_ENDPOINT: sim.url, GRAPH_API_VERSION: "v1.0", GRAPH_ACCESS_TOKEN: sim.token }, { store: new LocalItemStore(dir) });
      const app = await startLocalApp(services);
      const outcome = await backupOnHost(app, services, sim.mailboxes[0].upn);
      const metrics = app.host.listInstances().map((i) => app.host.metrics(i.instanceId));
      await app.stop();
      if (!outcome.summary || outcome.summary.exported !== n) throw new Error(`orchestration run for ${n} items failed`);
      const events = metrics.reduce((a, m) => a + m.totalHistoryEvents, 0);
      const ms = metrics.reduce((a, m) => a + m.orchestratorMs, 0);
      const maxHist = Math.max(...metrics.map((m) => m.maxHistoryLength));
      worstHistory = Math.max(worstHistory, maxHist);
      perK.push((events / n) * 1000);
      cpuPerK.push((ms / n) * 1000);
      rows.push([`${n.toLocaleString("en-US")} items`, `${((events / n) * 1000).toFixed(0)} history events and ${((ms / n) * 1000).toFixed(0)} ms orchestrator time per 1,000 items; largest history of any instance ${maxHist} events; ${metrics.length} instances`]);
    } finally {
      await sim.close();
      await rm(dir, { recursive: true, force: true });
    }
  }
  const spread = Math.max(...perK) / Math.min(...perK);
  const cpuSpread = Math.max(...cpuPerK) / Math.min(...cpuPerK);
  rows.push(["largest / smallest per-1,000 cost", `history ${ratio(spread)}, orchestrator time ${ratio(cpuSpread)}`]);
  return {
    id: "orchestration",
    title: "Orchestration cost per 1,000 items",
    goal: "flat per 1,000 items as the mailbox grows",
    result: `history per 1,000 items varies by x${ratio(spread)}, orchestrator time by x${ratio(cpuSpread)}; no instance above ${worstHistory} events`,
    met: spread < 1.25 && cpuSpread < 2,
    rows,
  };
}

async function incrementalFigure(): Promise<Figure> {
  const items = quick ? 2000 : 10000;
  const folders = 20;
  const sim = await startSim({ seed: 4, latencyMs: 0, exportLatencyMs: 0, mailboxes: [{ upn: "inc@contoso.com", folders, items, sizes: "tiny" }] });
  const dir = await mkdtemp(join(tmpdir(), "mailvault-bench-"));
  try {
    const services = createServices({ GRAPH_ENDPOINT: sim.url, GRAPH_API_VERSION: "v1.0", GRAPH_ACCESS_TOKEN: sim.token }, { store: new LocalItemStore(dir) });
    const app = await startLocalApp(services);
    const first = await backupOnHost(app, services, sim.mailboxes[0].upn);
    const s1 = await sim.stats();
    const second = await backupOnHost(app, services, sim.mailboxes[0].upn);
    const s2 = await sim.stats();
    await app.stop();
    if (!first.summary || !second.summary) throw new Error("incremental runs failed");
    const delta = s2.requests.itemsDelta ?? 0;
    const folderCalls = s2.requests.folders ?? 0;
    return {
      id: "incremental",
      title: "Incremental run of an unchanged mailbox",
      goal: "folder deltas only, no export calls",
      result: `${s2.totalRequests} Graph requests: ${delta} item-delta calls, ${folderCalls} folder listings, ${s2.exportItemsCalls} exportItems calls`,
      met: s2.exportItemsCalls === 0,
      rows: [
        ["mailbox", `${items.toLocaleString("en-US")} items in ${folders} folders (plus the well-known ones)`],
        ["first run", `${s1.totalRequests} requests (${s1.exportItemsCalls} exportItems), ${first.summary.exported} items exported`],
        ["second run, nothing changed", `${s2.totalRequests} requests: ${JSON.stringify(s2.requests)}; ${second.summary.unchanged} items unchanged, ${second.summary.exported} exported`],
      ],
    };
  } finally {
    await sim.close();
    await rm(dir, { recursive: true, force: true });
  }
}

async function tenantFigure(): Promise<Figure> {
  const count = quick ? 20 : 200;
  const items = quick ? 100 : 500;
  const inFlight = 10;
  const latency = 500;
  const sim = await startSim({
    seed: 5,
    latencyMs: 10,
    exportLatencyMs: latency,
    mailboxes: Array.from({ length: count }, (_, i) => ({ upn: `t${i}@contoso.com`, folders: 3, items, sizes: "tiny" })),
  });
  const dirs: string[] = [];
  const env = { GRAPH_ENDPOINT: sim.url, GRAPH_API_VERSION: "v1.0", GRAPH_ACCESS_TOKEN: sim.token };
  try {
    // One mailbox alone: the single-mailbox time.
    const d1 = await mkdtemp(join(tmpdir(), "mailvault-bench-"));
    dirs.push(d1);
    const one = createServices(env, { store: new LocalItemStore(d1) });
    let app = await startLocalApp(one);
    let t = performance.now();
    const single = await backupOnHost(app, one, sim.mailboxes[0].upn);
    const singleSecs = (performance.now() - t) / 1000;
    await app.stop();
    if (!single.summary) throw new Error("single-mailbox run failed");

    // The whole tenant through the nightly timer.
    const d2 = await mkdtemp(join(tmpdir(), "mailvault-bench-"));
    dirs.push(d2);
    process.env.MAILVAULT_MAILBOXES = "*";
    process.env.MAILVAULT_MAX_MAILBOXES_IN_FLIGHT = String(inFlight);
    const all = createServices(env, { store: new LocalItemStore(d2) });
    app = await startLocalApp(all);
    t = performance.now();
    await app.host.invokeTimer("nightlyTimer");
    const night = new Date().toISOString().slice(0, 10).replace(/-/g, "");
    const status = await app.host.waitForCompletion(`nightly-${night}`, { timeoutMs: 3600_000 });
    const tenantSecs = (performance.now() - t) / 1000;
    await app.stop();
    const summary = status.output as { completed: number; exported: number };
    const serial = count * singleSecs;
    const r = tenantSecs / serial;
    return {
      id: "tenant",
      title: "Nightly run over a tenant",
      goal: `wall time well below ${count} x one mailbox (${inFlight} mailboxes in flight)`,
      result: `${ratio(r)} of ${count} x the single-mailbox time (ideal ${ratio(1 / inFlight)})`,
      met: r < 2 / inFlight,
      rows: [
        ["tenant", `${count} mailboxes x ${items} items, ${latency} ms per exportItems call, ${inFlight} mailboxes in flight`],
        ["one mailbox alone", `${singleSecs.toFixed(1)} s`],
        ["whole tenant", `${tenantSecs.toFixed(1)} s, ${summary.completed} mailboxes completed, ${summary.exported} items`],
        ["tenant / (mailboxes x one mailbox)", `${ratio(r)} (ideal ${ratio(1 / inFlight)})`],
      ],
    };
  } finally {
    delete process.env.MAILVAULT_MAILBOXES;
    delete process.env.MAILVAULT_MAX_MAILBOXES_IN_FLIGHT;
    await sim.close();
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  }
}

async function restoreFigure(): Promise<Figure> {
  const items = quick ? 300 : 1000;
  const size = 20 * 1024;
  // Exchange Online's 150 MB per 5 minutes, scaled down 300 times in size and 150 times in time
  // (the same shape, so a run takes seconds rather than hours).
  const pacing = { bytesPerWindow: Math.round((150 * MB) / 300), windowMs: 2000 };
  const sim = await startSim({
    seed: 6,
    latencyMs: 5,
    exportLatencyMs: 0,
    importBytesPerWindow: pacing.bytesPerWindow,
    importWindowMs: pacing.windowMs,
    mailboxes: [
      { upn: "from@contoso.com", folders: 3, items, sizes: "fixed", fixedSize: size },
      { upn: "to@contoso.com", folders: 0, items: 0, sizes: "tiny" },
    ],
  });
  const dir = await mkdtemp(join(tmpdir(), "mailvault-bench-"));
  try {
    const services = createServices({ GRAPH_ENDPOINT: sim.url, GRAPH_API_VERSION: "v1.0", GRAPH_ACCESS_TOKEN: sim.token }, { store: new LocalItemStore(dir), importPacing: pacing });
    const app = await startLocalApp(services);
    const backup = await backupOnHost(app, services, "from@contoso.com");
    if (!backup.summary) throw new Error("restore benchmark: backup failed");
    await sim.stats();
    const request = await prepareRestore(services, "from@contoso.com", { target: "to@contoso.com" }, new Date());
    const t = performance.now();
    await app.host.startNew("restoreMailbox", { instanceId: `restore-${request.restoreId}`, input: request });
    const status = await app.host.waitForCompletion(`restore-${request.restoreId}`, { timeoutMs: 3600_000 });
    const secs = (performance.now() - t) / 1000;
    await app.stop();
    const st = await sim.stats();
    const report = status.output as { imported: number; failed: number };
    const wire = Math.ceil(size / 3) * 4 + 200;
    const boundPerMin = (pacing.bytesPerWindow / wire) * (60_000 / pacing.windowMs);
    const perMin = (report.imported / secs) * 60;
    const r = perMin / boundPerMin;
    return {
      id: "restore",
      title: "Restore throughput per mailbox",
      goal: "close to the upload-bound limit, with no 429 from the budget",
      result: `${ratio(r)} of the upload-bound limit, ${st.importThrottled} budget 429s`,
      met: r >= 0.8 && st.importThrottled === 0,
      rows: [
        ["restore", `${items} items of ${size / 1024} KB into another mailbox (${report.imported} imported, ${report.failed} failed)`],
        ["upload budget", `${(pacing.bytesPerWindow / MB).toFixed(2)} MB of request body per ${pacing.windowMs / 1000} s window (Exchange Online's 150 MB per 5 min, scaled)`],
        ["upload-bound limit", `${boundPerMin.toFixed(0)} items per minute`],
        ["measured", `${perMin.toFixed(0)} items per minute = ${ratio(r)} of the limit; ${st.importThrottled} 429s from the budget`],
      ],
      notes: "A sliding window lets a restore start with a full budget, so short runs can come out slightly above 1.",
    };
  } finally {
    await sim.close();
    await rm(dir, { recursive: true, force: true });
  }
}

async function ewsFigure(): Promise<Figure> {
  const size = quick ? 8 * MB : 40 * MB;
  const items = quick ? 2000 : 10000;
  const latency = 500;
  const batch = 50;
  const sim = await startSim({
    seed: 7,
    latencyMs: 10,
    exportLatencyMs: latency,
    mailboxes: [
      { upn: "ews-big@contoso.local", folders: 1, items: 20, sizes: "fixed", fixedSize: size },
      { upn: "ews-through@contoso.local", folders: 20, items, sizes: "realistic" },
    ],
  });
  const dir = await mkdtemp(join(tmpdir(), "mailvault-bench-ews-"));
  try {
    const [bigMbx, through] = sim.mailboxes;
    const out = execFileSync(process.execPath, ["--import", "tsx", join(__dirname, "exportWorker.ts"), JSON.stringify({ mode: "ews", endpoint: sim.ewsUrl, token: sim.token, mailboxId: `EWS:${bigMbx.upn}`, items: bigMbx.ids })], { encoding: "utf8", maxBuffer: 1024 * 1024 });
    const mem = JSON.parse(out.trim().split("\n").pop() as string) as { items: number; bytes: number; ms: number; maxRssMB: number };

    const env = { GRAPH_ENDPOINT: sim.url, GRAPH_API_VERSION: "v1.0", GRAPH_ACCESS_TOKEN: sim.token, MAILVAULT_EWS_URL: sim.ewsUrl, EWS_ACCESS_TOKEN: sim.token, MAILVAULT_EWS_BATCH_ITEMS: String(batch) };
    let busy = 0;
    const services = createServices(env, { store: new LocalItemStore(dir), onEwsRetry: (r) => void (r.code === "ErrorServerBusy" && busy++) });
    await sim.stats();
    const app = await startLocalApp(services);
    const t0 = performance.now();
    const outcome = await backupOnHost(app, services, `ews:${through.upn}`);
    const secs = (performance.now() - t0) / 1000;
    await app.stop();
    const st = await sim.stats();
    if (!outcome.summary) throw new Error(`EWS throughput run failed: ${JSON.stringify(outcome.error)}`);
    const bound = (4 * batch) / (latency / 1000);
    const r = outcome.summary.exported / secs / bound;
    return {
      id: "ews",
      title: "EWS source: memory and throughput",
      goal: "peak RSS under 256 MB for 20 x 40 MB; throughput reported against the limit, no self-inflicted ErrorServerBusy",
      result: `${mem.maxRssMB.toFixed(0)} MB peak RSS for 20 x ${size / MB} MB; ${ratio(r)} of the throttle-bound limit; ${st.ews.throttled} ErrorServerBusy from our concurrency`,
      met: mem.maxRssMB < 256 && st.ews.throttled === 0,
      rows: [
        [`one ExportItems activity, 20 x ${size / MB} MB (${((20 * size * 4) / 3 / MB).toFixed(0)} MB of base64 XML): peak RSS`, `${mem.maxRssMB.toFixed(0)} MB`],
        ["the same: throughput", `${(mem.bytes / MB / (mem.ms / 1000)).toFixed(0)} MB/s decoded, hashed and stored`],
        ["mailbox", `${through.items} items, ${(through.bytes / MB).toFixed(0)} MB (median ~50 KB, ~1% above 5 MB), 20 folders`],
        ["latency model", `${latency} ms per ExportItems call of ${batch} items, 10 ms per other call, 4 calls in flight per mailbox`],
        ["throttle-bound limit", `${bound.toFixed(0)} items/s (4 x ${batch} / ${latency / 1000} s)`],
        ["mailvault (orchestrated, lanes)", `${ratio(r)} of the limit; ${st.ews.requests.ExportItems ?? 0} ExportItems calls, ${st.ews.requests.SyncFolderItems ?? 0} SyncFolderItems calls; ${st.ews.throttled} ErrorServerBusy (${busy} retries); peak in flight ${Math.max(0, ...Object.values(st.ews.peakInFlight))}`],
      ],
      notes: "The orchestrated figure includes SyncFolderHierarchy, SyncFolderItems paging, planning and manifests. 50 items a call carry about 2.5 times the bytes of a Graph call of 20, so the client's decoding share of each call is larger.",
    };
  } finally {
    await sim.close();
    await rm(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const started = new Date();
  const figures: Figure[] = [];
  const only = process.argv.find((a) => a.startsWith("--only="))?.slice("--only=".length);
  for (const f of [memoryFigure, throughputFigure, orchestrationFigure, incrementalFigure, tenantFigure, restoreFigure, ewsFigure].filter((x) => !only || x.name.startsWith(only))) {
    process.stderr.write(`bench: ${f.name}...\n`);
    const fig = await f();
    process.stderr.write(`bench: ${fig.title}: ${fig.result}\n`);
    figures.push(fig);
  }
  let commit = "unknown";
  try {
    commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], { encoding: "utf8" }).trim();
  } catch {
    /* not a checkout */
  }
  const lines = [
    "# Benchmark results",
    "",
    `Written by \`npm run bench${quick ? " -- --quick" : ""}\` on ${started.toISOString()}, commit ${commit}.`,
    `Machine: ${cpus().length} x ${cpus()[0]?.model ?? "cpu"}, ${(totalmem() / 1024 ** 3).toFixed(0)} GiB, Node ${process.version}, ${process.platform}.`,
    "Every figure is a ratio measured within this one run against the Exchange simulator on loopback (in its own process).",
    "",
    "| figure | goal | result | met |",
    "| --- | --- | --- | --- |",
    ...figures.map((f) => `| ${f.title} | ${f.goal} | ${f.result} | ${f.met === undefined ? "-" : f.met ? "yes" : "no"} |`),
    "",
  ];
  for (const f of figures) {
    lines.push(`## ${f.title}`, "", "| | |", "| --- | --- |", ...f.rows.map(([k, v]) => `| ${k} | ${v} |`), "");
    if (f.notes) lines.push(f.notes, "");
  }
  await writeFile(join(__dirname, "RESULTS.md"), lines.join("\n"));
  process.stdout.write(lines.join("\n") + "\n");
}

main().catch((e: unknown) => {
  process.stderr.write(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
