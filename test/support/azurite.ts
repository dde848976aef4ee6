/**
 * Azurite's blob service for tests, the demo and the bench: in memory, on a free loopback port,
 * spawned from the installed package (no PATH lookup), stopped with `stop()`.
 *
 * The child also exits by itself when its parent goes away (even on SIGKILL): a preloaded snippet
 * watches its stdin pipe, which closes when the parent dies.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Azurite's well-known development account (public, documented; not a secret). */
export const AZURITE_ACCOUNT = "devstoreaccount1";
export const AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

export interface AzuriteHandle {
  /** A connection string for the blob service (MAILVAULT_STORAGE_CONNECTION_STRING). */
  connectionString: string;
  /** `http://127.0.0.1:<port>/devstoreaccount1` */
  blobEndpoint: string;
  port: number;
  pid: number;
  /** Stops Azurite (SIGTERM, then SIGKILL) and removes its workspace. Safe to call twice. */
  stop(): Promise<void>;
}

export interface StartAzuriteOptions {
  /** How long to wait for Azurite to accept connections (default 30 s). */
  startTimeoutMs?: number;
  /** Let Azurite print its access log (default: silent). */
  verbose?: boolean;
}

/** Exits the child when its stdin (a pipe from the parent) ends, i.e. when the parent is gone. */
const WATCHDOG =
  "data:text/javascript," +
  encodeURIComponent(
    "const i=process.stdin;i.on('end',()=>process.exit(0));i.on('error',()=>process.exit(0));i.resume();if(typeof i.unref==='function')i.unref();",
  );

function azuriteBlobMain(): string {
  // The package's `azurite-blob` bin; resolved from this checkout's node_modules, never from PATH.
  return require.resolve("azurite/dist/src/blob/main.js");
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error("no free port"))));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ host: "127.0.0.1", port });
    const done = (ok: boolean) => {
      sock.removeAllListeners();
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(1000, () => done(false));
    sock.once("connect", () => done(true));
    sock.once("error", () => done(false));
  });
}

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (exited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(exited(child)), ms);
    child.once("exit", () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

async function startOnce(options: StartAzuriteOptions): Promise<AzuriteHandle> {
  const port = await freePort();
  const workspace = await mkdtemp(join(tmpdir(), "mailvault-azurite-"));
  const args = [
    `--import=${WATCHDOG}`,
    azuriteBlobMain(),
    "--blobHost",
    "127.0.0.1",
    "--blobPort",
    String(port),
    "--inMemoryPersistence",
    "--disableTelemetry",
    "--loose",
    "--skipApiVersionCheck",
    ...(options.verbose ? [] : ["--silent"]),
  ];
  const child = spawn(process.execPath, args, {
    // In memory, Azurite writes nothing; its working directory is a throwaway folder all the same
    // (--location cannot be combined with --inMemoryPersistence).
    cwd: workspace,
    stdio: ["pipe", "pipe", "pipe"],
    windowsHide: true,
  });
  let output = "";
  const keep = (b: Buffer) => {
    output = (output + b.toString("utf8")).slice(-8192);
    if (options.verbose) process.stderr.write(b);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  child.stdin?.on("error", () => {});

  // If this process exits without calling stop(), take Azurite along.
  const onExit = () => {
    if (!exited(child)) child.kill("SIGKILL");
  };
  process.once("exit", onExit);

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      process.removeListener("exit", onExit);
      if (!exited(child)) {
        child.kill("SIGTERM");
        if (!(await waitExit(child, 5000))) {
          child.kill("SIGKILL");
          await waitExit(child, 5000);
        }
      }
      child.stdin?.destroy();
      child.stdout?.destroy();
      child.stderr?.destroy();
      await rm(workspace, { recursive: true, force: true }).catch(() => {});
    })();
    return stopped;
  };

  const deadline = Date.now() + (options.startTimeoutMs ?? 30_000);
  for (;;) {
    if (exited(child)) {
      await stop();
      throw new Error(`Azurite exited during start-up (code ${child.exitCode ?? child.signalCode}): ${output.trim().slice(-2000)}`);
    }
    if (await canConnect(port)) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`Azurite did not accept connections on 127.0.0.1:${port} within ${options.startTimeoutMs ?? 30_000} ms: ${output.trim().slice(-2000)}`);
    }
    await delay(100);
  }

  const blobEndpoint = `http://127.0.0.1:${port}/${AZURITE_ACCOUNT}`;
  return {
    connectionString: `DefaultEndpointsProtocol=http;AccountName=${AZURITE_ACCOUNT};AccountKey=${AZURITE_KEY};BlobEndpoint=${blobEndpoint};`,
    blobEndpoint,
    port,
    pid: child.pid ?? -1,
    stop,
  };
}

/** Starts Azurite's blob service in memory on a free loopback port. */
export async function startAzurite(options: StartAzuriteOptions = {}): Promise<AzuriteHandle> {
  let last: unknown;
  // The free port is found before Azurite binds it; another process may take it in between: try again.
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce(options);
    } catch (e) {
      last = e;
      if (!(e instanceof Error && /EADDRINUSE/.test(e.message))) throw e;
    }
  }
  throw last;
}
