/**
 * Local durable host: runs the app's real Functions registrations (captured through a fake
 * `@azure/functions-core`) and the real durable-functions replay engine in this process, without
 * the Functions host or Core Tools. The CLI, the demo and the tests all use it.
 *
 *   const host = await LocalDurableHost.start({ loadApp: () => { require("../functions"); } });
 *   const id = await host.startNew("backupMailbox", { input });
 *   const done = await host.waitForCompletion(id);
 *   await host.stop();
 */
import type { Timer } from "@azure/functions";
import { createContextFactory, type DurableClientData } from "./invocation";
import {
  type CompoundTaskReusePolicy,
  type InstanceMetrics,
  type InstanceStatus,
  TaskHub,
  UnknownFunctionError,
} from "./engine";
import { getFunction, installFakeCore, registeredFunctions, registeredHooks, triggerType } from "./registry";
import { LocalHttpServer } from "./server";
import { errorDetails, roundTrip } from "./protocol";
import { runInScope, trapUnhandledRejections } from "./rejections";

export type { CompoundTaskReusePolicy, InstanceMetrics, InstanceStatus, RuntimeStatus } from "./engine";
export {
  InstanceAlreadyExistsError,
  InstanceNotFoundError,
  InstanceNotTerminalError,
  UnknownFunctionError,
} from "./engine";
export type { DurableClientData } from "./invocation";

export interface LocalHostOptions {
  /** Loads the app: called after the fake core is installed, e.g. () => { require("../functions"); } */
  loadApp: () => void | Promise<void>;
  /** When set, HTTP routes with authLevel "function"/"admin" require this key (`x-functions-key` header or `code` query); otherwise keys are not enforced, like `func start`. */
  functionKey?: string;
  /** Real-time timers scaled by this factor (default 1; tests use e.g. 0.001 so a 5 s retry waits 5 ms). Durable currentUtcDateTime still advances with the real clock. */
  timerScale?: number;
  /** like host.json maxConcurrentActivityFunctions (default 16), a global activity queue */
  maxConcurrentActivities?: number;
  /** like the control-queue batch (default 32) */
  maxEventsPerEpisode?: number;
  /** HTTP port, default 0 (free) */
  port?: number;
  taskHubName?: string;
  /** host diagnostics and the app's context.log lines; default silent */
  log?: (line: string) => void;
  /** see CompoundTaskReusePolicy; default "fail" because Azure misbehaves on such orchestrations */
  compoundTaskReuse?: CompoundTaskReusePolicy;
  /** host.json extensions.http.routePrefix (default "api") */
  routePrefix?: string;
  /** larger request bodies get 413 (default 1 MiB) */
  maxRequestBodyBytes?: number;
  /** how long stop() waits for running activities (default 5000 ms) */
  stopTimeoutMs?: number;
}

interface HostnameClaim {
  holders: number;
  setByUs: boolean;
}
const HOSTNAME_CLAIM = Symbol.for("mailvault.localhost.websiteHostname");

/**
 * Like `func start`, expose WEBSITE_HOSTNAME to the app. Without it, df.getClient() rewrites every
 * management URL to http://localhost:7071, so createHttpManagementPayload() (no request to take the
 * origin from) would point at a port nobody listens on. Reference-counted across hosts; a value the
 * user set is left alone.
 */
function claimWebsiteHostname(origin: string): () => void {
  const holder = globalThis as unknown as Record<symbol, HostnameClaim | undefined>;
  const claim = (holder[HOSTNAME_CLAIM] ??= { holders: 0, setByUs: false });
  if (claim.holders++ === 0 && !process.env.WEBSITE_HOSTNAME) {
    process.env.WEBSITE_HOSTNAME = new URL(origin).host;
    claim.setByUs = true;
  }
  let released = false;
  return () => {
    if (released) return;
    released = true;
    if (--claim.holders === 0 && claim.setByUs) {
      delete process.env.WEBSITE_HOSTNAME;
      claim.setByUs = false;
    }
  };
}

const DEFAULTS = {
  timerScale: 1,
  maxConcurrentActivities: 16,
  maxEventsPerEpisode: 32,
  port: 0,
  taskHubName: "MailvaultLocalHub",
  routePrefix: "api",
  maxRequestBodyBytes: 1024 * 1024,
  stopTimeoutMs: 5000,
} as const;

export class LocalDurableHost {
  private stopping: Promise<void> | undefined;

  private readonly releaseRejectionTrap = trapUnhandledRejections();
  private readonly releaseHostname: () => void;

  private constructor(
    private readonly hub: TaskHub,
    private readonly server: LocalHttpServer,
    private readonly contexts: ReturnType<typeof createContextFactory>,
    private readonly stopTimeoutMs: number,
    private readonly log: (line: string) => void,
    readonly baseUrl: string,
  ) {
    this.releaseHostname = claimWebsiteHostname(baseUrl);
  }

