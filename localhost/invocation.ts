/**
 * Builds the InvocationContext the Node worker would build from the function's bindings, including
 * the durableClient input value that `df.getClient(context)` reads.
 */
import { randomUUID } from "node:crypto";
import { format } from "node:util";
import { InvocationContext, type LogLevel } from "@azure/functions";
import { effectiveBindings, isDurableClientBinding, type RegisteredFunction } from "./registry";

/** What the extension binds to a `durableClient` input (durable.md §4.5). */
export interface DurableClientData {
  taskHubName: string;
  rpcBaseUrl: string;
  baseUrl: string;
  requiredQueryStringParameters: string;
  creationUrls: {
    createNewInstancePostUri: string;
    createAndWaitOnNewInstancePostUri: string;
  };
  managementUrls: Record<string, string> & { id: string };
}

export interface ContextFactory {
  create(fn: RegisteredFunction, extra?: { triggerMetadata?: Record<string, unknown> }): InvocationContext;
}

export function createContextFactory(
  log: (line: string) => void,
  clientData: () => DurableClientData,
): ContextFactory {
  return {
    create(fn, extra) {
      const name = fn.metadata.name;
      const bindings = effectiveBindings(fn);
      const context = new InvocationContext({
        invocationId: randomUUID(),
        functionName: name,
        triggerMetadata: extra?.triggerMetadata,
        logHandler: (level: LogLevel, ...args: unknown[]) => log(`[${name}] ${level}: ${format(...args)}`),
        options: {
          trigger: bindings.trigger,
          return: bindings.returnBinding,
          extraInputs: bindings.extraInputs,
          extraOutputs: bindings.extraOutputs,
        },
      });
      for (const input of bindings.extraInputs) {
        // a fresh copy per invocation: getClient() clones, but the app may mutate what it gets
        if (isDurableClientBinding(input)) context.extraInputs.set(input.name, structuredClone(clientData()));
      }
      return context;
    },
  };
}
