/**
 * A tiny logging seam. shared/ code logs through this so that the Functions app can route lines to
 * InvocationContext, the CLI to stderr, and the tests to an array they inspect for leaked secrets.
 * Every line passes through `redact`, the last line of defence against tokens and signed URLs.
 */

export type LogLevel = "debug" | "info" | "warn" | "error";

export interface Logger {
  log(level: LogLevel, message: string, fields?: Record<string, unknown>): void;
}

export const silentLogger: Logger = { log() {} };

const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** A logger writing one line per call to `write`, from `min` level up, redacted. */
export function lineLogger(write: (line: string) => void, min: LogLevel = "info"): Logger {
  return {
    log(level, message, fields) {
      if (LEVELS[level] < LEVELS[min]) return;
      const extra = fields && Object.keys(fields).length ? " " + safeJson(fields) : "";
      write(redact(`${level}: ${message}${extra}`));
    },
  };
}

function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v);
  } catch {
    return "[unserialisable]";
  }
}

const PATTERNS: Array<[RegExp, string]> = [
  // Authorization headers and bare bearer tokens.
  [/(bearer\s+)[A-Za-z0-9\-._~+/]+=*/gi, "$1[redacted]"],
  // JWTs anywhere (three base64url parts starting with eyJ).
  [/eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*/g, "[redacted-jwt]"],
  // Signed URLs: SAS signatures, import-session tokens, any query parameter that looks like a secret.
  [/([?&](?:sig|signature|token|access_token|code|key|se|sv|skoid|sktid|authtoken|clientstate)=)[^&\s"']+/gi, "$1[redacted]"],
  // Connection strings.
  [/(AccountKey=|SharedAccessSignature=)[^;\s"']+/gi, "$1[redacted]"],
];

export function redact(text: string): string {
  let out = text;
  for (const [re, rep] of PATTERNS) out = out.replace(re, rep);
  return out;
}
