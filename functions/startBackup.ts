import type { HttpRequest, HttpResponseInit, InvocationContext } from "@azure/functions";
import * as df from "durable-functions";
import type { DurableClient } from "durable-functions";
import { z } from "zod";
import { BACKUP_ORCHESTRATION } from "./backupMailbox";
import { invocationLogger } from "./runtime";
import { GraphError, InvalidInputError, isMailvaultError } from "../shared/errors";
import { validateMailboxArg } from "../shared/graph/mailboxApi";
import { prepareBackup } from "../shared/backup/start";
import { getServices } from "../shared/services";
import { parseWith } from "../shared/validation";

/**
 * POST /api/mailboxes/{mailbox}/backups  (function key)
 * Body (optional): {"full": true} to ignore stored delta links; {"source": "ews"} for an Exchange
 * Server mailbox named by its SMTP address (or name it `ews:<address>` in the path).
 * 202 with the Durable check-status payload; 409 with the running instance's URLs when a backup
 * of this mailbox is already going; 400 for bad input; 404 for an unknown mailbox.
 */

const MAX_BODY = 16 * 1024;

const BackupBody = z.strictObject({
  full: z.boolean().optional(),
  /** "ews": the mailbox is an SMTP address on the configured Exchange Server (same as an `ews:` prefix). */
  source: z.enum(["graph", "ews"]).optional(),
});

export async function startBackupHandler(request: HttpRequest, client: DurableClient, context: InvocationContext): Promise<HttpResponseInit> {
  try {
    const mailbox = validateMailboxArg(request.params.mailbox);
    const body = await readJsonBody(request, BackupBody);
    const prepared = await prepareBackup(getServices(), mailbox, { full: body.full, source: body.source });
    const running = await runningStatus(client, prepared.instanceId);
    if (running) {
      return {
        status: 409,
        jsonBody: {
          error: { code: "BackupAlreadyRunning", message: `a backup of ${mailbox} is already ${running.toLowerCase()}` },
          ...client.createHttpManagementPayload(prepared.instanceId),
        },
      };
    }
    await client.startNew(BACKUP_ORCHESTRATION, { instanceId: prepared.instanceId, input: prepared.request });
    invocationLogger(context).log("info", "backup started", { instanceId: prepared.instanceId });
    return client.createCheckStatusResponse(request, prepared.instanceId);
  } catch (e) {
    return errorResponse(e, context);
  }
}

df.app.client.http("startBackup", {
  route: "mailboxes/{mailbox}/backups",
  methods: ["POST"],
  authLevel: "function",
  handler: startBackupHandler,
});

const ACTIVE = new Set<string>([df.OrchestrationRuntimeStatus.Running, df.OrchestrationRuntimeStatus.Pending, df.OrchestrationRuntimeStatus.ContinuedAsNew]);

/** The instance's status when it is still going, else undefined. getStatus throws for unknown ids in v3. */
export async function runningStatus(client: DurableClient, instanceId: string): Promise<string | undefined> {
  try {
    const s = await client.getStatus(instanceId);
    return s && ACTIVE.has(s.runtimeStatus) ? s.runtimeStatus : undefined;
  } catch {
    return undefined;
  }
}

/** Reads a small JSON body (or none) and validates it; clear 400s for everything else. */
export async function readJsonBody<T>(request: HttpRequest, schema: z.ZodType<T>): Promise<T> {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > MAX_BODY) throw new InvalidInputError(`request body larger than ${MAX_BODY} bytes`, "BodyTooLarge");
  const text = await request.text();
  if (text.length > MAX_BODY) throw new InvalidInputError(`request body larger than ${MAX_BODY} bytes`, "BodyTooLarge");
  let value: unknown = {};
  if (text.trim()) {
    try {
      value = JSON.parse(text);
    } catch {
      throw new InvalidInputError("request body is not valid JSON", "InvalidJson");
    }
  }
  return parseWith(schema, value);
}

export function errorResponse(e: unknown, context: InvocationContext): HttpResponseInit {
  if (isMailvaultError(e) && e.kind === "invalid-input") {
    return { status: e.code === "BodyTooLarge" ? 413 : 400, jsonBody: { error: e.toJSON() } };
  }
  if (e instanceof GraphError && (e.status === 404 || e.code === "MailboxNotFound")) {
    return { status: 404, jsonBody: { error: e.toJSON() } };
  }
  invocationLogger(context).log("error", "request failed", { error: e instanceof Error ? e.message : String(e) });
  const status = e instanceof GraphError && (e.status === 429 || e.status === 503) ? 503 : 500;
  return { status, jsonBody: { error: { code: isMailvaultError(e) ? e.code : "InternalError", message: status === 503 ? "Microsoft Graph is throttling; try again later" : "the request failed; see the function logs" } } };
}
