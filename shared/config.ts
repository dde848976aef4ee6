import { InvalidInputError } from "./errors";

/**
 * Every setting mailvault reads, in one place. The README's settings table and infra.bicep's app
 * settings are checked against this list by the test suite, so a new setting must be added here.
 */

export interface SettingSpec {
  name: string;
  /** Default when unset; undefined means "no default" (optional or required, see `required`). */
  default?: string;
  description: string;
  /** Where it matters: the Functions app, the CLI, or both. */
  scope: "app" | "cli" | "both";
  /** Must be set in the Functions app (infra.bicep sets it). */
  requiredInApp?: boolean;
}

export const SETTINGS: readonly SettingSpec[] = [
  { name: "GRAPH_ENDPOINT", default: "https://graph.microsoft.com", scope: "both", description: "Microsoft Graph base URL (https). Tests and the demo point it at the local Exchange simulator." },
  { name: "GRAPH_API_VERSION", default: "v1.0", scope: "both", description: "Graph API version segment (`v1.0` or `beta`)." },
  { name: "GRAPH_ACCESS_TOKEN", scope: "cli", description: "A bearer token for Graph that you already have (e.g. from the Azure CLI). When unset, DefaultAzureCredential is used." },
  { name: "AZURE_CLIENT_ID", scope: "app", requiredInApp: true, description: "Client id of the user-assigned managed identity used for Graph and the backup storage account." },
  { name: "MAILVAULT_STORE", default: "./mailvault-backups", scope: "both", requiredInApp: true, description: "Where backups go: a folder, `https://<account>.blob.core.windows.net/<container>` (identity), or `blob:<container>` (with MAILVAULT_STORAGE_CONNECTION_STRING)." },
  { name: "MAILVAULT_STORAGE_CONNECTION_STRING", scope: "both", description: "A storage connection string (e.g. Azurite) for `blob:<container>` stores. Not used in Azure, where the identity is." },
  { name: "MAILVAULT_MAX_REQUESTS_PER_MAILBOX", default: "4", scope: "both", description: "Graph requests in flight per mailbox (Exchange Online allows 4 per app per mailbox), and export activities in flight per mailbox." },
  { name: "MAILVAULT_BATCH_MAX_BYTES", default: "104857600", scope: "both", description: "Byte budget of one exportItems call, from the listed item sizes (at most 20 items a call regardless)." },
  { name: "MAILVAULT_EWS_URL", scope: "both", description: "Exchange Web Services endpoint of an Exchange Server organisation, e.g. `https://mail.contoso.com/EWS/Exchange.asmx`. Set it to back up `ews:<address>` mailboxes; empty: EWS is off." },
  { name: "MAILVAULT_EWS_AUTH", default: "oauth", scope: "both", description: "How mailvault signs in to EWS: `oauth` (a bearer token: EWS_ACCESS_TOKEN, else the managed identity / DefaultAzureCredential for MAILVAULT_EWS_TOKEN_SCOPE), `ntlm` (Windows authentication, the on-premises default) or `basic` (https only), both with MAILVAULT_EWS_USERNAME and MAILVAULT_EWS_PASSWORD." },
  { name: "MAILVAULT_EWS_TOKEN_SCOPE", default: "https://outlook.office365.com/.default", scope: "both", description: "Token scope for `oauth` EWS sign-in (Exchange Online, or the hybrid modern-auth resource of your Exchange Server)." },
  { name: "EWS_ACCESS_TOKEN", scope: "cli", description: "A bearer token for EWS that you already have; with `oauth`, used instead of DefaultAzureCredential." },
  { name: "MAILVAULT_EWS_USERNAME", scope: "both", description: "Service account for `ntlm` or `basic` EWS sign-in (e.g. `CONTOSO\\svc-backup` or `svc-backup@contoso.com`), holding the ApplicationImpersonation role." },
  { name: "MAILVAULT_EWS_PASSWORD", scope: "both", description: "Password of MAILVAULT_EWS_USERNAME. In Azure, a Key Vault reference. Never logged." },
  { name: "MAILVAULT_EWS_IMPERSONATION", default: "true", scope: "both", description: "`true`: act for each mailbox through ExchangeImpersonation (plus X-AnchorMailbox); `false`: delegate access (the service account has full access to the mailboxes)." },
  { name: "MAILVAULT_EWS_SERVER_VERSION", default: "Exchange2010_SP1", scope: "both", description: "RequestServerVersion sent to EWS: Exchange2010_SP1 (the first with ExportItems/UploadItems) or later (Exchange2010_SP2, Exchange2013, Exchange2013_SP1, Exchange2015, Exchange2016)." },
  { name: "MAILVAULT_EWS_MAX_REQUESTS", default: "20", scope: "both", description: "EWS calls in flight in all (per process), across mailboxes: Exchange throttles the service account as a whole (its throttling policy's EWSMaxConcurrency; 27 in Exchange Online, on premises whatever the policy sets)." },
  { name: "MAILVAULT_EWS_BATCH_ITEMS", default: "50", scope: "both", description: "Items per EWS ExportItems call (1 to 100; Microsoft advises at most 100). MAILVAULT_BATCH_MAX_BYTES also bounds a call." },
  { name: "MAILVAULT_MAILBOXES", scope: "app", description: "Mailboxes the nightly backup covers: UPNs or ids separated by commas, or `*` for every mailbox of the tenant. Empty: no nightly backups." },
  { name: "MAILVAULT_BACKUP_SCHEDULE", default: "0 0 2 * * *", scope: "app", requiredInApp: true, description: "When the nightly backup runs: an NCRONTAB expression (six fields, UTC unless WEBSITE_TIME_ZONE is set)." },
  { name: "MAILVAULT_MAX_MAILBOXES_IN_FLIGHT", default: "10", scope: "app", description: "Mailboxes the nightly backup runs at the same time." },
  { name: "MAILVAULT_VERIFY_SCHEDULE", default: "0 0 5 * * Sun", scope: "app", requiredInApp: true, description: "When the app re-reads the latest run of every mailbox in the store and checks it against its manifest: an NCRONTAB expression (six fields, UTC)." },
  { name: "TASKHUB_NAME", default: "mailvault", scope: "app", description: "Durable Functions task hub name (host.json reads it)." },
  { name: "MAILVAULT_NOTIFICATION_URL", scope: "app", description: "Where Microsoft Graph delivers change and lifecycle notifications of the mailboxes in MAILVAULT_MAILBOXES: `https://<app>/api/notifications?code=<function key>` (webhook) or `EventGrid:?azuresubscriptionid=...&resourcegroup=...&partnertopic=...&location=...` (an Event Grid partner topic). Empty: no subscriptions, no event-triggered backups." },
  { name: "MAILVAULT_NOTIFICATION_CLIENT_STATE", scope: "app", description: "The secret (16 to 128 characters) sent as clientState with every subscription; notifications that do not carry it are dropped. Required when MAILVAULT_NOTIFICATION_URL is set. Never logged." },
  { name: "MAILVAULT_SUBSCRIPTION_RENEW_SCHEDULE", default: "0 30 */6 * * *", scope: "app", requiredInApp: true, description: "When the subscription timer creates, renews (those expiring within 12 h) and deletes change-notification subscriptions: an NCRONTAB expression (six fields, UTC)." },
  { name: "MAILVAULT_CHANGE_QUIET_SECONDS", default: "60", scope: "app", description: "Quiet period of event-triggered backups: a mailbox's run starts once no change notification arrived for this many seconds (at most ten quiet periods after the first one)." },
];

