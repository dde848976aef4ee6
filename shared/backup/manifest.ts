import { createInterface } from "node:readline";
import type { ItemOutcome } from "../export/exportBatch";
import type { ItemStore } from "../store/itemStore";

/**
 * The run manifest (backup format v1): JSON Lines, one line per item a run handled.
 * Stored items carry `path`, `size` and `sha256` of the stored bytes; failed ones carry `error`.
 * `unchanged` lines point at the version stored by an earlier run, so every run's manifest alone
 * describes the mailbox as of that run.
 */

export type ManifestStatus = "exported" | "unchanged" | "failed" | "deleted";

export interface ManifestLine {
  itemId: string;
  changeKey?: string;
  folderId: string;
  status: ManifestStatus;
  /** Object path relative to the store root (exported and unchanged). */
  path?: string;
  size?: number;
  sha256?: string;
  /** Message class from the listing, e.g. IPM.Note. */
  type?: string;
  error?: { code: string; message: string };
}

export function outcomeToLine(o: ItemOutcome, type?: string): ManifestLine {
  if (o.status === "exported") {
    return { itemId: o.itemId, changeKey: o.changeKey, folderId: o.folderId, status: "exported", path: o.path, size: o.size, sha256: o.sha256, ...(type ? { type } : {}) };
  }
  return { itemId: o.itemId, changeKey: o.changeKey, folderId: o.folderId, status: "failed", error: o.error, ...(type ? { type } : {}) };
}

export function toJsonl(lines: readonly ManifestLine[]): string {
  return lines.map((l) => JSON.stringify(l) + "\n").join("");
}

export function isManifestLine(v: unknown): v is ManifestLine {
  const o = v as Partial<ManifestLine> | null;
  return (
    !!o &&
    typeof o.itemId === "string" &&
    typeof o.folderId === "string" &&
    (o.status === "exported" || o.status === "unchanged" || o.status === "failed" || o.status === "deleted")
  );
}

/** Streams a stored manifest line by line (manifests of large mailboxes do not fit comfortably in memory). */
export async function* readManifest(store: ItemStore, path: string): AsyncGenerator<ManifestLine> {
  const stream = await store.openObject(path);
  const rl = createInterface({ input: stream, crlfDelay: Infinity });
  let n = 0;
  for await (const raw of rl) {
    n++;
    if (!raw.trim()) continue;
    let v: unknown;
    try {
      v = JSON.parse(raw);
    } catch {
      throw new Error(`${path}:${n}: not JSON`);
    }
    if (!isManifestLine(v)) throw new Error(`${path}:${n}: not a manifest line`);
    yield v;
  }
}
