/**
 * One loopback HTTP server for everything `func start` would serve:
 * - /{routePrefix}/...                     the app's HTTP triggers (app.http and df.app.client.http)
 * - /runtime/webhooks/durabletask/...      the management URLs createCheckStatusResponse points at
 * - /durabletask/...                       the extension's local RPC endpoint (clientData.rpcBaseUrl)
 * - POST /admin/functions/{name}           the host admin API to run a non-HTTP function now
 */
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { HttpRequest, HttpResponse, type HttpResponseInit, type Cookie } from "@azure/functions";
import { compareRoutes, compileRoute, type CompiledRoute } from "./routes";
import { type RegisteredFunction, registeredFunctions, triggerBinding } from "./registry";
import type { ContextFactory, DurableClientData } from "./invocation";
import {
  type InstanceStatus,
  InstanceAlreadyExistsError,
  InstanceNotTerminalError,
  type TaskHub,
  UnknownFunctionError,
  isTerminal,
} from "./engine";
import { errorDetails, errorMessage } from "./protocol";
import { runInScope } from "./rejections";

export interface ServerOptions {
  hub: TaskHub;
  contexts: ContextFactory;
  taskHubName: string;
  functionKey?: string;
  routePrefix: string;
  maxRequestBodyBytes: number;
  invokeFunction: (name: string, input: unknown) => Promise<unknown>;
  log: (line: string) => void;
}

interface HttpRoute {
  fn: RegisteredFunction;
  route: CompiledRoute;
  methods: string[] | undefined;
  authLevel: string;
}

type Body = { ok: true; bytes: Buffer } | { ok: false };

const WEBHOOK_BASE = "/runtime/webhooks/durabletask";
const RPC_BASE = "/durabletask";
/** the longest request body drained (and discarded) before answering 413 on a kept-alive socket */
const DRAIN_FACTOR = 8;

interface JsonReply {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
}

export class LocalHttpServer {
  private readonly server: http.Server;
  private readonly routes: HttpRoute[];
  private origin = "";