  static async start(options: LocalHostOptions): Promise<LocalDurableHost> {
    installFakeCore();
    await options.loadApp();
    if (registeredFunctions().size === 0) {
      throw new Error(
        "local host: no functions were captured. Either the app registers none, or '@azure/functions' registered " +
          "something before the local host was installed (it then stays in test mode for the whole process): start " +
          "the host before anything imports the app's function modules.",
      );
    }
    const log = options.log ?? (() => undefined);
    if (registeredHooks().length > 0) log(`[host] ${registeredHooks().length} app hook(s) registered; hooks are not run locally`);

    const timerScale = options.timerScale ?? DEFAULTS.timerScale;
    if (!(timerScale >= 0) || !Number.isFinite(timerScale)) throw new RangeError("timerScale must be a finite number >= 0");
    let server: LocalHttpServer | undefined;
    const contexts = createContextFactory(log, (): DurableClientData => {
      if (!server) throw new Error("local host: durable client requested before the HTTP server started");
      return server.clientData();
    });
    const hub = new TaskHub(
      {
        timerScale,
        maxConcurrentActivities: Math.max(1, options.maxConcurrentActivities ?? DEFAULTS.maxConcurrentActivities),
        maxEventsPerEpisode: Math.max(1, options.maxEventsPerEpisode ?? DEFAULTS.maxEventsPerEpisode),
        compoundTaskReuse: options.compoundTaskReuse ?? "fail",
        log,
      },
      contexts,
    );
    let host: LocalDurableHost | undefined;
    server = new LocalHttpServer({
      hub,
      contexts,
      taskHubName: options.taskHubName ?? DEFAULTS.taskHubName,
      functionKey: options.functionKey,
      routePrefix: (options.routePrefix ?? DEFAULTS.routePrefix).replace(/^\/+|\/+$/g, ""),
      maxRequestBodyBytes: options.maxRequestBodyBytes ?? DEFAULTS.maxRequestBodyBytes,
      invokeFunction: (name, input) => {
        if (!host) return Promise.reject(new Error("local host not started"));
        return triggerType(requireFunction(name)) === "timerTrigger" ? host.invokeTimer(name) : host.invoke(name, input);
      },
      log,
    });
    const baseUrl = await server.listen(options.port ?? DEFAULTS.port);
    host = new LocalDurableHost(hub, server, contexts, options.stopTimeoutMs ?? DEFAULTS.stopTimeoutMs, log, baseUrl);
    log(`[host] listening on ${baseUrl} with ${registeredFunctions().size} function(s)`);
    return host;
  }

  /** Returns once the instance exists; it runs in the background. Throws InstanceAlreadyExistsError for a Pending/Running id. */
  async startNew(orchestrationName: string, options?: { instanceId?: string; input?: unknown }): Promise<string> {
    return this.hub.startNew(orchestrationName, options);
  }

  getStatus(instanceId: string): InstanceStatus | undefined {
    return this.hub.getStatus(instanceId);
  }

  /** Resolves on Completed/Failed/Terminated (continueAsNew keeps the same id, so it is followed). */
  waitForCompletion(instanceId: string, options?: { timeoutMs?: number }): Promise<InstanceStatus> {
    return this.hub.waitForCompletion(instanceId, options?.timeoutMs);
  }

  async raiseEvent(instanceId: string, eventName: string, data?: unknown): Promise<void> {
    this.hub.raiseEvent(instanceId, eventName, data);
  }

  /** No-op for an instance that already finished (the extension answers 410 Gone then). */
  async terminate(instanceId: string, reason: string): Promise<void> {
    this.hub.terminate(instanceId, reason);
  }

  /** Deletes a finished instance; false when unknown, throws InstanceNotTerminalError while it runs. */
  purgeInstance(instanceId: string): boolean {
    return this.hub.purge(instanceId);
  }

  /** Runs a timer trigger (app.timer or df.app.client.timer) now. */
  async invokeTimer(functionName: string): Promise<void> {
    const fn = requireFunction(functionName);
    if (triggerType(fn) !== "timerTrigger") throw new UnknownFunctionError(functionName, "timer-triggered");
    const now = new Date();
    const timer: Timer = {
      isPastDue: false,
      schedule: { adjustForDST: true },
      scheduleStatus: { last: now.toISOString(), next: now.toISOString(), lastUpdated: now.toISOString() },
    };
    const context = this.contexts.create(fn);
    await this.inScope(functionName, () => fn.callback(timer, context));
  }

  /**
   * Runs any other trigger (eventGrid, storageQueue, generic, activity...) with the given trigger
   * value; a declared durableClient input is bound. HTTP triggers go through `baseUrl` instead.
   */
  async invoke(functionName: string, triggerValue: unknown): Promise<unknown> {
    const fn = requireFunction(functionName);
    const type = triggerType(fn);
    if (type === "orchestrationTrigger" || type.toLowerCase() === "httptrigger") {
      throw new Error(
        `invoke() cannot run ${type} '${functionName}': use startNew() for orchestrations and baseUrl for HTTP triggers`,
      );
    }
    const context = this.contexts.create(fn);
    if (type === "activityTrigger") {
      const input = roundTrip(triggerValue);
      return roundTrip(await this.inScope(functionName, () => fn.callback(input, context)));
    }
    return this.inScope(functionName, () => fn.callback(triggerValue, context));
  }

  private inScope<T>(functionName: string, run: () => T): T {
    return runInScope({ report: (reason) => this.log(`[${functionName}] unhandled rejection: ${errorDetails(reason)}`) }, run);
  }

  metrics(instanceId: string): InstanceMetrics {
    return this.hub.metrics(instanceId);
  }

  listInstances(): InstanceStatus[] {
    return this.hub.listInstances();
  }

  /** Names and trigger types of the captured functions (process-wide). */
  functions(): Array<{ name: string; trigger: string }> {
    return [...registeredFunctions().values()].map((fn) => ({ name: fn.metadata.name, trigger: triggerType(fn) }));
  }

  /** Stops HTTP, cancels timers, drops queued work and waits (bounded) for running activities. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      try {
        await this.server.close();
        await this.hub.stop(this.stopTimeoutMs);
      } finally {
        this.releaseRejectionTrap();
        this.releaseHostname();
      }
    })();
    return this.stopping;
  }
}

function requireFunction(name: string) {
  const fn = getFunction(name);
  if (!fn) throw new UnknownFunctionError(name, "registered");
  return fn;
}
