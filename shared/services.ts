import type { TokenCredential } from "@azure/identity";
import { boolSetting, type Env, intSetting, setting } from "./config";
import { EwsClient, type EwsAuth } from "./ews/ewsClient";
import { EwsSource } from "./ews/ewsSource";
import { GraphSource } from "./graph/graphSource";
import type { Sources } from "./source";
import { GraphClient, StaticTokenCredential } from "./graph/graphClient";
import { MailboxApi } from "./graph/mailboxApi";
import { InvalidInputError } from "./errors";
import { type Logger, silentLogger } from "./log";
import type { ItemStore } from "./store/itemStore";
import { openStore } from "./store/openStore";
import { EXCHANGE_ONLINE_IMPORT_PACING, type ImportPacing } from "./restore/importer";

/**
 * What the backup and restore code needs from the outside world, built once per process from the
 * settings. The Functions app builds it from app settings on first use; the CLI, the demo and the
 * tests build it themselves (for example with a store chosen by `--store`) and install it.
 */
export interface Services {
  /** Graph's mailbox API: users, subscriptions and the other Graph-only parts. */
  mailbox: MailboxApi;
  /** Where items come from and go back to: Graph, and EWS when it is configured (see source.ts). */
  sources: Sources;
  store: ItemStore;
  logger: Logger;
  limits: {
    /** Graph requests, and export activities, in flight per mailbox. */
    maxRequestsPerMailbox: number;
    /** Byte budget of one exportItems call (listed sizes). */
    batchMaxBytes: number;
    /** Upload budget per target mailbox (Exchange Online: 150 MB per 5 minutes). */
    importPacing: ImportPacing;
  };
  /** Pauses between retries; production keeps the defaults, tests shorten them. */
  timing: Timing;
}

export interface Timing {
  /** First Graph backoff step when no Retry-After is given (default 1 s). */
  graphBaseRetryDelayMs?: number;
  /** Longest Graph wait, Retry-After included (default 60 s). */
  graphMaxRetryDelayMs?: number;
  /** Pause before exportBatch asks again for items whose response broke off (default 500 ms, doubling). */
  exportRetryDelayMs?: number;
  /** Longest EWS wait, BackOffMilliseconds included (default 5 minutes). */
  ewsMaxRetryDelayMs?: number;
  /** First pause before an import upload is tried again without a Retry-After (default 1 s, doubling). */
  importRetryDelayMs?: number;
}

export interface ServiceOverrides {
  store?: ItemStore;
  credential?: TokenCredential;
  logger?: Logger;
  onGraphRetry?: ConstructorParameters<typeof GraphClient>[0]["onRetry"];
  /** The EWS sign-in (tests, and callers holding their own credential); default from the settings. */
  ewsCredential?: TokenCredential;
  onEwsRetry?: ConstructorParameters<typeof EwsClient>[0]["onRetry"];
  timing?: Timing;
  /** Replaces Exchange Online's import budget (tests and benchmarks against the simulator). */
  importPacing?: ImportPacing;
}

/** A Graph credential from the settings: a static token when GRAPH_ACCESS_TOKEN is set, else DefaultAzureCredential. */
export function graphCredential(env: Env): TokenCredential {
  const token = setting(env, "GRAPH_ACCESS_TOKEN");
  if (token) return new StaticTokenCredential(token);
  // Loaded lazily: @azure/identity is large and the static-token path (CLI, tests) does not need it.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { DefaultAzureCredential } = require("@azure/identity") as typeof import("@azure/identity");
  const clientId = setting(env, "AZURE_CLIENT_ID");
  return new DefaultAzureCredential(clientId ? { managedIdentityClientId: clientId } : {});
}

