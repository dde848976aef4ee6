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
  { name: "TASKHUB_NAME", default: "mailvault", scope: "app", description: "Durable Functions task hub name (host.json reads it)." },
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
    throw new Error(`setting ${name} must be a whole number from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  }
  return n;
}
