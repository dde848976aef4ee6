/**
 * Offline checks of the deployment files: infra.bicep (parsed with tree-sitter-bicep), host.json,
 * azure.yaml and .funcignore, against what the code reads (shared/config.ts SETTINGS) and does.
 * No Azure, no Bicep CLI: the bicep is walked as a syntax tree.
 */
import { describe, expect, it } from "vitest";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import Parser from "tree-sitter";
import Bicep from "tree-sitter-bicep";
import { SETTINGS, type SettingSpec } from "../shared/config.js";

type Node = Parser.SyntaxNode;

const root = path.resolve(__dirname, "..");
const read = (rel: string): string => readFileSync(path.join(root, rel), "utf8");

// ------------------------------------------------------------------------------------------------
// Bicep tree helpers
// ------------------------------------------------------------------------------------------------

function parseBicep(src: string): Parser.Tree {
  const parser = new Parser();
  parser.setLanguage(Bicep as unknown as Parser.Language);
  return parser.parse(src);
}

function problems(node: Node, src: string): string[] {
  const out: string[] = [];
  const walk = (n: Node): void => {
    if (n.type === "ERROR" || n.isMissing) {
      const at = `${n.startPosition.row + 1}:${n.startPosition.column + 1}`;
      out.push(`${n.isMissing ? "MISSING" : "ERROR"} at ${at}: ${JSON.stringify(src.slice(n.startIndex, n.startIndex + 60))}`);
    }
    for (const c of n.children) walk(c);
  };
  walk(node);
  return out;
}

/** The text of a string literal without interpolations, or undefined when the node is not a plain string. */
function stringValue(n: Node | undefined): string | undefined {
  if (!n || n.type !== "string") return undefined;
  if (n.namedChildren.some((c) => c.type === "interpolation")) return undefined;
  return n.namedChildren
    .filter((c) => c.type === "string_content" || c.type === "escape_sequence")
    .map((c) => c.text)
    .join("");
}

function keyOf(prop: Node): string {
  const k = prop.namedChildren[0]!;
  return stringValue(k) ?? k.text;
}

function valueOf(prop: Node): Node {
  return prop.namedChildren.filter((c) => c.type !== "comment")[1]!;
}

function props(obj: Node): Map<string, Node> {
  const m = new Map<string, Node>();
  for (const c of obj.namedChildren) if (c.type === "object_property") m.set(keyOf(c), valueOf(c));
  return m;
}

interface Decl {
  kind: string;
  name: string;
  node: Node;
}

interface ResourceDecl extends Decl {
  type: string; // without api version
  apiVersion: string;
  body: Node; // the object literal
  conditional: boolean;
}

class BicepFile {
  readonly tree: Parser.Tree;
  readonly decls: Decl[];
  readonly resources: ResourceDecl[];

  constructor(readonly src: string) {
    this.tree = parseBicep(src);
    this.decls = this.tree.rootNode.namedChildren
      .filter((n) => n.type.endsWith("_declaration"))
      .map((n) => ({ kind: n.type, name: n.namedChildren.find((c) => c.type === "identifier")?.text ?? "", node: n }));
    this.resources = this.decls
      .filter((d) => d.kind === "resource_declaration")
      .map((d) => {
        const typeStr = stringValue(d.node.namedChildren.find((c) => c.type === "string")) ?? "";
        const [type, apiVersion] = typeStr.split("@") as [string, string];
        const cond = d.node.namedChildren.find((c) => c.type === "if_statement");
        const body = (cond ?? d.node).namedChildren.find((c) => c.type === "object")!;
        return { ...d, type, apiVersion, body, conditional: Boolean(cond) };
      });
  }

  variable(name: string): Node | undefined {
    const d = this.decls.find((x) => x.kind === "variable_declaration" && x.name === name);
    return d?.node.namedChildren.filter((c) => c.type !== "comment" && c.type !== "decorators")[1];
  }

