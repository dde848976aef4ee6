/**
 * The out-of-process wire protocol between the Durable extension and the durable-functions
 * library (replay schema V3): history events in, cumulative actions out. The library's internals
 * are untyped, so everything it hands back is validated here and narrowed to these shapes.
 */

export const EventType = {
  ExecutionStarted: 0,
  TaskScheduled: 4,
  TaskCompleted: 5,
  TaskFailed: 6,
  SubOrchestrationInstanceCreated: 7,
  SubOrchestrationInstanceCompleted: 8,
  SubOrchestrationInstanceFailed: 9,
  TimerCreated: 10,
  TimerFired: 11,
  OrchestratorStarted: 12,
  OrchestratorCompleted: 13,
  EventRaised: 15,
} as const;

export const ActionType = {
  CallActivity: 0,
  CallActivityWithRetry: 1,
  CallSubOrchestrator: 2,
  CallSubOrchestratorWithRetry: 3,
  ContinueAsNew: 4,
  CreateTimer: 5,
  WaitForExternalEvent: 6,
  CallEntity: 7,
  CallHttp: 8,
  SignalEntity: 9,
  WhenAny: 11,
  WhenAll: 12,
  LockEntities: 13,
  ReleaseEntities: 14,
} as const;

const actionTypeNames: Record<number, string> = Object.fromEntries(
  Object.entries(ActionType).map(([name, value]) => [value, name]),
);

export function actionTypeName(type: number): string {
  return actionTypeNames[type] ?? `action type ${type}`;
}

/** PascalCase like the extension sends; Timestamp stays a string so every episode gets a clean copy. */
export interface HistoryEvent {
  EventType: number;
  EventId: number;
  IsPlayed: boolean;
  Timestamp: string;
  Name?: string;
  Input?: string;
  Result?: string;
  Reason?: string;
  Details?: string;
  TaskScheduledId?: number;
  TimerId?: number;
  FireAt?: string;
  InstanceId?: string;
}

export function historyEvent(type: number, fields: Partial<HistoryEvent> = {}, at: Date = new Date()): HistoryEvent {
  return { EventType: type, EventId: -1, IsPlayed: false, Timestamp: at.toISOString(), ...fields };
}

export interface WireRetryOptions {
  firstRetryIntervalInMilliseconds: number;
  maxNumberOfAttempts: number;
  backoffCoefficient?: number;
  maxRetryIntervalInMilliseconds?: number;
  retryTimeoutInMilliseconds?: number;
}

/** One action as the library builds it. Objects keep their identity within one invocation. */
export interface WireAction {
  actionType: number;
  functionName?: string;
  input?: unknown;
  instanceId?: string;
  retryOptions?: WireRetryOptions;
  fireAt?: Date;
  isCanceled?: boolean;
  externalEventName?: string;
  compoundActions?: WireAction[];
}

export interface WireOrchestratorState {
  isDone: boolean;
  actions: WireAction[];
  output: unknown;
  error?: string;
  customStatus: unknown;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null;
}

function toRetryOptions(value: unknown): WireRetryOptions | undefined {
  if (!isRecord(value)) return undefined;
  const first = value.firstRetryIntervalInMilliseconds;
  const max = value.maxNumberOfAttempts;
  if (typeof first !== "number" || typeof max !== "number") return undefined;
  const num = (v: unknown): number | undefined => (typeof v === "number" && Number.isFinite(v) ? v : undefined);
  return {
    firstRetryIntervalInMilliseconds: first,
    maxNumberOfAttempts: max,
    backoffCoefficient: num(value.backoffCoefficient),
    maxRetryIntervalInMilliseconds: num(value.maxRetryIntervalInMilliseconds),
    retryTimeoutInMilliseconds: num(value.retryTimeoutInMilliseconds),
  };
}

/**
 * Validates an action without copying it: identity matters, because a task re-used in a later
 * Task.any/Task.all shows up as the very same action object.
 */
function checkAction(value: unknown): WireAction {
  if (!isRecord(value) || typeof value.actionType !== "number") {
    throw new Error(`local host: the orchestrator returned an action without an actionType: ${safeJson(value)}`);
  }
  if (value.compoundActions !== undefined) {
    if (!Array.isArray(value.compoundActions)) throw new Error("local host: compoundActions is not an array");
    value.compoundActions.forEach(checkAction);
  }
  return value as unknown as WireAction;
}

export function retryOptionsOf(action: WireAction): WireRetryOptions | undefined {
  return toRetryOptions(action.retryOptions);
}

export function parseOrchestratorState(value: unknown): WireOrchestratorState {
  if (!isRecord(value) || typeof value.isDone !== "boolean" || !Array.isArray(value.actions)) {
    throw new Error(`local host: the orchestrator did not return an OrchestratorState: ${safeJson(value)}`);
  }
  // Schema V2+ nests the cumulative list in a single outer array.
  const outer = value.actions as unknown[];
  const actions: WireAction[] = [];
  for (const inner of outer) {
    if (Array.isArray(inner)) actions.push(...inner.map(checkAction));
    else actions.push(checkAction(inner));
  }
  return {
    isDone: value.isDone,
    actions,
    output: value.output,
    error: typeof value.error === "string" ? value.error : undefined,
    customStatus: value.customStatus,
  };
}

const OOP_MARKER = "$OutOfProcData$:";

/**
 * The library throws OrchestrationFailureError whose message is `<junk>\n\n$OutOfProcData$:<state>`;
 * the useful text is state.error, not the (literally "false") prefix.
 */
export function extractOrchestratorFailure(err: unknown): { message: string; customStatus?: unknown } {
  const raw = err instanceof Error ? err.message : String(err);
  const at = raw.indexOf(OOP_MARKER);
  if (at >= 0) {
    try {
      const state: unknown = JSON.parse(raw.slice(at + OOP_MARKER.length));
      if (isRecord(state) && typeof state.error === "string") {
        return { message: state.error, customStatus: state.customStatus };
      }
    } catch {
      // fall through to the raw message
    }
  }
  return { message: raw };
}

/** Wire serialisation: the worker sends JSON, and a missing value arrives as null. */
export function toJson(value: unknown): string {
  return JSON.stringify(value === undefined ? null : value);
}

export function roundTrip<T = unknown>(value: T): T {
  return value === undefined ? value : (JSON.parse(JSON.stringify(value)) as T);
}

export function jsonSize(value: unknown): number {
  return Buffer.byteLength(value === undefined ? "null" : JSON.stringify(value) ?? "null", "utf8");
}

export function safeJson(value: unknown): string {
  try {
    const text = JSON.stringify(value);
    return text === undefined ? String(value) : text.length > 300 ? `${text.slice(0, 300)}…` : text;
  } catch {
    return String(value);
  }
}

/** Activity/retry/continueAsNew inputs are JSON-stringified by the library when they are strings. */
export function decodeProcessedInput(input: unknown): unknown {
  if (typeof input !== "string") return input;
  try {
    return JSON.parse(input);
  } catch {
    return input;
  }
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  if (typeof err === "string") return err;
  return safeJson(err);
}

export function errorDetails(err: unknown): string {
  if (err instanceof Error) return err.stack ?? err.message;
  return errorMessage(err);
}