export function createServices(env: Env, overrides: ServiceOverrides = {}): Services {
  const logger = overrides.logger ?? silentLogger;
  const maxRequestsPerMailbox = intSetting(env, "MAILVAULT_MAX_REQUESTS_PER_MAILBOX", 1, 16);
  const graph = new GraphClient({
    endpoint: setting(env, "GRAPH_ENDPOINT") as string,
    apiVersion: setting(env, "GRAPH_API_VERSION") as string,
    credential: overrides.credential ?? graphCredential(env),
    maxRequestsPerMailbox,
    logger,
    onRetry: overrides.onGraphRetry,
    baseRetryDelayMs: overrides.timing?.graphBaseRetryDelayMs,
    maxRetryDelayMs: overrides.timing?.graphMaxRetryDelayMs,
  });
  const mailbox = new MailboxApi(graph);
  const importPacing = overrides.importPacing ?? EXCHANGE_ONLINE_IMPORT_PACING;
  return {
    mailbox,
    sources: {
      graph: new GraphSource(mailbox, { pacing: importPacing, logger, importRetryDelayMs: overrides.timing?.importRetryDelayMs }),
      ews: ewsSource(env, overrides, maxRequestsPerMailbox, logger),
    },
    store: overrides.store ?? openStore(setting(env, "MAILVAULT_STORE") as string, env),
    logger,
    limits: {
      maxRequestsPerMailbox,
      batchMaxBytes: intSetting(env, "MAILVAULT_BATCH_MAX_BYTES", 1024 * 1024, 4 * 1024 * 1024 * 1024),
      importPacing,
    },
    timing: overrides.timing ?? {},
  };
}

/** The EWS source when MAILVAULT_EWS_URL is set. */
function ewsSource(env: Env, overrides: ServiceOverrides, maxRequestsPerMailbox: number, logger: Logger): EwsSource | undefined {
  const url = setting(env, "MAILVAULT_EWS_URL");
  if (!url) return undefined;
  const kind = setting(env, "MAILVAULT_EWS_AUTH");
  let auth: EwsAuth;
  if (kind === "basic" || kind === "ntlm") {
    const username = setting(env, "MAILVAULT_EWS_USERNAME");
    const password = setting(env, "MAILVAULT_EWS_PASSWORD");
    if (!username || !password) throw new InvalidInputError(`MAILVAULT_EWS_AUTH=${kind} needs MAILVAULT_EWS_USERNAME and MAILVAULT_EWS_PASSWORD`, "InvalidSetting");
    if (kind === "basic" && !/^https:/i.test(url) && !/^http:\/\/(127\.0\.0\.1|localhost|\[::1\])[:/]/i.test(url)) throw new InvalidInputError("Basic sign-in to EWS needs an https MAILVAULT_EWS_URL", "InvalidSetting");
    auth = { kind, username, password };
  } else if (kind === "oauth") {
    const token = setting(env, "EWS_ACCESS_TOKEN");
    auth = { kind: "oauth", scope: setting(env, "MAILVAULT_EWS_TOKEN_SCOPE") as string, credential: overrides.ewsCredential ?? (token ? new StaticTokenCredential(token) : graphCredential({ ...env, GRAPH_ACCESS_TOKEN: undefined })) };
  } else {
    const hint = /^(negotiate|kerberos)$/i.test(kind ?? "") ? " (Kerberos is not supported: use ntlm, which Negotiate falls back to)" : "";
    throw new InvalidInputError(`MAILVAULT_EWS_AUTH must be oauth, ntlm or basic, got ${JSON.stringify(kind)}${hint}`, "InvalidSetting");
  }
  const client = new EwsClient({
    url,
    auth,
    serverVersion: setting(env, "MAILVAULT_EWS_SERVER_VERSION"),
    impersonation: boolSetting(env, "MAILVAULT_EWS_IMPERSONATION"),
    maxRequestsPerMailbox,
    maxRequests: intSetting(env, "MAILVAULT_EWS_MAX_REQUESTS", 1, 256),
    logger,
    onRetry: overrides.onEwsRetry,
    baseRetryDelayMs: overrides.timing?.graphBaseRetryDelayMs,
    maxRetryDelayMs: overrides.timing?.ewsMaxRetryDelayMs,
  });
  return new EwsSource(client, intSetting(env, "MAILVAULT_EWS_BATCH_ITEMS", 1, 100), { retryDelayMs: overrides.timing?.importRetryDelayMs });
}

let installed: Services | undefined;

/** The services of this process: the installed ones, else built from process.env on first use. */
export function getServices(): Services {
  installed ??= createServices(process.env);
  return installed;
}

/** Installs the services this process uses (CLI, demo, tests). */
export function setServices(services: Services | undefined): void {
  installed = services;
}