  constructor(private readonly options: ServerOptions) {
    this.routes = this.buildRoutes();
    this.server = http.createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        this.options.log(`[http] ${req.method} ${req.url}: ${errorDetails(err)}`);
        if (!res.headersSent) res.writeHead(500);
        res.end();
      });
    });
  }

  async listen(port: number): Promise<string> {
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.server.once("error", onError);
      this.server.listen(port, "127.0.0.1", () => {
        this.server.off("error", onError);
        resolve();
      });
    });
    const address = this.server.address() as AddressInfo;
    this.origin = `http://127.0.0.1:${address.port}`;
    return this.origin;
  }

  async close(): Promise<void> {
    if (!this.server.listening) return;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
  }

  /** What the extension binds to durableClient inputs; built lazily because the port is known late. */
  clientData(): DurableClientData {
    const webhooks = `${this.origin}${WEBHOOK_BASE}`;
    const query = this.managementQuery();
    const instance = `${webhooks}/instances/INSTANCEID`;
    return {
      taskHubName: this.options.taskHubName,
      rpcBaseUrl: `${this.origin}${RPC_BASE}/`,
      baseUrl: webhooks,
      requiredQueryStringParameters: query,
      creationUrls: {
        createNewInstancePostUri: `${webhooks}/orchestrators/{functionName}[/{instanceId}]?${query}`,
        createAndWaitOnNewInstancePostUri: `${webhooks}/orchestrators/{functionName}[/{instanceId}]?timeout={timeoutInSeconds}&pollingInterval={intervalInSeconds}&${query}`,
      },
      managementUrls: {
        id: "INSTANCEID",
        statusQueryGetUri: `${instance}?${query}`,
        sendEventPostUri: `${instance}/raiseEvent/{eventName}?${query}`,
        terminatePostUri: `${instance}/terminate?reason={text}&${query}`,
        rewindPostUri: `${instance}/rewind?reason={text}&${query}`,
        purgeHistoryDeleteUri: `${instance}?${query}`,
        restartPostUri: `${instance}/restart?${query}`,
        suspendPostUri: `${instance}/suspend?reason={text}&${query}`,
        resumePostUri: `${instance}/resume?reason={text}&${query}`,
      },
    };
  }

  private managementQuery(): string {
    const parts = [`taskHub=${encodeURIComponent(this.options.taskHubName)}`, "connection=Storage"];
    // in Azure these URLs carry the durabletask system key; locally the configured function key
    if (this.options.functionKey) parts.push(`code=${encodeURIComponent(this.options.functionKey)}`);
    return parts.join("&");
  }

  private managementPayload(origin: string, instanceId: string): Record<string, string> {
    const urls = this.clientData().managementUrls;
    const payload: Record<string, string> = { id: instanceId };
    for (const [key, value] of Object.entries(urls)) {
      if (key === "id") continue;
      payload[key] = value.replace(this.origin, origin).replace("INSTANCEID", encodeURIComponent(instanceId));
    }
    return payload;
  }

  private buildRoutes(): HttpRoute[] {
    const routes: HttpRoute[] = [];
    for (const fn of registeredFunctions().values()) {
      const trigger = triggerBinding(fn);
      if (trigger.type.toLowerCase() !== "httptrigger") continue;
      const template = typeof trigger.route === "string" && trigger.route !== "" ? trigger.route : fn.metadata.name;
      const methods = Array.isArray(trigger.methods) ? trigger.methods.map((m) => String(m).toUpperCase()) : undefined;
      const authLevel = typeof trigger.authLevel === "string" ? trigger.authLevel.toLowerCase() : "anonymous";
      routes.push({ fn, route: compileRoute(template), methods, authLevel });
    }
    return routes.sort((a, b) => compareRoutes(a.route, b.route));
  }

  // ------------------------------------------------------------------ dispatch

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const host = req.headers.host ?? this.origin.replace(/^http:\/\//, "");
    const url = new URL(req.url ?? "/", `http://${host}`);
    const path = url.pathname;
    const prefix = this.options.routePrefix ? `/${this.options.routePrefix}` : "";

    if (path === WEBHOOK_BASE || path.startsWith(`${WEBHOOK_BASE}/`)) {
      if (!this.authorized(req, url)) return this.reply(res, { status: 401 });
      return this.handleDurable(req, res, url, path.slice(WEBHOOK_BASE.length), true);
    }
    if (path === RPC_BASE || path.startsWith(`${RPC_BASE}/`)) {
      return this.handleDurable(req, res, url, path.slice(RPC_BASE.length), false);
    }
    const admin = /^\/admin\/functions\/([^/]+)\/?$/.exec(path);
    if (admin) {
      if (!this.authorized(req, url)) return this.reply(res, { status: 401 });
      return this.handleAdminInvoke(req, res, decodeURIComponent(admin[1]));
    }
    if (prefix === "" || path === prefix || path.startsWith(`${prefix}/`)) {
      return this.handleApp(req, res, url, path.slice(prefix.length));
    }
    return this.reply(res, { status: 404 });
  }

  private authorized(req: http.IncomingMessage, url: URL): boolean {
    const key = this.options.functionKey;
    if (!key) return true;
    const given = headerValue(req, "x-functions-key") ?? url.searchParams.get("code");
    return given === key;
  }

  private async readBody(req: http.IncomingMessage): Promise<Body> {
    const limit = this.options.maxRequestBodyBytes;
    const chunks: Buffer[] = [];
    let total = 0;
    let tooLarge = false;
    for await (const chunk of req) {
      const buffer = chunk as Buffer;
      total += buffer.length;
      if (total > limit) {
        tooLarge = true;
        chunks.length = 0;
        if (total > limit * DRAIN_FACTOR) {
          req.destroy();
          break;
        }
        continue;
      }
      chunks.push(buffer);
    }
    return tooLarge ? { ok: false } : { ok: true, bytes: Buffer.concat(chunks) };
  }

  private reply(res: http.ServerResponse, reply: JsonReply): void {
    const headers: Record<string, string> = { ...(reply.headers ?? {}) };
    let payload: Buffer | undefined;
    if (reply.body !== undefined) {
      payload = Buffer.from(JSON.stringify(reply.body), "utf8");
      headers["content-type"] ??= "application/json; charset=utf-8";
    }
    headers["content-length"] = String(payload?.length ?? 0);
    res.writeHead(reply.status, headers);
    res.end(payload);
  }

  // ------------------------------------------------------------------ app HTTP triggers

  private async handleApp(req: http.IncomingMessage, res: http.ServerResponse, url: URL, routePath: string): Promise<void> {
    const method = (req.method ?? "GET").toUpperCase();
    let matched: { route: HttpRoute; params: Record<string, string> } | undefined;
    let pathMatchedOnly = false;
    for (const route of this.routes) {
      const params = route.route.match(routePath);
      if (!params) continue;
      if (route.methods && !route.methods.includes(method)) {
        pathMatchedOnly = true;
        continue;
      }
      matched = { route, params };
      break;
    }
    if (!matched) {
      if (pathMatchedOnly) this.options.log(`[http] ${method} ${url.pathname}: route exists but not for ${method}`);
      await this.readBody(req);
      return this.reply(res, { status: 404 });
    }
    const { route, params } = matched;
    if ((route.authLevel === "function" || route.authLevel === "admin") && !this.authorized(req, url)) {
      await this.readBody(req);
      return this.reply(res, { status: 401 });
    }
    const body = await this.readBody(req);
    if (!body.ok) return this.reply(res, { status: 413, headers: { connection: "close" } });

    const request = new HttpRequest({
      method,
      url: url.href,
      headers: requestHeaders(req),
      params,
      body: body.bytes.length > 0 ? { bytes: body.bytes } : undefined,
    });
    const context = this.options.contexts.create(route.fn);
    let result: unknown;
    try {
      const scope = {
        report: (reason: unknown) =>
          this.options.log(`[${route.fn.metadata.name}] unhandled rejection: ${errorDetails(reason)}`),
      };
      result = await runInScope(scope, () => route.fn.callback(request, context));
    } catch (err) {
      this.options.log(`[http] ${route.fn.metadata.name} threw: ${errorDetails(err)}`);
      return this.reply(res, { status: 500 });
    }
    await writeHttpResult(res, result, method === "HEAD");
  }

  // ------------------------------------------------------------------ admin API

  private async handleAdminInvoke(req: http.IncomingMessage, res: http.ServerResponse, name: string): Promise<void> {
    const body = await this.readBody(req);
    if (!body.ok) return this.reply(res, { status: 413, headers: { connection: "close" } });
    if (req.method !== "POST") return this.reply(res, { status: 404 });
    let input: unknown;
    try {
      const parsed: unknown = body.bytes.length > 0 ? JSON.parse(body.bytes.toString("utf8")) : {};
      input = typeof parsed === "object" && parsed !== null ? (parsed as { input?: unknown }).input : undefined;
    } catch {
      return this.reply(res, { status: 400, body: { message: "Invalid JSON content" } });
    }
    if (!registeredFunctions().has(name)) return this.reply(res, { status: 404 });
    // like the host: accepted immediately, runs in the background
    this.options.invokeFunction(name, input).catch((err: unknown) =>
      this.options.log(`[admin] ${name} failed: ${errorDetails(err)}`),
    );
    return this.reply(res, { status: 202 });
  }

  // ------------------------------------------------------------------ durable webhooks / RPC

  private async handleDurable(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    url: URL,
    subPath: string,
    webhook: boolean,
  ): Promise<void> {
    const body = await this.readBody(req);
    if (!body.ok) return this.reply(res, { status: 413, headers: { connection: "close" } });
    const method = (req.method ?? "GET").toUpperCase();
    const segments = subPath
      .split("/")
      .filter((s) => s.length > 0)
      .map((s) => safeDecode(s));
    const hub = this.options.hub;
    const origin = url.origin;
    const [controller, first, second, third] = segments;

    if (controller === "orchestrators" && first !== undefined && segments.length <= 3) {
      if (method !== "POST") return this.reply(res, { status: 404 });
      const parsed = parseJsonBody(body.bytes);
      if (!parsed.ok) return this.reply(res, { status: 400, body: { message: "Invalid JSON content" } });
      try {
        const id = hub.startNew(first, { instanceId: second, input: parsed.value });
        const payload = this.managementPayload(origin, id);
        return this.reply(res, {
          status: 202,
          body: payload,
          headers: { location: payload.statusQueryGetUri, "retry-after": "10" },
        });
      } catch (err) {
        if (err instanceof InstanceAlreadyExistsError) return this.reply(res, { status: 409, body: { message: err.message } });
        if (err instanceof UnknownFunctionError) return this.reply(res, { status: 400, body: { message: err.message } });
        throw err;
      }
    }

    if (controller === "instances") {
      if (first === undefined) {
        if (method === "GET") return this.reply(res, { status: 200, body: this.queryInstances(url.searchParams) });
        if (method === "DELETE") return this.purgeByFilter(res, url.searchParams);
        return this.reply(res, { status: 404 });
      }
      const status = hub.getStatus(first);
      if (second === undefined) {
        if (method === "GET") {
          if (!status) return this.reply(res, { status: 404 });
          return this.replyStatus(res, url, status, webhook);
        }
        if (method === "DELETE") {
          if (!status) return this.reply(res, { status: 404 });
          try {
            hub.purge(first);
          } catch (err) {
            if (err instanceof InstanceNotTerminalError) return this.reply(res, { status: 412, body: { message: err.message } });
            throw err;
          }
          return this.reply(res, { status: 200, body: { instancesDeleted: 1 } });
        }
        return this.reply(res, { status: 404 });
      }
      if (method !== "POST") return this.reply(res, { status: 404 });
      if (!status) return this.reply(res, { status: 404 });
      switch (second.toLowerCase()) {
        case "raiseevent": {
          if (third === undefined) return this.reply(res, { status: 404 });
          if (isTerminal(status.runtimeStatus)) return this.reply(res, { status: 410 });
          const parsed = parseJsonBody(body.bytes);
          if (!parsed.ok) return this.reply(res, { status: 400, body: { message: "Invalid JSON content" } });
          hub.raiseEvent(first, third, parsed.value ?? null);
          return this.reply(res, { status: 202 });
        }
        case "terminate":
          if (isTerminal(status.runtimeStatus)) return this.reply(res, { status: 410 });
          hub.terminate(first, url.searchParams.get("reason") ?? "");
          return this.reply(res, { status: 202 });
        default:
          return this.reply(res, {
            status: 501,
            body: { message: `'${second}' is not supported by the local durable host` },
          });
      }
    }

    if (controller === "entities") {
      return this.reply(res, { status: 501, body: { message: "Durable entities are not supported by the local durable host" } });
    }
    return this.reply(res, { status: 404 });
  }

  private replyStatus(res: http.ServerResponse, url: URL, status: InstanceStatus, webhook: boolean): void {
    const showInput = url.searchParams.get("showInput") !== "false";
    const body = { ...status, input: showInput ? status.input : null };
    const running = !isTerminal(status.runtimeStatus);
    const failedAs500 =
      status.runtimeStatus === "Failed" && url.searchParams.get("returnInternalServerErrorOnFailure") === "true";
    const headers: Record<string, string> = {};
    if (running) {
      if (webhook) headers.location = url.href;
      headers["retry-after"] = "5";
    }
    this.reply(res, { status: running ? 202 : failedAs500 ? 500 : 200, body, headers });
  }

  private filterInstances(query: URLSearchParams): InstanceStatus[] {
    const statuses = (query.get("runtimeStatus") ?? "")
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s.length > 0);
    const from = query.get("createdTimeFrom");
    const to = query.get("createdTimeTo");
    const prefix = query.get("instanceIdPrefix");
    return this.options.hub.listInstances().filter((s) => {
      if (statuses.length > 0 && !statuses.includes(s.runtimeStatus)) return false;
      if (from && Date.parse(s.createdTime) < Date.parse(from)) return false;
      if (to && Date.parse(s.createdTime) > Date.parse(to)) return false;
      if (prefix && !s.instanceId.startsWith(prefix)) return false;
      return true;
    });
  }

  private queryInstances(query: URLSearchParams): InstanceStatus[] {
    const showInput = query.get("showInput") === "true";
    return this.filterInstances(query).map((s) => ({ ...s, input: showInput ? s.input : null }));
  }

  private purgeByFilter(res: http.ServerResponse, query: URLSearchParams): void {
    let deleted = 0;
    for (const status of this.filterInstances(query)) {
      if (isTerminal(status.runtimeStatus) && this.options.hub.purge(status.instanceId)) deleted++;
    }
    if (deleted === 0) return this.reply(res, { status: 404 });
    return this.reply(res, { status: 200, body: { instancesDeleted: deleted } });
  }
}

