import { describeError, GraphError, InvalidInputError, MailvaultError, ProtocolError } from "../errors";
import { MAX_EXPORT_IDS, validateExportIds } from "../graph/mailboxApi";
import type { MailboxSource } from "../source";
import { TRANSIENT_EWS_CODES } from "../ews/soap";
import { sleep } from "../graph/graphClient";
import { type Logger, silentLogger } from "../log";
import type { ItemStore } from "../store/itemStore";
import { itemObjectPath } from "../store/naming";
import { shortId } from "./exportResponse";

/**
 * exportBatch: one batch (Graph: at most 20 items; EWS: the configured batch), from Exchange to the store, with only metadata
 * coming back. This is what the Durable export activity runs.
 *
 * For each attempt it calls exportItems (EWS: ExportItems) once for the items still pending, parses the response as a
 * stream and pipes each item's decoded bytes straight into the store under its version path. Items
 * finish one by one: when a response breaks off midway (reset, truncated JSON), the items already
 * stored stay stored, the one in flight leaves nothing visible, and only the rest is asked for again.
 * A per-item error is recorded and the batch goes on (Corso's model); only a whole-call error that
 * cannot be retried (bad request, unknown mailbox, auth) fails every pending item of the batch.
 */

export interface ExportItemRef {
  itemId: string;
  folderId: string;
  /** The changeKey from listing/delta; the export response's own changeKey wins when present. */
  changeKey?: string;
  /** Listed size in bytes (used for planning only). */
  size?: number;
}

export type ItemOutcome =
  | {
      status: "exported";
      itemId: string;
      folderId: string;
      changeKey: string;
      path: string;
      size: number;
      sha256: string;
      /** The version was already stored by an earlier run or attempt; it was kept, not rewritten. */
      existed: boolean;
    }
  | {
      status: "failed";
      itemId: string;
      folderId: string;
      changeKey?: string;
      error: { code: string; message: string };
      /** A later run (or a retry of the batch) may succeed. */
      retryable: boolean;
      /**
       * "item": Exchange (or the store) failed this one item. "call": the whole exportItems call or
       * its response failed, so this item never had its own answer; splitting the batch may help.
       */
      scope: "item" | "call";
    };

export interface ExportBatchInput {
  mailboxId: string;
  items: ExportItemRef[];
}

export interface ExportBatchDeps {
  /** The mailbox's source (Graph or EWS). */
  mailbox: MailboxSource;
  store: ItemStore;
  logger?: Logger;
}

export interface ExportBatchOptions {
  signal?: AbortSignal;
  /** exportItems calls for the same batch before pending items are given up (default 4). */
  maxAttempts?: number;
  /** Pause between attempts after a broken response (default 500 ms, doubling). */
  retryDelayMs?: number;
}

/** Per-item codes worth asking for again in the next attempt (the same for Graph and EWS). */
const TRANSIENT_ITEM_CODES = TRANSIENT_EWS_CODES;

/** Longest pause honoured between attempts (a server asking for more is asked again after this). */
const MAX_BACK_OFF_MS = 5 * 60_000;

export function validateBatchInput(input: unknown, maxIds = MAX_EXPORT_IDS): ExportBatchInput {
  const o = input as Partial<ExportBatchInput> | null;
  if (!o || typeof o !== "object" || typeof o.mailboxId !== "string" || !o.mailboxId) {
    throw new InvalidInputError("export batch needs a mailboxId");
  }
  if (!Array.isArray(o.items)) throw new InvalidInputError("export batch needs an items array");
  const ids = o.items.map((i) => (i as Partial<ExportItemRef> | null)?.itemId);
  validateExportIds(ids, maxIds);
  for (const i of o.items) {
    if (typeof i.folderId !== "string") throw new InvalidInputError("every export item needs a folderId");
  }
  if (new Set(o.items.map((i) => i.itemId)).size !== o.items.length) throw new InvalidInputError("export batch has duplicate item ids");
  return o as ExportBatchInput;
}

