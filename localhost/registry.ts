/**
 * Captures the app's real Functions registrations. `@azure/functions` asks for the worker-provided
 * module `@azure/functions-core` on its first registration and, if it is missing, silently switches
 * to "test mode" for the rest of the process. We answer that require with an in-memory module
 * (no file on disk, so it works the same under tsc output, tsx and vitest).
 *
 * Registrations are module side effects, so the registry is process-global: a second host in the
 * same process sees the functions captured when the app was first loaded.
 */
import Module from "node:module";
import * as path from "node:path";

export interface BindingMetadata {
  type: string;
  direction?: string;
  name?: string;
  [key: string]: unknown;
}

export interface CoreFunctionMetadata {
  name: string;
  bindings: Record<string, BindingMetadata>;
  retryOptions?: unknown;
}

export type CoreFunctionCallback = (...args: unknown[]) => unknown;

export interface RegisteredFunction {
  metadata: CoreFunctionMetadata;
  callback: CoreFunctionCallback;
}

export interface RegisteredHook {
  hookName: string;
  callback: unknown;
}

interface GlobalRegistry {
  functions: Map<string, RegisteredFunction>;
  hooks: RegisteredHook[];
  installed: boolean;
}

const REGISTRY_KEY = Symbol.for("mailvault.localhost.registry");
const CORE_REQUEST = "@azure/functions-core";
const VIRTUAL_CORE_ID = path.resolve("/", "__mailvault_localhost__", "azure-functions-core.js");

function globalRegistry(): GlobalRegistry {
  const holder = globalThis as unknown as Record<symbol, GlobalRegistry | undefined>;
  let registry = holder[REGISTRY_KEY];
  if (!registry) {
    registry = { functions: new Map(), hooks: [], installed: false };
    holder[REGISTRY_KEY] = registry;
  }
  return registry;
}

function isBindings(value: unknown): value is Record<string, BindingMetadata> {
  if (typeof value !== "object" || value === null) return false;
  return Object.values(value).every(
    (b) => typeof b === "object" && b !== null && typeof (b as { type?: unknown }).type === "string",
  );
}

function createFakeCore(registry: GlobalRegistry): Record<string, unknown> {
  const disposable = (dispose: () => void = () => undefined) => ({ dispose });
  return {
    // the worker would hand this to the host; nothing to do locally
    setProgrammingModel(): void {},
    getProgrammingModel(): undefined {
      return undefined;
    },
    registerFunction(metadata: unknown, callback: unknown) {
      const meta = metadata as Partial<CoreFunctionMetadata> | undefined;
      if (!meta || typeof meta.name !== "string" || !isBindings(meta.bindings) || typeof callback !== "function") {
        throw new Error("local host: registerFunction called with unexpected metadata");
      }
      const entry: RegisteredFunction = {
        metadata: { name: meta.name, bindings: meta.bindings, retryOptions: meta.retryOptions },
        callback: callback as CoreFunctionCallback,
      };
      // Re-registration happens when a test runner re-evaluates an app module; last one wins.
      registry.functions.set(meta.name, entry);
      return disposable(() => {
        if (registry.functions.get(meta.name as string) === entry) registry.functions.delete(meta.name as string);
      });
    },
    registerHook(hookName: unknown, callback: unknown) {
      const hook: RegisteredHook = { hookName: String(hookName), callback };
      registry.hooks.push(hook);
      return disposable(() => {
        const i = registry.hooks.indexOf(hook);
        if (i >= 0) registry.hooks.splice(i, 1);
      });
    },
    log(): void {},
  };
}

interface ModuleInternals {
  _resolveFilename: (request: string, parent: unknown, isMain: boolean, options?: unknown) => string;
  _cache: Record<string, unknown>;
}

interface ModuleInstance {
  filename: string;
  loaded: boolean;
  exports: unknown;
  paths: string[];
}

