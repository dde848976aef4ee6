import { createHash } from "node:crypto";
import { describeError, NotFoundError } from "./errors";
import type { ItemStore } from "./store/itemStore";
import { readManifest } from "./backup/manifest";
import { Semaphore } from "./util/semaphore";

/**
 * Re-reads every object a run's manifest points at and checks its size and sha256. This is how an
 * admin proves a backup is restorable without restoring it.
 */

export interface VerifyProblem {
  itemId: string;
  path: string;
  problem: "missing" | "corrupt" | "unreadable";
  detail: string;
}

export interface VerifyReport {
  runId: string;
  mailboxId: string;
  manifest: string;
  checked: number;
  ok: number;
  /** Items the run itself recorded as failed (not a verification problem, listed for completeness). */
  failedInRun: number;
  bytes: number;
  problems: VerifyProblem[];
}

export async function verifyRun(
  store: ItemStore,
  run: { mailboxId: string; runId: string; manifest: string },
  options: { concurrency?: number; onProgress?: (checked: number) => void } = {},
): Promise<VerifyReport> {
  const report: VerifyReport = { runId: run.runId, mailboxId: run.mailboxId, manifest: run.manifest, checked: 0, ok: 0, failedInRun: 0, bytes: 0, problems: [] };
  const sem = new Semaphore(options.concurrency ?? 8);
  const running: Promise<void>[] = [];
  for await (const line of readManifest(store, run.manifest)) {
    if (line.status === "failed") report.failedInRun++;
    if ((line.status !== "exported" && line.status !== "unchanged") || !line.path) continue;
    const { path, sha256, size, itemId } = line;
    const release = await sem.acquire();
    const p = (async () => {
      try {
        const actual = await hashObject(store, path);
        report.checked++;
        if (actual.sha256 !== sha256 || (size !== undefined && actual.size !== size)) {
          report.problems.push({ itemId, path, problem: "corrupt", detail: `expected ${size} bytes sha256 ${sha256}, found ${actual.size} bytes sha256 ${actual.sha256}` });
        } else {
          report.ok++;
          report.bytes += actual.size;
        }
      } catch (e) {
        report.checked++;
        const missing = e instanceof NotFoundError;
        report.problems.push({ itemId, path, problem: missing ? "missing" : "unreadable", detail: describeError(e).message });
      } finally {
        release();
        options.onProgress?.(report.checked);
      }
    })();
    running.push(p);
    if (running.length > 64) await Promise.all(running.splice(0, running.length - 8));
  }
  await Promise.all(running);
  return report;
}

export async function hashObject(store: ItemStore, path: string): Promise<{ size: number; sha256: string }> {
  const h = createHash("sha256");
  let size = 0;
  for await (const c of await store.openObject(path)) {
    const b = c as Buffer;
    size += b.length;
    h.update(b);
  }
  return { size, sha256: h.digest("hex") };
}
