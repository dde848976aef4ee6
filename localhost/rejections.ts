/**
 * Floating promise rejections in app code must not take the process down (the CLI runs the app
 * in-process). Node 20 emits 'unhandledRejection' inside the rejected promise's async context, so
 * every invocation the host makes runs in an AsyncLocalStorage scope that says whom to blame:
 * an activity attempt fails (and may be retried), an orchestration instance fails, anything else is
 * logged. Rejections from outside any invocation keep Node's default behaviour (crash) unless
 * another listener (e.g. the test runner's) handles them.
 */
import { AsyncLocalStorage } from "node:async_hooks";

export interface RejectionScope {
  report(reason: unknown): void;
}

const scopes = new AsyncLocalStorage<RejectionScope>();
let installedBy = 0;

function onUnhandledRejection(reason: unknown): void {
  const scope = scopes.getStore();
  if (scope) {
    scope.report(reason);
    return;
  }
  if (process.listenerCount("unhandledRejection") > 1) return; // someone else handles it
  process.nextTick(() => {
    throw reason;
  });
}

/** Reference-counted: the listener is attached while at least one host runs. */
export function trapUnhandledRejections(): () => void {
  if (installedBy++ === 0) process.on("unhandledRejection", onUnhandledRejection);
  let disposed = false;
  return () => {
    if (disposed) return;
    disposed = true;
    if (--installedBy === 0) process.off("unhandledRejection", onUnhandledRejection);
  };
}

export function runInScope<T>(scope: RejectionScope, fn: () => T): T {
  return scopes.run(scope, fn);
}