// ------------------------------------------------------------------ helpers

function headerValue(req: http.IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function requestHeaders(req: http.IncomingMessage): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [name, values] of Object.entries(req.headersDistinct)) {
    if (values) headers[name] = values.join(", ");
  }
  return headers;
}

function safeDecode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

function parseJsonBody(bytes: Buffer): { ok: true; value: unknown } | { ok: false } {
  if (bytes.length === 0) return { ok: true, value: undefined };
  try {
    return { ok: true, value: JSON.parse(bytes.toString("utf8")) as unknown };
  } catch {
    return { ok: false };
  }
}

function isHttpResponseLike(value: unknown): value is HttpResponse {
  if (value instanceof HttpResponse) return true;
  const candidate = value as { arrayBuffer?: unknown; headers?: { entries?: unknown }; status?: unknown };
  return (
    typeof candidate.arrayBuffer === "function" &&
    typeof candidate.status === "number" &&
    typeof candidate.headers?.entries === "function"
  );
}

function serializeCookie(cookie: Cookie): string {
  const parts = [`${cookie.name}=${cookie.value}`];
  if (cookie.domain) parts.push(`Domain=${cookie.domain}`);
  if (cookie.path) parts.push(`Path=${cookie.path}`);
  if (cookie.expires !== undefined) {
    const expires = cookie.expires instanceof Date ? cookie.expires : new Date(cookie.expires);
    parts.push(`Expires=${expires.toUTCString()}`);
  }
  if (cookie.maxAge !== undefined) parts.push(`Max-Age=${cookie.maxAge}`);
  if (cookie.secure) parts.push("Secure");
  if (cookie.httpOnly) parts.push("HttpOnly");
  if (cookie.sameSite) parts.push(`SameSite=${cookie.sameSite}`);
  return parts.join("; ");
}

/** Same conversion as the worker's toRpcHttp: an HttpResponseInit becomes an HttpResponse. */
async function writeHttpResult(res: http.ServerResponse, result: unknown, head: boolean): Promise<void> {
  if (result === undefined || result === null) {
    res.writeHead(204);
    res.end();
    return;
  }
  if (typeof result !== "object") {
    res.writeHead(500);
    res.end();
    return;
  }
  let response: HttpResponse;
  try {
    response = isHttpResponseLike(result) ? result : new HttpResponse(result as HttpResponseInit);
  } catch (err) {
    res.writeHead(500, { "content-type": "text/plain; charset=utf-8" });
    res.end(`invalid HTTP response: ${errorMessage(err)}`);
    return;
  }
  const headers: Record<string, string | string[]> = {};
  for (const [name, value] of response.headers.entries()) headers[name] = value;
  const cookies = (response.cookies ?? []).map(serializeCookie);
  if (cookies.length > 0) headers["set-cookie"] = cookies;
  const payload = Buffer.from(await response.arrayBuffer());
  headers["content-length"] = String(payload.length);
  res.writeHead(response.status, headers);
  res.end(head ? undefined : payload);
}