  /** Follows a bare identifier to the value of the variable it names (one level is all we use). */
  deref(n: Node): Node {
    if (n.type === "identifier") return this.variable(n.text) ?? n;
    return n;
  }

  /** Value at a dotted path of object keys, following variable references. */
  at(obj: Node, dotted: string): Node | undefined {
    let cur: Node | undefined = this.deref(obj);
    for (const key of dotted.split(".")) {
      if (!cur || cur.type !== "object") return undefined;
      cur = props(cur).get(key);
      if (cur) cur = this.deref(cur);
    }
    return cur;
  }

  /** The text of an expression with the variables it references (transitively) appended, for regex checks. */
  expand(n: Node, seen = new Set<string>()): string {
    let text = n.text;
    const ids = n.type === "identifier" ? [n] : n.descendantsOfType("identifier");
    for (const id of ids) {
      if (seen.has(id.text)) continue;
      seen.add(id.text);
      const v = this.variable(id.text);
      if (v) text += `\n${this.expand(v, seen)}`;
    }
    return text;
  }

  ofType(type: string): ResourceDecl[] {
    return this.resources.filter((r) => r.type.toLowerCase() === type.toLowerCase());
  }

  resource(name: string): ResourceDecl | undefined {
    return this.resources.find((r) => r.name === name);
  }

  /** The symbolic resource name at the root of an expression such as `x.properties.primaryEndpoints.blob` or `'${x.properties...}...'`. */
  rootSymbols(n: Node): string[] {
    const names = new Set<string>();
    const walk = (m: Node): void => {
      if (m.type === "member_expression") {
        let o: Node = m;
        while (o.type === "member_expression") o = o.childForFieldName("object")!;
        if (o.type === "identifier" && this.resource(o.text)) names.add(o.text);
        return;
      }
      for (const c of m.namedChildren) walk(c);
    };
    walk(n);
    return [...names];
  }

  /** A role definition id as written: a GUID literal, or a member of a variable object such as `roles.storageBlobDataOwner`. */
  guidOf(expr: Node): string | undefined {
    const guid = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/i;
    const direct = expr.text.match(guid);
    if (direct) return direct[0].toLowerCase();
    for (const m of expr.descendantsOfType("member_expression")) {
      const o = m.childForFieldName("object");
      const p = m.childForFieldName("property");
      if (o?.type === "identifier" && p) {
        const v = this.variable(o.text);
        if (v?.type === "object") {
          const lit = stringValue(props(v).get(p.text));
          if (lit && guid.test(lit)) return lit.toLowerCase();
        }
      }
    }
    return undefined;
  }
}

// ------------------------------------------------------------------------------------------------
// Known ids and names
// ------------------------------------------------------------------------------------------------

const ROLE = {
  owner: "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
  contributor: "b24988ac-6180-42a0-ab88-20f7382dd24c",
  userAccessAdministrator: "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
  storageAccountContributor: "17d1049b-9a84-46fb-8f53-869881c3d3ab",
  storageBlobDataOwner: "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
  storageBlobDataContributor: "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
  storageQueueDataContributor: "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
  storageTableDataContributor: "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
  monitoringMetricsPublisher: "3913510d-42f4-4e42-8a64-420c390055eb",
} as const;

/** Settings the platform or its extensions read; they are not mailvault's and not in SETTINGS. */
const PLATFORM_SETTING = /^(AzureWebJobsStorage__|APPLICATIONINSIGHTS_|FUNCTIONS_|WEBSITE_|AzureFunctionsJobHost__)/;

/** The exclusion rule stated in infra.bicep: connection strings never go into Azure app settings. */
const isConnectionString = (s: SettingSpec): boolean => /CONNECTION_STRING$/.test(s.name);
const belongsInApp = (s: SettingSpec): boolean => (s.scope === "app" || s.scope === "both") && !isConnectionString(s);

// ------------------------------------------------------------------------------------------------
// infra.bicep
// ------------------------------------------------------------------------------------------------

const bicep = new BicepFile(read("infra.bicep"));

