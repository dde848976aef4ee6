import { z } from "zod";
import { findMailbox, pickRun } from "../catalog";
import { validateMailboxArg } from "../graph/mailboxApi";
import type { Services } from "../services";
import { makeRunId } from "../store/naming";
import { InvalidInputError } from "../errors";
import { readFolders } from "../backup/backupRun";
import { readManifest } from "../backup/manifest";
import type { RestoreRequest } from "./restoreRun";

/** What a caller may ask of a restore (HTTP body, CLI flags), validated strictly. */
export const RestoreBody = z.strictObject({
  run: z.string().max(64).optional(),
  target: z.string().min(1).max(320).optional(),
  folders: z.array(z.string().min(1).max(1024)).max(1000).optional(),
  items: z.array(z.string().min(1).max(1024)).max(10000).optional(),
  targetFolderName: z.string().min(1).max(255).optional(),
  intoOriginalFolders: z.boolean().optional(),
  /** create (default), or for EWS targets update / upsert (overwrite in place, re-create when gone). */
  mode: z.enum(["create", "update", "upsert"]).optional(),
});

export type RestoreBody = z.infer<typeof RestoreBody>;

/** Builds a restore request from the user's words; the store says what exists. */
export async function prepareRestore(svc: Services, mailbox: string, body: RestoreBody, now: Date): Promise<RestoreRequest> {
  const source = await findMailbox(svc.store, validateMailboxArg(mailbox));
  const run = await pickRun(svc.store, source.mailboxId, body.run);
  if (body.target !== undefined) validateMailboxArg(body.target);
  // Refuse now, with a clear message, what the run cannot give.
  if (body.folders?.length) {
    const known = new Set((await readFolders(svc, source.mailboxId, run.runId)).map((f) => f.id));
    const missing = body.folders.filter((f) => !known.has(f));
    if (missing.length) throw new InvalidInputError(`folder ${missing[0].slice(0, 60)} is not in run ${run.runId}`, "FolderNotInRun");
  }
  if (body.items?.length) {
    const wanted = new Set(body.items);
    for await (const l of readManifest(svc.store, run.manifest)) if ((l.status === "exported" || l.status === "unchanged") && l.path) wanted.delete(l.itemId);
    if (wanted.size) throw new InvalidInputError(`${wanted.size} requested item(s) are not stored in run ${run.runId}, e.g. ${[...wanted][0].slice(0, 60)}`, "ItemNotInRun");
  }
  return {
    restoreId: makeRunId(now, crypto.randomUUID().slice(0, 8)),
    sourceMailboxId: source.mailboxId,
    runId: run.runId,
    target: body.target ?? source.mailboxId,
    ...(body.folders?.length ? { folders: body.folders } : {}),
    ...(body.items?.length ? { items: body.items } : {}),
    ...(body.targetFolderName ? { targetFolderName: body.targetFolderName } : {}),
    ...(body.intoOriginalFolders || (body.mode && body.mode !== "create") ? { intoOriginalFolders: true } : {}),
    ...(body.mode && body.mode !== "create" ? { mode: body.mode } : {}),
  };
}