export async function exportBatch(deps: ExportBatchDeps, input: ExportBatchInput, options: ExportBatchOptions = {}): Promise<ItemOutcome[]> {
  const { mailbox, store } = deps;
  const log = deps.logger ?? silentLogger;
  // 1 to 20 distinct ids, each with a folder: checked before anything is called.
  validateBatchInput(input, mailbox.maxExportIds);

  const byId = new Map(input.items.map((i) => [i.itemId, i]));
  const done = new Map<string, ItemOutcome>();
  /** The latest retryable failure per item, reported if attempts run out. */
  const lastFailure = new Map<string, ItemOutcome>();
  const maxAttempts = options.maxAttempts ?? 4;
  let delay = options.retryDelayMs ?? 500;
  /** The longest BackOffMilliseconds the server asked for in this attempt (EWS ErrorServerBusy per item). */
  let backOffMs = 0;

  for (let attempt = 1; attempt <= maxAttempts; attempt++) {
    const pending = input.items.filter((i) => !done.has(i.itemId)).map((i) => i.itemId);
    if (pending.length === 0) break;
    backOffMs = 0;
    try {
      await mailbox.exportItems(
        input.mailboxId,
        pending,
        async (elements) => {
          for await (const el of elements) {
            const ref = byId.get(el.itemId);
            if (!ref || done.has(el.itemId) || !pending.includes(el.itemId)) {
              // Not asked for (or already settled): skip it; its data is drained by the reader.
              log.log("warn", "export response carried an item that was not requested", { itemId: shortId(el.itemId) });
              continue;
            }
            if (el.kind === "error") {
              const outcome: ItemOutcome = {
                status: "failed",
                itemId: ref.itemId,
                folderId: ref.folderId,
                changeKey: ref.changeKey,
                error: el.error,
                retryable: TRANSIENT_ITEM_CODES.has(el.error.code),
                scope: "item",
              };
              if (outcome.retryable) lastFailure.set(ref.itemId, outcome);
              else done.set(ref.itemId, outcome);
              if (el.backOffMs !== undefined) backOffMs = Math.max(backOffMs, el.backOffMs);
              continue;
            }
            const changeKey = el.changeKey ?? ref.changeKey;
            if (!changeKey) {
              done.set(ref.itemId, failed(ref, "MissingChangeKey", "neither the listing nor the export response gave a changeKey", false, "item"));
              continue;
            }
            const path = itemObjectPath(input.mailboxId, ref.itemId, changeKey);
            try {
              const stored = await store.putObject(path, nonEmpty(el.data, ref.itemId), { signal: options.signal });
              if (!stored.existed && stored.size !== el.data.bytes) {
                throw new MailvaultError("storage", "SizeMismatch", `stored ${stored.size} bytes but decoded ${el.data.bytes}`);
              }
              done.set(ref.itemId, {
                status: "exported",
                itemId: ref.itemId,
                folderId: ref.folderId,
                changeKey,
                path,
                size: stored.size,
                sha256: stored.sha256,
                existed: stored.existed,
              });
            } catch (e) {
              if (isStreamFailure(e)) throw e; // the response itself broke: the whole remainder is retried
              const err = describeError(e);
              const retryable = e instanceof MailvaultError ? e.retryable : true;
              const outcome = failed(ref, err.code, err.message, retryable, "item");
              if (retryable) lastFailure.set(ref.itemId, outcome);
              else done.set(ref.itemId, outcome);
              log.log("warn", "item not stored", { itemId: shortId(ref.itemId), code: err.code });
            }
          }
        },
        options.signal,
      );
    } catch (e) {
      if (options.signal?.aborted) throw e;
      const err = describeError(e);
      const retryable = e instanceof MailvaultError ? e.retryable : true;
      log.log("warn", "export call failed", { attempt, code: err.code, pending: pending.length, retryable });
      for (const id of pending) {
        if (done.has(id)) continue;
        const ref = byId.get(id) as ExportItemRef;
        const outcome = failed(ref, err.code, err.message, retryable, "call");
        if (retryable) lastFailure.set(id, outcome);
        else done.set(id, outcome);
      }
      if (!retryable) break;
    }
    if (attempt < maxAttempts && input.items.some((i) => !done.has(i.itemId))) {
      // The server's BackOffMilliseconds is a floor: asking sooner is throttled again.
      await sleep(Math.max(delay, Math.min(backOffMs, MAX_BACK_OFF_MS)), options.signal);
      delay *= 2;
    }
  }

  return input.items.map(
    (i) =>
      done.get(i.itemId) ??
      lastFailure.get(i.itemId) ??
      failed(i, "NotReturned", "the export response never carried this item", true, "call"),
  );
}

function failed(ref: ExportItemRef, code: string, message: string, retryable: boolean, scope: "item" | "call"): ItemOutcome {
  return { status: "failed", itemId: ref.itemId, folderId: ref.folderId, changeKey: ref.changeKey, error: { code, message }, retryable, scope };
}

/** Errors that mean the response stream is unusable from here on (vs. one item's bad data). */
function isStreamFailure(e: unknown): boolean {
  if (e instanceof GraphError) return true;
  if (e instanceof MailvaultError) return e.code === "MalformedJson" || e.code === "MalformedXml" || e.code === "ResponseInterrupted" || e.code === "TruncatedResponse" || e.code === "MalformedResponse";
  return false;
}

/**
 * An export stream is never empty. Throwing before the store commits means an empty answer leaves
 * no object behind (a 0-byte version would otherwise be "found" by every later attempt).
 */
async function* nonEmpty(data: AsyncIterable<Buffer>, itemId: string): AsyncGenerator<Buffer> {
  let bytes = 0;
  for await (const c of data) {
    bytes += c.length;
    yield c;
  }
  if (bytes === 0) throw new ProtocolError("EmptyData", `the export response carried no bytes for item ${shortId(itemId)}`, { retryable: true });
}