/** The app settings object: `Microsoft.Web/sites/config` named 'appsettings', following a variable reference. */
function appSettings(): Map<string, Node> {
  const configs = bicep.ofType("Microsoft.Web/sites/config").filter((r) => stringValue(bicep.at(r.body, "name")) === "appsettings");
  expect(configs, "one Microsoft.Web/sites/config 'appsettings' resource").toHaveLength(1);
  const obj = bicep.at(configs[0]!.body, "properties");
  expect(obj?.type, "appsettings properties is an object (or a variable holding one)").toBe("object");
  return props(obj!);
}

function roleAssignments(): { name: string; scope: string | undefined; role: string | undefined; principal: string; conditional: boolean }[] {
  return bicep.ofType("Microsoft.Authorization/roleAssignments").map((r) => {
    const scope = props(r.body).get("scope");
    const roleExpr = bicep.at(r.body, "properties.roleDefinitionId");
    const principal = bicep.at(r.body, "properties.principalId");
    return {
      name: r.name,
      scope: scope?.type === "identifier" ? scope.text : scope?.text,
      role: roleExpr ? bicep.guidOf(roleExpr) : undefined,
      principal: principal?.text ?? "",
      conditional: r.conditional,
    };
  });
}

describe("infra.bicep", () => {
  it("parses with tree-sitter-bicep without ERROR or MISSING nodes", () => {
    expect(problems(bicep.tree.rootNode, bicep.src)).toEqual([]);
    expect(bicep.resources.length).toBeGreaterThan(10);
  });

  it("targets a resource group and uses raw resources only (no registry modules)", () => {
    const ts = bicep.tree.rootNode.namedChildren.find((n) => n.type === "target_scope_assignment");
    expect(stringValue(ts?.namedChildren.find((c) => c.type === "string"))).toBe("resourceGroup");
    const modules = bicep.decls.filter((d) => d.kind === "module_declaration");
    expect(modules.map((m) => m.node.text.split("\n")[0])).toEqual([]);
    expect(bicep.src).not.toMatch(/br[:/]/);
  });

  it("sets every app/both setting of shared/config.ts, and no setting the code does not know", () => {
    const names = [...appSettings().keys()];
    const expected = SETTINGS.filter(belongsInApp).map((s) => s.name);
    const missing = expected.filter((n) => !names.includes(n));
    expect(missing, `settings the app reads but infra.bicep does not set: ${missing.join(", ")}`).toEqual([]);

    const known = new Set(SETTINGS.map((s) => s.name));
    const unknown = names.filter((n) => !known.has(n) && !PLATFORM_SETTING.test(n));
    expect(unknown, `app settings unknown to SETTINGS (add them to shared/config.ts): ${unknown.join(", ")}`).toEqual([]);

    const required = SETTINGS.filter((s) => s.requiredInApp).map((s) => s.name);
    expect(required.filter((n) => !names.includes(n))).toEqual([]);
  });

  it("leaves CLI-only settings and connection strings out of the app", () => {
    const names = new Set(appSettings().keys());
    const excluded = SETTINGS.filter((s) => !belongsInApp(s)).map((s) => s.name);
    expect(excluded.length).toBeGreaterThan(0);
    expect(excluded.filter((n) => names.has(n))).toEqual([]);
    expect([...names].filter((n) => /CONNECTION_?STRING/i.test(n) && n !== "APPLICATIONINSIGHTS_CONNECTION_STRING")).toEqual([]);
    // The bicep comment must explain the rule next to the settings.
    expect(bicep.src).toMatch(/scope is 'cli'|scope 'cli'|scope are NOT set|'cli' are NOT set/i);
  });

  it("reaches host storage and telemetry by identity, with the values the code expects", () => {
    const s = appSettings();
    expect(stringValue(s.get("AzureWebJobsStorage__credential"))).toBe("managedidentity");
    for (const k of ["clientId", "blobServiceUri", "queueServiceUri", "tableServiceUri"]) {
      expect(s.has(`AzureWebJobsStorage__${k}`), `AzureWebJobsStorage__${k}`).toBe(true);
    }
    expect(s.has("AzureWebJobsStorage"), "no AzureWebJobsStorage connection string").toBe(false);
    expect(s.get("AzureWebJobsStorage__clientId")?.text).toMatch(/\.properties\.clientId$/);
    expect(s.get("AZURE_CLIENT_ID")?.text).toBe(s.get("AzureWebJobsStorage__clientId")?.text);
    expect(s.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING")?.text).toMatch(/ClientId=\$\{[^}]+\.properties\.clientId\};Authorization=AAD/);
    // Flex Consumption takes the runtime from functionAppConfig and rejects these.
    expect(s.has("FUNCTIONS_WORKER_RUNTIME")).toBe(false);
    expect(s.has("FUNCTIONS_EXTENSION_VERSION")).toBe(false);
    // The task hub name the host reads via %TASKHUB_NAME% is set.
    expect(s.has("TASKHUB_NAME")).toBe(true);
  });

  it("points MAILVAULT_STORE at the backup container of a separate storage account", () => {
    const s = appSettings();
    const storeExpr = s.get("MAILVAULT_STORE")!;
    expect(storeExpr.text).toMatch(/^'\$\{[A-Za-z_]\w*\.properties\.primaryEndpoints\.blob\}\$\{\w+\}'$/);
    const [backup] = bicep.rootSymbols(storeExpr);
    const [runtime] = bicep.rootSymbols(s.get("AzureWebJobsStorage__blobServiceUri")!);
    expect(backup && bicep.resource(backup)?.type).toBe("Microsoft.Storage/storageAccounts");
    expect(runtime && bicep.resource(runtime)?.type).toBe("Microsoft.Storage/storageAccounts");
    expect(backup).not.toBe(runtime);
    // The container named in MAILVAULT_STORE exists in that account.
    const containerParam = storeExpr.text.match(/\}\$\{(\w+)\}'$/)![1];
    const container = bicep
      .ofType("Microsoft.Storage/storageAccounts/blobServices/containers")
      .find((c) => bicep.at(c.body, "name")?.text === containerParam);
    expect(container, `a container resource named by ${containerParam}`).toBeDefined();
    const parentService = bicep.resource(bicep.at(container!.body, "parent")!.text)!;
    expect(bicep.at(parentService.body, "parent")?.text).toBe(backup);
  });

  it("grants the identity exactly the data roles the code needs, on single resources", () => {
    const s = appSettings();
    const [backup] = bicep.rootSymbols(s.get("MAILVAULT_STORE")!);
    const [runtime] = bicep.rootSymbols(s.get("AzureWebJobsStorage__blobServiceUri")!);
    const ras = roleAssignments();
    for (const ra of ras) {
      expect(ra.role, `${ra.name}: role definition id resolved`).toBeDefined();
      expect(ra.scope, `${ra.name}: explicit resource scope (never the whole resource group)`).toBeDefined();
      expect(bicep.resource(ra.scope!), `${ra.name}: scope is a resource declared here`).toBeDefined();
    }
    const on = (scope: string | undefined) => ras.filter((r) => r.scope === scope && !r.conditional).map((r) => r.role).sort();
    expect(on(runtime)).toEqual(
      [ROLE.storageBlobDataOwner, ROLE.storageQueueDataContributor, ROLE.storageTableDataContributor].sort(),
    );
    expect(on(backup)).toEqual([ROLE.storageBlobDataContributor]);
    // The optional deployer grant is conditional and also only Blob Data Contributor.
    const optional = ras.filter((r) => r.conditional);
    for (const r of optional) {
      expect(r.scope).toBe(backup);
      expect(r.role).toBe(ROLE.storageBlobDataContributor);
    }
    const ai = bicep.ofType("Microsoft.Insights/components")[0]!;
    expect(on(ai.name)).toEqual([ROLE.monitoringMetricsPublisher]);
  });

  it("gives nobody Owner, Contributor or User Access Administrator, and nothing at subscription scope", () => {
    const forbidden: string[] = [ROLE.owner, ROLE.contributor, ROLE.userAccessAdministrator, ROLE.storageAccountContributor];
    for (const ra of roleAssignments()) expect(forbidden).not.toContain(ra.role);
    for (const g of forbidden) expect(bicep.src.toLowerCase()).not.toContain(g);
    for (const ra of bicep.ofType("Microsoft.Authorization/roleAssignments")) {
      expect(props(ra.body).get("scope")?.text ?? "").not.toMatch(/subscription\(|managementGroup\(|tenant\(/);
    }
    // Data roles only: no role that could list account keys.
    expect(bicep.src).not.toMatch(/listKeys|listConnectionStrings|listAccountSas/);
  });

  it("turns shared-key access and public blob access off on every storage account, TLS 1.2, https only", () => {
    const accounts = bicep.ofType("Microsoft.Storage/storageAccounts");
    expect(accounts.length).toBe(2);
    for (const a of accounts) {
      const p = (k: string) => bicep.at(a.body, `properties.${k}`)?.text;
      expect(p("allowSharedKeyAccess"), `${a.name}.allowSharedKeyAccess`).toBe("false");
      expect(p("allowBlobPublicAccess"), `${a.name}.allowBlobPublicAccess`).toBe("false");
      expect(p("minimumTlsVersion"), `${a.name}.minimumTlsVersion`).toBe("'TLS1_2'");
      expect(p("supportsHttpsTrafficOnly"), `${a.name}.supportsHttpsTrafficOnly`).toBe("true");
    }
  });

  it("protects the backup account: versioning, soft delete, optional immutability, lifecycle under mailboxes/", () => {
    const s = appSettings();
    const [backup] = bicep.rootSymbols(s.get("MAILVAULT_STORE")!);
    const service = bicep
      .ofType("Microsoft.Storage/storageAccounts/blobServices")
      .find((b) => bicep.at(b.body, "parent")?.text === backup)!;
    expect(service).toBeDefined();
    expect(bicep.at(service.body, "properties.isVersioningEnabled")?.text).toBe("true");
    expect(bicep.at(service.body, "properties.deleteRetentionPolicy.enabled")?.text).toBe("true");
    expect(bicep.at(service.body, "properties.containerDeleteRetentionPolicy.enabled")?.text).toBe("true");
    expect(bicep.at(service.body, "properties.changeFeed.enabled")).toBeDefined();

    const account = bicep.resource(backup!)!;
    const immutability = bicep.at(account.body, "properties.immutableStorageWithVersioning");
    expect(immutability && bicep.expand(immutability)).toMatch(/enabled:\s*true[\s\S]*immutabilityPeriodSinceCreationInDays/);

    const policy = bicep.ofType("Microsoft.Storage/storageAccounts/managementPolicies").find((p) => bicep.at(p.body, "parent")?.text === backup);
    expect(policy).toBeDefined();
    const rules = bicep.at(policy!.body, "properties.policy.rules")!;
    expect(rules.text).toMatch(/prefixMatch:\s*\[\s*'\$\{\w+\}\/mailboxes\/'/);
    const actions = bicep.expand(bicep.at(policy!.body, "properties.policy.rules")!);
    for (const t of ["tierToCool", "tierToCold", "tierToArchive"]) expect(actions).toContain(`${t}:`);
    expect(actions).not.toMatch(/\bdelete\s*:/);
    expect(rules.text).not.toMatch(/\bdelete\s*:/);
  });

  it("runs the app on Flex Consumption, Node 22, identity-based deployment storage, durable always-ready", () => {
    const plan = bicep.ofType("Microsoft.Web/serverfarms")[0]!;
    expect(stringValue(bicep.at(plan.body, "sku.name"))).toBe("FC1");
    expect(stringValue(bicep.at(plan.body, "sku.tier"))).toBe("FlexConsumption");
    expect(bicep.at(plan.body, "properties.reserved")?.text).toBe("true");

    const sites = bicep.ofType("Microsoft.Web/sites");
    expect(sites).toHaveLength(1);
    const site = sites[0]!;
    expect(stringValue(bicep.at(site.body, "kind"))).toBe("functionapp,linux");
    expect(stringValue(bicep.at(site.body, "identity.type"))).toBe("UserAssigned");
    expect(bicep.at(site.body, "properties.httpsOnly")?.text).toBe("true");
    const cfg = "properties.functionAppConfig";
    expect(stringValue(bicep.at(site.body, `${cfg}.runtime.name`))).toBe("node");
    expect(stringValue(bicep.at(site.body, `${cfg}.runtime.version`))).toBe("22");
    expect(stringValue(bicep.at(site.body, `${cfg}.deployment.storage.type`))).toBe("blobContainer");
    expect(stringValue(bicep.at(site.body, `${cfg}.deployment.storage.authentication.type`))).toBe("UserAssignedIdentity");
    expect(bicep.expand(bicep.at(site.body, `${cfg}.scaleAndConcurrency.alwaysReady`)!)).toMatch(/name:\s*'durable'/);
    expect(bicep.at(site.body, `${cfg}.scaleAndConcurrency.maximumInstanceCount`)?.type).toBe("identifier");
    expect(bicep.at(site.body, `${cfg}.scaleAndConcurrency.instanceMemoryMB`)).toBeDefined();
  });

  it("disables local auth on Application Insights", () => {
    const ai = bicep.ofType("Microsoft.Insights/components")[0]!;
    const p = props(bicep.at(ai.body, "properties")!);
    const key = [...p.keys()].find((k) => k.toLowerCase() === "disablelocalauth");
    expect(key, "DisableLocalAuth property").toBeDefined();
    expect(p.get(key!)?.text).toBe("true");
  });

  it("declares sensible parameters and the outputs docs/deploy.md uses", () => {
    const params = bicep.decls.filter((d) => d.kind === "parameter_declaration").map((d) => d.name);
    for (const p of ["environmentName", "location", "principalId", "maximumInstanceCount", "backupContainerName", "enableVersionImmutability", "immutabilityRetentionDays", "softDeleteRetentionDays"]) {
      expect(params, `param ${p}`).toContain(p);
    }
    const containerDefault = bicep.decls.find((d) => d.name === "backupContainerName")!.node;
    expect(stringValue(containerDefault.namedChildren.find((c) => c.type === "string"))).toBe("mailbox-backups");
    const location = bicep.decls.find((d) => d.name === "location")!.node;
    expect(location.text).toMatch(/=\s*resourceGroup\(\)\.location/);

    const outputs = bicep.decls.filter((d) => d.kind === "output_declaration").map((d) => d.name);
    const docs = read("docs/deploy.md");
    for (const o of ["AZURE_FUNCTION_NAME", "AZURE_FUNCTION_URL", "MAILVAULT_IDENTITY_PRINCIPAL_ID", "MAILVAULT_IDENTITY_CLIENT_ID", "BACKUP_STORAGE_ACCOUNT_NAME", "BACKUP_CONTAINER_URL", "MAILVAULT_STORE", "APPLICATIONINSIGHTS_CONNECTION_STRING"]) {
      expect(outputs, `output ${o}`).toContain(o);
    }
    // Every output the guide mentions exists.
    const mentioned = [...docs.matchAll(/\b(AZURE_[A-Z_]+|MAILVAULT_[A-Z_]+|BACKUP_[A-Z_]+|RUNTIME_[A-Z_]+|SERVICE_API_NAME)\b/g)].map((m) => m[1]!);
    const knownNames = new Set([...outputs, ...SETTINGS.map((s) => s.name), "AZURE_RESOURCE_GROUP", "AZURE_SUBSCRIPTION_ID", "AZURE_ENV_NAME", "AZURE_PRINCIPAL_ID"]);
    const unknown = [...new Set(mentioned)].filter((n) => !knownNames.has(n));
    expect(unknown, `names in docs/deploy.md that are neither outputs nor settings: ${unknown.join(", ")}`).toEqual([]);
  });
});

// ------------------------------------------------------------------------------------------------
// host.json
// ------------------------------------------------------------------------------------------------

/** hh:mm:ss (optionally d.hh:mm:ss) to seconds. */
function timespanSeconds(s: string): number {
  const m = /^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})$/.exec(s);
  if (!m) throw new Error(`not a timespan: ${s}`);
  return Number(m[1] ?? 0) * 86400 + Number(m[2]) * 3600 + Number(m[3]) * 60 + Number(m[4]);
}

describe("host.json", () => {
  const host = JSON.parse(read("host.json")) as Record<string, any>;
  const dt = host.extensions?.durableTask ?? {};

  it("is a v2 host file with the v4 extension bundle and the api route prefix", () => {
    expect(host.version).toBe("2.0");
    expect(host.extensionBundle).toEqual({ id: "Microsoft.Azure.Functions.ExtensionBundle", version: "[4.*, 5.0.0)" });
    expect(host.extensions.http.routePrefix).toBe("api");
  });

  it("names the task hub from the TASKHUB_NAME setting", () => {
    expect(dt.hubName).toBe("%TASKHUB_NAME%");
    expect(SETTINGS.map((s) => s.name)).toContain("TASKHUB_NAME");
  });

  it("uses the Azure Storage provider as Flex Consumption needs it", () => {
    expect(dt.storageProvider.type).toBe("AzureStorage");
    expect(dt.storageProvider.partitionCount).toBe(4);
    expect(timespanSeconds(dt.storageProvider.maxQueuePollingInterval)).toBeLessThanOrEqual(10);
    expect(dt.maxQueuePollingInterval, "maxQueuePollingInterval belongs under storageProvider").toBeUndefined();
  });

  it("bounds activity and orchestrator concurrency and the function timeout", () => {
    expect(Number.isInteger(dt.maxConcurrentActivityFunctions)).toBe(true);
    expect(dt.maxConcurrentActivityFunctions).toBeGreaterThanOrEqual(1);
    expect(dt.maxConcurrentActivityFunctions).toBeLessThanOrEqual(16);
    expect(Number.isInteger(dt.maxConcurrentOrchestratorFunctions)).toBe(true);
    expect(dt.maxConcurrentOrchestratorFunctions).toBeGreaterThanOrEqual(1);
    const timeout = timespanSeconds(host.functionTimeout);
    expect(timeout).toBeGreaterThanOrEqual(30 * 60);
    expect(timeout).toBeLessThanOrEqual(24 * 3600);
  });

  it("keeps Durable internals at warning level and never samples away requests", () => {
    const ll = host.logging.logLevel;
    expect(ll["DurableTask.AzureStorage"]).toBe("Warning");
    expect(ll["DurableTask.Core"]).toBe("Warning");
    expect(ll["Host.Results"]).toBeDefined();
    expect(ll["Function"]).toBeDefined();
    expect(host.logging.applicationInsights.samplingSettings.excludedTypes).toMatch(/\bRequest\b/);
    expect(dt.tracing?.traceInputsAndOutputs ?? false).toBe(false);
  });
});

// ------------------------------------------------------------------------------------------------
// azure.yaml and .funcignore
// ------------------------------------------------------------------------------------------------

/** Just enough YAML for azure.yaml: nested maps of scalars by indentation, comments dropped. */
function parseSimpleYaml(src: string): Record<string, any> {
  const out: Record<string, any> = {};
  const stack: { indent: number; obj: Record<string, any> }[] = [{ indent: -1, obj: out }];
  for (const raw of src.split(/\r?\n/)) {
    const line = raw.replace(/\s+#.*$/, "").replace(/^\s*#.*$/, "");
    if (!line.trim()) continue;
    const m = /^(\s*)([^:\s][^:]*):\s*(.*)$/.exec(line);
    if (!m) throw new Error(`unsupported YAML line: ${raw}`);
    const indent = m[1]!.length;
    while (stack[stack.length - 1]!.indent >= indent) stack.pop();
    const parent = stack[stack.length - 1]!.obj;
    const key = m[2]!.trim();
    const value = m[3]!.trim().replace(/^(['"])(.*)\1$/, "$2");
    if (value === "") {
      parent[key] = {};
      stack.push({ indent, obj: parent[key] });
    } else {
      parent[key] = value === "true" ? true : value === "false" ? false : value;
    }
  }
  return out;
}

describe("azure.yaml", () => {
  const yaml = parseSimpleYaml(read("azure.yaml"));

  it("points azd at the top-level infra.bicep", () => {
    expect(yaml.infra.provider).toBe("bicep");
    const file = path.join(yaml.infra.path, `${yaml.infra.module}.bicep`);
    expect(path.normalize(file)).toBe("infra.bicep");
    expect(existsSync(path.join(root, file))).toBe(true);
  });

  it("deploys service api as a TypeScript function app, matching the azd-service-name tag in infra.bicep", () => {
    const api = yaml.services.api;
    expect(api).toBeDefined();
    expect(api.host).toBe("function");
    expect(api.language).toBe("ts");
    expect(api.project).toBe(".");

    const tagProps = bicep.tree.rootNode
      .descendantsOfType("object_property")
      .filter((p) => keyOf(p) === "azd-service-name");
    expect(tagProps).toHaveLength(1);
    const tagValue = stringValue(valueOf(tagProps[0]!));
    expect(Object.keys(yaml.services)).toContain(tagValue);
    // The tag sits on the Function App.
    const site = bicep.ofType("Microsoft.Web/sites")[0]!;
    expect(site.node.startIndex <= tagProps[0]!.startIndex && tagProps[0]!.endIndex <= site.node.endIndex).toBe(true);
  });

  it("builds dist/ with the build script the package.json main points into", () => {
    const pkg = JSON.parse(read("package.json")) as { main: string; scripts: Record<string, string> };
    expect(pkg.main).toMatch(/^dist\//);
    expect(pkg.scripts.build).toMatch(/\btsc\b/);
  });

  it("keeps .funcignore consistent with remoteBuild (azd refuses remoteBuild: true unless node_modules is excluded)", () => {
    const ignore = read(".funcignore")
      .split(/\r?\n/)
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith("#"));
    const excludesNodeModules = ignore.some((l) => /^\/?node_modules\/?$/.test(l));
    expect(excludesNodeModules).toBe(yaml.services.api.remoteBuild === true);
    // Never ship local secrets; never exclude what the app needs at run time.
    expect(ignore).toContain("local.settings.json");
    for (const needed of ["host.json", "package.json", "dist", "dist/", "functions", "functions/", "shared", "shared/"]) {
      expect(ignore).not.toContain(needed);
    }
  });
});

// ------------------------------------------------------------------------------------------------
// Documentation lists every setting
// ------------------------------------------------------------------------------------------------

describe("settings documentation", () => {
  it("docs/deploy.md lists every setting in SETTINGS", () => {
    const docs = read("docs/deploy.md");
    const missing = SETTINGS.map((s) => s.name).filter((n) => !new RegExp(`\\b${n}\\b`).test(docs));
    expect(missing, `settings missing from docs/deploy.md: ${missing.join(", ")}`).toEqual([]);
  });

  it("README.md lists every setting in SETTINGS", () => {
    const all = SETTINGS.map((s) => s.name);
    if (!existsSync(path.join(root, "README.md"))) {
      expect.fail(`README.md does not exist yet; its settings table must list: ${all.join(", ")}`);
    }
    const readme = read("README.md");
    const missing = all.filter((n) => !new RegExp(`\\b${n}\\b`).test(readme));
    expect(missing, `settings missing from README.md: ${missing.join(", ")}`).toEqual([]);
  });
});