export type Env = Record<string, string | undefined>;

export function setting(env: Env, name: string): string | undefined {
  const spec = SETTINGS.find((s) => s.name === name);
  if (!spec) throw new Error(`unknown setting ${name}: add it to SETTINGS in shared/config.ts`);
  const v = env[name];
  return v !== undefined && v.trim() !== "" ? v.trim() : spec.default;
}

export function intSetting(env: Env, name: string, min: number, max: number): number {
  const raw = setting(env, name);
  const n = raw === undefined ? NaN : Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new InvalidInputError(`setting ${name} must be a whole number from ${min} to ${max}, got ${JSON.stringify(raw)}`, "InvalidSetting");
  }
  return n;
}

export function boolSetting(env: Env, name: string): boolean {
  const raw = (setting(env, name) ?? "").toLowerCase();
  if (raw === "true" || raw === "1" || raw === "yes") return true;
  if (raw === "false" || raw === "0" || raw === "no") return false;
  throw new InvalidInputError(`setting ${name} must be true or false, got ${JSON.stringify(raw)}`, "InvalidSetting");
}

/** The nightly mailbox list: `*` (every mailbox of the tenant) or the named ones, validated. */
export function mailboxListSetting(env: Env): "*" | string[] {
  const raw = setting(env, "MAILVAULT_MAILBOXES") ?? "";
  if (raw.trim() === "*") return "*";
  const names = [...new Set(raw.split(/[\s,;]+/).filter(Boolean))];
  for (const n of names) {
    if (!/^[^\s/\\?#%\x00-\x1f]{1,320}$/.test(n)) throw new InvalidInputError(`MAILVAULT_MAILBOXES has an invalid entry ${JSON.stringify(n).slice(0, 80)}`, "InvalidSetting");
  }
  return names;
}

const CRON_FIELD = /^(\*|\d+(-\d+)?)(\/\d+)?(,(\*|\d+(-\d+)?)(\/\d+)?)*$|^[A-Za-z]{3}(-[A-Za-z]{3})?(,[A-Za-z]{3}(-[A-Za-z]{3})?)*$/;
const CRON_MAX = [59, 59, 23, 31, 12, 6];

/** Checks an NCRONTAB expression ({second} {minute} {hour} {day} {month} {day-of-week}). */
export function validateSchedule(expr: string): string {
  const fields = expr.trim().split(/\s+/);
  const bad = () => new InvalidInputError(`MAILVAULT_BACKUP_SCHEDULE ${JSON.stringify(expr)} is not an NCRONTAB expression of six fields, e.g. "0 0 2 * * *"`, "InvalidSetting");
  if (fields.length !== 6) throw bad();
  fields.forEach((f, i) => {
    if (!CRON_FIELD.test(f)) throw bad();
    for (const n of f.match(/\d+/g) ?? []) if (Number(n) > CRON_MAX[i] && !/\/\d+$/.test(f)) throw bad();
  });
  return fields.join(" ");
}