/**
 * Installs the resolve hook once per process. Must run before `@azure/functions` registers its
 * first function (its core lookup is cached, including the failure).
 */
export function installFakeCore(): void {
  const registry = globalRegistry();
  if (registry.installed) return;
  const internals = Module as unknown as ModuleInternals;
  const ModuleCtor = Module as unknown as new (id: string) => ModuleInstance;

  const virtual = new ModuleCtor(VIRTUAL_CORE_ID);
  virtual.filename = VIRTUAL_CORE_ID;
  virtual.exports = createFakeCore(registry);
  virtual.loaded = true;
  virtual.paths = [];
  internals._cache[VIRTUAL_CORE_ID] = virtual;

  const original = internals._resolveFilename;
  internals._resolveFilename = function resolveWithFakeCore(this: unknown, request, parent, isMain, options) {
    if (request === CORE_REQUEST) {
      // Keep the cache entry alive even if someone cleared require.cache in between.
      if (!internals._cache[VIRTUAL_CORE_ID]) internals._cache[VIRTUAL_CORE_ID] = virtual;
      return VIRTUAL_CORE_ID;
    }
    return original.call(this, request, parent, isMain, options);
  };
  registry.installed = true;
}

export function registeredFunctions(): ReadonlyMap<string, RegisteredFunction> {
  return globalRegistry().functions;
}

export function registeredHooks(): readonly RegisteredHook[] {
  return globalRegistry().hooks;
}

/** Function names are case-insensitive in the Functions host; an exact match wins. */
export function getFunction(name: string): RegisteredFunction | undefined {
  const functions = globalRegistry().functions;
  const exact = functions.get(name);
  if (exact) return exact;
  const lower = name.toLowerCase();
  for (const [key, fn] of functions) if (key.toLowerCase() === lower) return fn;
  return undefined;
}

export function triggerBinding(fn: RegisteredFunction): BindingMetadata {
  for (const [name, binding] of Object.entries(fn.metadata.bindings)) {
    if (/trigger$/i.test(binding.type)) return { ...binding, name: binding.name ?? name };
  }
  throw new Error(`local host: function '${fn.metadata.name}' has no trigger binding`);
}

export function triggerType(fn: RegisteredFunction): string {
  return triggerBinding(fn).type;
}

export function isOrchestration(fn: RegisteredFunction): boolean {
  return triggerType(fn) === "orchestrationTrigger";
}

export function isActivity(fn: RegisteredFunction): boolean {
  return triggerType(fn) === "activityTrigger";
}

export interface EffectiveBindings {
  trigger: BindingMetadata & { name: string };
  returnBinding?: BindingMetadata & { name: string };
  extraInputs: Array<BindingMetadata & { name: string }>;
  extraOutputs: Array<BindingMetadata & { name: string }>;
}

/** Mirrors the worker's fromRpcBindings: what InvocationContext.options looks like in Azure. */
export function effectiveBindings(fn: RegisteredFunction): EffectiveBindings {
  let trigger: (BindingMetadata & { name: string }) | undefined;
  let returnBinding: (BindingMetadata & { name: string }) | undefined;
  const extraInputs: Array<BindingMetadata & { name: string }> = [];
  const extraOutputs: Array<BindingMetadata & { name: string }> = [];
  for (const [name, binding] of Object.entries(fn.metadata.bindings)) {
    const named = { ...binding, name };
    if (/trigger$/i.test(binding.type)) trigger = named;
    else if (name === "$return") returnBinding = named;
    else if (binding.direction === "in") extraInputs.push(named);
    else if (binding.direction === "out") extraOutputs.push(named);
  }
  if (!trigger) throw new Error(`local host: function '${fn.metadata.name}' has no trigger binding`);
  return { trigger, returnBinding, extraInputs, extraOutputs };
}

export function isDurableClientBinding(binding: BindingMetadata): boolean {
  return binding.type === "durableClient" || binding.type === "orchestrationClient";
}
