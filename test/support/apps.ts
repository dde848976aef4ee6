import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomUUID } from "node:crypto";
import { startLocalApp, type LocalApp } from "../../cli/localRun";
import { type Logger, lineLogger } from "../../shared/log";
import { createServices, type Services } from "../../shared/services";
import type { ItemStore } from "../../shared/store/itemStore";
import { LocalItemStore } from "../../shared/store/localItemStore";
import { BlobItemStore } from "../../shared/store/blobItemStore";
import { readManifest, type ManifestLine } from "../../shared/backup/manifest";
import type { ExchangeSimulator } from "../simulator";
import type { ImportPacing } from "../../shared/restore/importer";

/** Test wiring: the real app on the local host, pointed at the simulator and a real store. */

export async function tempStore(): Promise<{ store: LocalItemStore; dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), "mailvault-test-"));
  return { store: new LocalItemStore(dir), dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

export async function azuriteStore(connectionString: string): Promise<BlobItemStore> {
  const store = BlobItemStore.fromConnectionString(connectionString, `t-${randomUUID().slice(0, 18)}`);
  await store.ensureContainer();
  return store;
}

export interface TestApp {
  app: LocalApp;
  services: Services;
  logs: string[];
  stop(): Promise<void>;
}

export async function startTestApp(
  sim: ExchangeSimulator,
  store: ItemStore,
  options: { env?: Record<string, string>; functionKey?: string; logger?: Logger; maxEventsPerEpisode?: number; importPacing?: ImportPacing } = {},
): Promise<TestApp> {
  const logs: string[] = [];
  const services = createServices(
    { ...sim.env("v1.0"), ...options.env },
    {
      store,
      logger: options.logger ?? lineLogger((l) => logs.push(l), "debug"),
      timing: { graphBaseRetryDelayMs: 5, graphMaxRetryDelayMs: 50, exportRetryDelayMs: 5, importRetryDelayMs: 5 },
      importPacing: options.importPacing,
    },
  );
  // Durable retry intervals (seconds in production) pass 1,000 times faster here.
  const app = await startLocalApp(services, { functionKey: options.functionKey, timerScale: 0.001, maxEventsPerEpisode: options.maxEventsPerEpisode });
  return { app, services, logs, stop: () => app.stop() };
}

export async function manifestLines(store: ItemStore, manifest: string): Promise<ManifestLine[]> {
  const out: ManifestLine[] = [];
  for await (const l of readManifest(store, manifest)) out.push(l);
  return out;
}
