import { createHash } from "node:crypto";

/**
 * Backup format v1 object names.
 *
 * Graph ids are case-sensitive base64 (with `/`, `+`, `=`) and can be longer than a file name may be,
 * so ids never appear in names as they are. Item and version keys are sha256 hex of the exact id or
 * changeKey: lowercase hex is the same on case-insensitive file systems and in blob names, and two
 * ids that differ only in letter case get different keys. Mailbox keys keep a readable prefix for
 * people browsing the store, plus a hash of the exact id so that they stay distinct.
 *
 * Layout, relative to the store root:
 *   mailboxes/<mailboxKey>/items/<ik[0..2]>/<itemKey>/<versionKey>.bin   one item version's bytes
 *   mailboxes/<mailboxKey>/runs/<runId>/manifest.jsonl                   one line per item handled
 *   mailboxes/<mailboxKey>/runs/<runId>/summary.json                     counts, bytes, failures
 *   mailboxes/<mailboxKey>/mailbox.json                                  id, address, source
 */

export const FORMAT_VERSION = 1;

export function sha256Hex(s: string): string {
  return createHash("sha256").update(s, "utf8").digest("hex");
}

/** A readable, file-system-safe and distinct folder name for a mailbox id (MBX id, UPN, SMTP). */
export function mailboxKey(mailboxId: string): string {
  const readable = mailboxId
    .toLowerCase()
    .replace(/[^a-z0-9@._-]+/g, "_")
    .replace(/^[._]+/, "")
    .slice(0, 64);
  return `${readable || "mailbox"}-${sha256Hex(mailboxId).slice(0, 16)}`;
}

export function itemKey(itemId: string): string {
  return sha256Hex(itemId);
}

/** The version of an item is its changeKey; the same version always maps to the same object. */
export function versionKey(changeKey: string): string {
  return sha256Hex(changeKey).slice(0, 32);
}

export function mailboxRoot(mailboxId: string): string {
  return `mailboxes/${mailboxKey(mailboxId)}`;
}

export function itemObjectPath(mailboxId: string, itemId: string, changeKey: string): string {
  const ik = itemKey(itemId);
  return `${mailboxRoot(mailboxId)}/items/${ik.slice(0, 2)}/${ik}/${versionKey(changeKey)}.bin`;
}

export function runRoot(mailboxId: string, runId: string): string {
  assertRunId(runId);
  return `${mailboxRoot(mailboxId)}/runs/${runId}`;
}

export function manifestPath(mailboxId: string, runId: string): string {
  return `${runRoot(mailboxId, runId)}/manifest.jsonl`;
}

export function summaryPath(mailboxId: string, runId: string): string {
  return `${runRoot(mailboxId, runId)}/summary.json`;
}

const RUN_ID = /^[0-9]{8}T[0-9]{9}Z-[a-z0-9]{4,32}$/;

/** Run ids sort by start time, to the millisecond: `20261123T021500123Z-<suffix>`. */
export function makeRunId(startedAt: Date, suffix: string): string {
  const stamp = startedAt.toISOString().replace(/[-:.]/g, "");
  const id = `${stamp}-${suffix.toLowerCase().replace(/[^a-z0-9]/g, "").slice(0, 12) || "run"}`;
  assertRunId(id);
  return id;
}

export function isRunId(s: string): boolean {
  return RUN_ID.test(s);
}

function assertRunId(runId: string): void {
  if (!RUN_ID.test(runId)) throw new Error(`not a run id: ${JSON.stringify(runId).slice(0, 80)}`);
}
