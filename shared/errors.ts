/**
 * Typed errors. Every error mailvault raises on purpose is a MailvaultError with a stable `code`,
 * so callers (CLI exit codes, HTTP status, manifest `error.code`) can branch on it without parsing
 * messages. Messages never carry tokens, secrets or pre-authenticated URLs.
 */

export type ErrorKind =
  /** Bad input from a user or caller: exit code 2 / HTTP 400. Nothing was written. */
  | "invalid-input"
  /** Graph or EWS said no (4xx/5xx after retries). */
  | "remote"
  /** The export response was malformed: broken JSON, invalid base64, truncated body. */
  | "protocol"
  /** Storage failed or the stored bytes did not verify. */
  | "storage"
  /** Anything else that stops the run. */
  | "internal";

export class MailvaultError extends Error {
  readonly code: string;
  readonly kind: ErrorKind;
  /** True when trying the same operation again may succeed (throttling, resets, 5xx). */
  readonly retryable: boolean;

  constructor(kind: ErrorKind, code: string, message: string, options?: { cause?: unknown; retryable?: boolean }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.kind = kind;
    this.code = code;
    this.retryable = options?.retryable ?? false;
  }

  /** The `{code, message}` pair written to manifests and reports. */
  toJSON(): { code: string; message: string } {
    return { code: this.code, message: this.message };
  }
}

/** Bad input: malformed ids, too many ids, unknown flags, bad JSON bodies. */
export class InvalidInputError extends MailvaultError {
  constructor(message: string, code = "InvalidInput") {
    super("invalid-input", code, message);
  }
}

/** A Graph (or EWS) request that failed for good, or with a retryable status after all retries. */
export class GraphError extends MailvaultError {
  readonly status: number;
  readonly requestId: string | undefined;

  constructor(
    status: number,
    code: string,
    message: string,
    options?: { requestId?: string; retryable?: boolean; cause?: unknown },
  ) {
    super("remote", code, message, { retryable: options?.retryable, cause: options?.cause });
    this.status = status;
    this.requestId = options?.requestId;
  }
}

/** The response body did not follow the protocol (truncated JSON, invalid base64, missing fields). */
export class ProtocolError extends MailvaultError {
  constructor(code: string, message: string, options?: { retryable?: boolean; cause?: unknown }) {
    super("protocol", code, message, options);
  }
}

/** Storage failure, or stored bytes that do not match what was expected. */
export class StoreError extends MailvaultError {
  constructor(code: string, message: string, options?: { retryable?: boolean; cause?: unknown }) {
    super("storage", code, message, options);
  }
}

/** A stored object that is missing when it must exist. */
export class NotFoundError extends StoreError {
  constructor(path: string) {
    super("NotFound", `no stored object at ${path}`);
  }
}

export function isMailvaultError(e: unknown): e is MailvaultError {
  return e instanceof MailvaultError;
}

/** `{code, message}` for any thrown value, for manifests and reports. */
export function describeError(e: unknown): { code: string; message: string } {
  if (e instanceof MailvaultError) return e.toJSON();
  if (e instanceof Error) {
    const code = (e as { code?: unknown }).code;
    return { code: typeof code === "string" ? code : e.name || "Error", message: e.message };
  }
  return { code: "Error", message: String(e) };
}
