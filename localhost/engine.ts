/**
 * The task hub: an in-memory stand-in for the Durable extension + storage provider that drives the
 * REAL durable-functions replay engine (the captured orchestration callback).
 *
 * Model (durable.md §3/§4):
 * - Every instance has an inbox. Activity/sub-orchestration completions, timer firings and raised
 *   events are posted to it the moment they happen; episodes run one at a time per instance and
 *   take up to `maxEventsPerEpisode` inbox items (history = OrchestratorStarted + those events).
 * - The library returns the CUMULATIVE action list of the execution. The host schedules only the
 *   tail and checks that the already-scheduled prefix did not change (non-determinism).
 * - Task ids are implicit: the library numbers tasks in the order it tracks them while walking the
 *   history. The retry no-op tasks of callActivityWithRetry consume ids when their TaskFailed /
 *   TimerFired events are *processed*, so those events are only ever placed at the head of an
 *   episode (before any event that could resume user code and schedule new tasks), which lets the
 *   host allocate their ids at episode-composition time in exactly the library's order.
 */
import { randomUUID } from "node:crypto";
import { type RegisteredFunction, getFunction, isActivity, isOrchestration } from "./registry";
import type { ContextFactory } from "./invocation";
import { runInScope } from "./rejections";
import {
  ActionType,
  EventType,
  type HistoryEvent,
  type WireAction,
  type WireRetryOptions,
  actionTypeName,
  decodeProcessedInput,
  errorDetails,
  errorMessage,
  extractOrchestratorFailure,
  historyEvent,
  jsonSize,
  parseOrchestratorState,
  retryOptionsOf,
  roundTrip,
  safeJson,
  toJson,
} from "./protocol";

export type RuntimeStatus = "Pending" | "Running" | "ContinuedAsNew" | "Completed" | "Failed" | "Terminated";

export interface InstanceStatus {
  name: string;
  instanceId: string;
  runtimeStatus: RuntimeStatus;
  input: unknown;
  /** the orchestration's return value; for Failed the failure message, for Terminated the reason */
  output: unknown;
  customStatus: unknown;
  createdTime: string;
  lastUpdatedTime: string;
}

export interface InstanceMetrics {
  /** 1 + number of continueAsNew */
  executions: number;
  episodes: number;
  /** largest history (events) any single execution reached */
  maxHistoryLength: number;
  /** events appended over all executions */
  totalHistoryEvents: number;
  /** activity invocations, retries included */
  activitiesRun: number;
  /** largest activity input or output, as JSON bytes */
  maxActivityPayloadBytes: number;
  /** wall time spent inside the orchestrator function (replays included), in milliseconds */
  orchestratorMs: number;
}

/**
 * What to do when a Task.any/Task.all includes a task that was already scheduled (e.g. a sliding
 * window that re-yields `Task.any(inFlight)`). The extension's legacy out-of-process protocol has
 * no task ids, so it schedules such a task AGAIN and its task ids drift from the library's
 * (Azure/azure-functions-durable-js#574): results land on the wrong tasks in Azure.
 * - "fail" (default): fail the instance with an explanation, so the problem shows up locally;
 * - "schedule-once": schedule each task once, as the library intends (not what Azure does).
 */
export type CompoundTaskReusePolicy = "fail" | "schedule-once";

export interface EngineOptions {
  timerScale: number;
  maxConcurrentActivities: number;
  maxEventsPerEpisode: number;
  compoundTaskReuse: CompoundTaskReusePolicy;
  log: (line: string) => void;
}

export class InstanceNotFoundError extends Error {
  constructor(readonly instanceId: string) {
    super(`No orchestration instance with ID '${instanceId}'`);
    this.name = "InstanceNotFoundError";
  }
}

export class InstanceAlreadyExistsError extends Error {
  constructor(
    readonly instanceId: string,
    readonly runtimeStatus: RuntimeStatus,
  ) {
    super(`An orchestration instance with ID '${instanceId}' already exists and is ${runtimeStatus}`);
    this.name = "InstanceAlreadyExistsError";
  }
}

export class UnknownFunctionError extends Error {
  constructor(
    readonly functionName: string,
    expected: string,
  ) {
    super(`The function '${functionName}' doesn't exist or is not an ${expected} function`);
    this.name = "UnknownFunctionError";
  }
}

export class InstanceNotTerminalError extends Error {
  constructor(
    readonly instanceId: string,
    readonly runtimeStatus: RuntimeStatus,
  ) {
    super(`Only instances in a terminal state can be purged; '${instanceId}' is ${runtimeStatus}`);
    this.name = "InstanceNotTerminalError";
  }
}

export function isTerminal(status: RuntimeStatus): boolean {
  return status === "Completed" || status === "Failed" || status === "Terminated";
}

// ---------------------------------------------------------------------------------------------

interface ActivityWork {
  kind: "activity";
  name: string;
  input: unknown;
  /** id of the current attempt (the reschedule no-op's id after a retry) */
  taskId: number;
  attempt: number;
  retry?: WireRetryOptions;
}

interface SubOrchestrationWork {
  kind: "subOrchestration";
  name: string;
  input: unknown;
  childId: string;
  taskId: number;
  attempt: number;
  retry?: WireRetryOptions;
}

type Work = ActivityWork | SubOrchestrationWork;

type Outcome = { ok: true; result: unknown } | { ok: false; reason: string; details: string };

type InboxItem =
  | { kind: "event"; event: HistoryEvent }
  /** failure of a retryable task: processing it makes the library track the retry-timer no-op */
  | { kind: "retryFailed"; event: HistoryEvent; work: Work }
  /** retry timer fired: unless exhausted, the library tracks the reschedule no-op */
  | { kind: "retryTimer"; timerId: number; fireAt: string; work: Work; exhausted: boolean };

/** Host work that follows an episode, for ids allocated while composing it. */
type PostEpisode = { kind: "retryTimer"; timerId: number; work: Work } | { kind: "reschedule"; taskId: number; work: Work };

interface ScheduledAction {
  signature: string;
  description: string;
  /** set for timers, so a later isCanceled can be applied */
  timerId?: number;
}

interface Execution {
  /** unique across the hub: results addressed to an older execution are dropped */
  generation: number;
  history: HistoryEvent[];
  nextId: number;
  scheduled: ScheduledAction[];
  timers: Map<number, HostTimer>;
  lastTimestamp: number;
}

interface ParentLink {
  parent: Instance;
  generation: number;
  work: SubOrchestrationWork;
}

interface Waiter {
  resolve: (status: InstanceStatus) => void;
  reject: (err: Error) => void;
}

interface Instance {
  instanceId: string;
  name: string;
  status: RuntimeStatus;
  input: unknown;
  output: unknown;
  customStatus: unknown;
  createdTime: Date;
  lastUpdatedTime: Date;
  parent?: ParentLink;
  exec: Execution;
  inbox: InboxItem[];
  busy: boolean;
  waiters: Waiter[];
  metrics: InstanceMetrics;
}

interface HostTimer {
  cancel(): void;
}

/** FIFO limiter; a finishing task hands its slot straight to the next waiter so the bound holds. */
class ConcurrencyLimiter {
  private active = 0;
  private readonly waiting: Array<() => void> = [];
  private readonly inFlight = new Set<Promise<unknown>>();

  constructor(private readonly max: number) {}

  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.active < this.max) this.active++;
    else await new Promise<void>((resolve) => this.waiting.push(resolve));
    const running = task();
    this.inFlight.add(running);
    try {
      return await running;
    } finally {
      this.inFlight.delete(running);
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    }
  }

  /** releases queued tasks (they check the stopped flag and return) and reports running ones */
  release(): Promise<unknown>[] {
    const running = [...this.inFlight];
    for (const next of this.waiting.splice(0)) next();
    return running;
  }
}

const COMPOUND = new Set<number>([ActionType.WhenAll, ActionType.WhenAny]);
const MAX_TIMEOUT_MS = 2_147_483_647;
const CUSTOM_STATUS_LIMIT_BYTES = 16 * 1024;
const LARGE_MESSAGE_BYTES = 45 * 1024;

function describeAction(action: WireAction): string {
  const type = actionTypeName(action.actionType);
  if (action.functionName) return `${type} '${action.functionName}'`;
  if (action.externalEventName) return `${type} '${action.externalEventName}'`;
  if (action.fireAt instanceof Date) return `${type} ${action.fireAt.toISOString()}`;
  return type;
}

function fireAtOf(action: WireAction): Date {
  const value: unknown = action.fireAt;
  const date = value instanceof Date ? value : typeof value === "string" ? new Date(value) : undefined;
  if (!date || Number.isNaN(date.getTime())) throw new Error(`local host: CreateTimer without a valid fireAt`);
  return date;
}

function signatureOf(action: WireAction): string {
  return JSON.stringify([
    action.actionType,
    action.functionName ?? null,
    action.instanceId ?? null,
    action.externalEventName ?? null,
    action.actionType === ActionType.CreateTimer ? fireAtOf(action).toISOString() : null,
    action.input === undefined ? null : action.input,
    action.retryOptions ?? null,
  ]);
}

/** .NET RetryInterceptor: first * coefficient^(attempt-1), capped by the max interval. */
function retryDelayMs(retry: WireRetryOptions, failedAttempt: number): number {
  const coefficient = retry.backoffCoefficient ?? 1;
  const delay = retry.firstRetryIntervalInMilliseconds * Math.pow(coefficient, failedAttempt - 1);
  return Math.min(delay, retry.maxRetryIntervalInMilliseconds ?? Number.POSITIVE_INFINITY);
}

export class TaskHub {
  private readonly instances = new Map<string, Instance>();
  private readonly activities: ConcurrencyLimiter;
  private readonly allTimers = new Set<HostTimer>();
  private generationCounter = 0;
  private stopped = false;

  constructor(
    private readonly options: EngineOptions,
    private readonly contexts: ContextFactory,
  ) {
    this.activities = new ConcurrencyLimiter(Math.max(1, options.maxConcurrentActivities));
  }

  // ------------------------------------------------------------------ public operations

  startNew(name: string, options: { instanceId?: string; input?: unknown } = {}): string {
    this.assertRunning();
    const fn = getFunction(name);
    if (!fn || !isOrchestration(fn)) throw new UnknownFunctionError(name, "orchestrator");
    const instanceId = options.instanceId ?? randomUUID().replace(/-/g, "");
    if (!instanceId) throw new Error("instanceId must not be empty");
    const existing = this.instances.get(instanceId);
    // like the extension's default OverridableExistingInstanceStates (NonRunningStates)
    if (existing && !isTerminal(existing.status)) throw new InstanceAlreadyExistsError(instanceId, existing.status);
    this.createInstance(fn.metadata.name, instanceId, roundTrip(options.input));
    return instanceId;
  }

  getStatus(instanceId: string): InstanceStatus | undefined {
    const inst = this.instances.get(instanceId);
    return inst ? this.statusOf(inst) : undefined;
  }

  listInstances(): InstanceStatus[] {
    return [...this.instances.values()].map((inst) => this.statusOf(inst));
  }

  metrics(instanceId: string): InstanceMetrics {
    const inst = this.require(instanceId);
    return { ...inst.metrics };
  }

  waitForCompletion(instanceId: string, timeoutMs?: number): Promise<InstanceStatus> {
    const inst = this.require(instanceId);
    if (isTerminal(inst.status)) return Promise.resolve(this.statusOf(inst));
    if (this.stopped) return Promise.reject(new Error("local host is stopped"));
    return new Promise<InstanceStatus>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const waiter: Waiter = {
        resolve: (status) => {
          if (timer) clearTimeout(timer);
          resolve(status);
        },
        reject: (err) => {
          if (timer) clearTimeout(timer);
          reject(err);
        },
      };
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          const i = inst.waiters.indexOf(waiter);
          if (i >= 0) inst.waiters.splice(i, 1);
          reject(new Error(`Timed out after ${timeoutMs} ms waiting for '${instanceId}' (status ${inst.status})`));
        }, timeoutMs);
      }
      inst.waiters.push(waiter);
    });
  }

  raiseEvent(instanceId: string, eventName: string, data?: unknown): void {
    this.assertRunning();
    const inst = this.require(instanceId);
    if (isTerminal(inst.status)) {
      throw new Error(`Cannot raise event '${eventName}': instance '${instanceId}' is ${inst.status}`);
    }
    this.post(inst, {
      kind: "event",
      event: historyEvent(EventType.EventRaised, { Name: eventName, Input: toJson(roundTrip(data)) }),
    });
  }

  /** @returns false when the instance had already finished (the extension answers 410 then) */
  terminate(instanceId: string, reason: string): boolean {
    const inst = this.require(instanceId);
    if (isTerminal(inst.status)) return false;
    this.finish(inst, "Terminated", reason);
    return true;
  }

  purge(instanceId: string): boolean {
    const inst = this.instances.get(instanceId);
    if (!inst) return false;
    if (!isTerminal(inst.status)) throw new InstanceNotTerminalError(instanceId, inst.status);
    this.instances.delete(instanceId);
    return true;
  }

  /** Cancels timers, drops queued activities, waits (bounded) for running ones. */
  async stop(boundMs: number): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const timer of [...this.allTimers]) timer.cancel();
    this.allTimers.clear();
    for (const inst of this.instances.values()) {
      for (const waiter of inst.waiters.splice(0)) waiter.reject(new Error("local host stopped"));
    }
    const running = this.activities.release();
    if (running.length === 0) return;
    let bound: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled(running),
      new Promise<void>((resolve) => {
        bound = setTimeout(resolve, boundMs);
      }),
    ]);
    if (bound) clearTimeout(bound);
  }

  // ------------------------------------------------------------------ instances

  private createInstance(name: string, instanceId: string, input: unknown, parent?: ParentLink): Instance {
    const now = new Date();
    const inst: Instance = {
      instanceId,
      name,
      status: "Pending",
      input,
      output: null,
      customStatus: null,
      createdTime: now,
      lastUpdatedTime: now,
      parent,
      exec: this.newExecution(),
      inbox: [],
      busy: false,
      waiters: [],
      metrics: {
        executions: 1,
        episodes: 0,
        maxHistoryLength: 0,
        totalHistoryEvents: 0,
        orchestratorMs: 0,
        activitiesRun: 0,
        maxActivityPayloadBytes: 0,
      },
    };
    this.instances.set(instanceId, inst);
    this.post(inst, { kind: "event", event: historyEvent(EventType.ExecutionStarted, { Name: name, Input: toJson(input) }, now) });
    this.options.log(`[host] ${instanceId}: created ${name}${parent ? ` (child of ${parent.parent.instanceId})` : ""}`);
    return inst;
  }

  private newExecution(): Execution {
    return {
      generation: ++this.generationCounter,
      history: [],
      nextId: 0,
      scheduled: [],
      timers: new Map(),
      lastTimestamp: 0,
    };
  }

  private require(instanceId: string): Instance {
    const inst = this.instances.get(instanceId);
    if (!inst) throw new InstanceNotFoundError(instanceId);
    return inst;
  }

  private assertRunning(): void {
    if (this.stopped) throw new Error("local host is stopped");
  }

  private statusOf(inst: Instance): InstanceStatus {
    return {
      name: inst.name,
      instanceId: inst.instanceId,
      runtimeStatus: inst.status,
      input: roundTrip(inst.input) ?? null,
      output: roundTrip(inst.output) ?? null,
      customStatus: roundTrip(inst.customStatus) ?? null,
      createdTime: inst.createdTime.toISOString(),
      lastUpdatedTime: inst.lastUpdatedTime.toISOString(),
    };
  }

  private post(inst: Instance, item: InboxItem): void {
    if (isTerminal(inst.status)) return;
    inst.inbox.push(item);
    this.kick(inst);
  }

  private kick(inst: Instance): void {
    if (inst.busy || this.stopped || isTerminal(inst.status) || inst.inbox.length === 0) return;
    inst.busy = true;
    setImmediate(() => {
      this.drain(inst).catch((err: unknown) => this.options.log(`[host] ${inst.instanceId}: drain crashed: ${errorDetails(err)}`));
    });
  }

  private async drain(inst: Instance): Promise<void> {
    try {
      while (!this.stopped && !isTerminal(inst.status) && inst.inbox.length > 0) {
        try {
          await this.runEpisode(inst);
        } catch (err) {
          // a host bug or an unexpected library shape: the instance fails, the process lives on
          this.finish(inst, "Failed", `local host error in '${inst.name}': ${errorDetails(err)}`);
        }
        // let other instances and I/O run between episodes
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
    } finally {
      inst.busy = false;
    }
    this.kick(inst);
  }

  private finish(inst: Instance, status: RuntimeStatus, output: unknown): void {
    if (isTerminal(inst.status)) return;
    inst.status = status;
    inst.output = output ?? null;
    inst.lastUpdatedTime = new Date();
    inst.inbox = [];
    this.cancelExecutionTimers(inst.exec);
    // finished instances keep their status and metrics, not their replay state
    inst.exec.history = [];
    inst.exec.scheduled = [];
    this.options.log(`[host] ${inst.instanceId}: ${status}${status === "Completed" ? "" : `: ${safeJson(output)}`}`);
    const snapshot = this.statusOf(inst);
    for (const waiter of inst.waiters.splice(0)) waiter.resolve(snapshot);
    if (inst.parent) {
      const { parent, generation, work } = inst.parent;
      const outcome: Outcome =
        status === "Completed"
          ? { ok: true, result: inst.output }
          : {
              ok: false,
              reason: status === "Failed" ? String(output) : `Orchestration '${inst.instanceId}' was terminated: ${String(output)}`,
              details: "",
            };
      this.deliver(parent, generation, work, outcome);
    }
  }

  // ------------------------------------------------------------------ episodes

  private takeBatch(inst: Instance): { events: HistoryEvent[]; post: PostEpisode[] } {
    const exec = inst.exec;
    const events: HistoryEvent[] = [];
    const post: PostEpisode[] = [];
    let headOnly = true; // id-allocating items may only precede events that can resume user code
    while (inst.inbox.length > 0 && events.length < this.options.maxEventsPerEpisode) {
      const item = inst.inbox[0];
      const allocates = item.kind === "retryFailed" || (item.kind === "retryTimer" && !item.exhausted);
      if (allocates && !headOnly) break;
      inst.inbox.shift();
      switch (item.kind) {
        case "event":
          events.push(item.event);
          headOnly = false;
          break;
        case "retryFailed":
          events.push(item.event);
          post.push({ kind: "retryTimer", timerId: exec.nextId++, work: item.work });
          break;
        case "retryTimer":
          events.push(historyEvent(EventType.TimerFired, { TimerId: item.timerId, FireAt: item.fireAt }));
          if (item.exhausted) headOnly = false;
          else post.push({ kind: "reschedule", taskId: exec.nextId++, work: item.work });
          break;
      }
    }
    return { events, post };
  }

  private append(inst: Instance, ...events: HistoryEvent[]): void {
    inst.exec.history.push(...events);
    inst.metrics.totalHistoryEvents += events.length;
    inst.metrics.maxHistoryLength = Math.max(inst.metrics.maxHistoryLength, inst.exec.history.length);
  }

  private async runEpisode(inst: Instance): Promise<void> {
    const exec = inst.exec;
    const fn = getFunction(inst.name);
    if (!fn) throw new UnknownFunctionError(inst.name, "orchestrator");
    const { events, post } = this.takeBatch(inst);

    for (const event of exec.history) event.IsPlayed = true;
    const timestamp = Math.max(Date.now(), exec.lastTimestamp);
    exec.lastTimestamp = timestamp;
    this.append(inst, historyEvent(EventType.OrchestratorStarted, {}, new Date(timestamp)), ...events);
    inst.metrics.episodes++;
    if (inst.status === "Pending" || inst.status === "ContinuedAsNew") inst.status = "Running";

    const context = this.contexts.create(fn);
    const binding = {
      history: exec.history,
      input: inst.input,
      instanceId: inst.instanceId,
      isReplaying: false,
      parentInstanceId: inst.parent?.parent.instanceId,
      upperSchemaVersion: 1, // V2, plus the V3 upgrade field, as the extension sends
      upperSchemaVersionNew: 2,
      longRunningTimerIntervalDuration: "3.00:00:00",
      // no long-timer splitting locally: the chained no-op timers would only add ids, not behaviour
      maximumShortTimerDuration: "3650.00:00:00",
      defaultHttpAsyncRequestSleepTimeMillseconds: 30000,
    };

    let returned: unknown;
    let failure: { message: string; customStatus?: unknown } | undefined;
    try {
      // a JSON copy, like the worker's: the library mutates the binding (Timestamp -> Date)
      const scope = {
        report: (reason: unknown) =>
          this.finish(inst, "Failed", `Orchestrator function '${inst.name}' failed: unhandled rejection: ${errorMessage(reason)}`),
      };
      const copy: unknown = JSON.parse(JSON.stringify(binding));
      const started = performance.now();
      try {
        returned = await runInScope(scope, () => fn.callback(copy, context));
      } finally {
        inst.metrics.orchestratorMs += performance.now() - started;
      }
    } catch (err) {
      failure = extractOrchestratorFailure(err);
    }
    // terminated, continued or stopped while the callback ran: its result is moot
    if (inst.exec !== exec || isTerminal(inst.status) || this.stopped) return;
    inst.lastUpdatedTime = new Date();

    if (failure) {
      if (failure.customStatus !== undefined) inst.customStatus = roundTrip(failure.customStatus);
      this.append(inst, historyEvent(EventType.OrchestratorCompleted));
      this.finish(inst, "Failed", `Orchestrator function '${inst.name}' failed: ${failure.message}`);
      return;
    }

    const state = parseOrchestratorState(returned);
    inst.customStatus = state.customStatus === undefined ? null : roundTrip(state.customStatus);
    const statusBytes = jsonSize(inst.customStatus);
    if (statusBytes > CUSTOM_STATUS_LIMIT_BYTES) {
      this.options.log(`[host] ${inst.instanceId}: customStatus is ${statusBytes} bytes; Azure limits it to 16 KB`);
    }

    const { actions, reused } = this.flatten(state.actions);
    if (reused && this.options.compoundTaskReuse === "fail") {
      this.finish(
        inst,
        "Failed",
        `Orchestrator function '${inst.name}' re-yielded an already scheduled task (${describeAction(reused)}) inside a new ` +
          `Task.any/Task.all. The Durable extension's out-of-process protocol schedules such a task again and its task ids ` +
          `drift from the library's, so results land on the wrong tasks in Azure (Azure/azure-functions-durable-js#574). ` +
          `Yield each scheduled task in at most one compound task (e.g. bounded parallelism via per-lane sub-orchestrations ` +
          `or Task.all batches), or start the local host with compoundTaskReuse: "schedule-once" to run it anyway.`,
      );
      return;
    }

    const continueAsNew = actions.find((a) => a.actionType === ActionType.ContinueAsNew);
    const schedulable = actions.filter((a) => a.actionType !== ActionType.ContinueAsNew);

    const drift = this.checkDeterminism(exec, schedulable);
    if (drift) {
      this.finish(inst, "Failed", `Non-deterministic workflow detected in '${inst.name}': ${drift}`);
      return;
    }
    this.applyCancellations(inst, schedulable);

    if (continueAsNew) {
      this.append(inst, historyEvent(EventType.OrchestratorCompleted));
      this.continueAsNew(inst, decodeProcessedInput(continueAsNew.input));
      return;
    }
    if (state.isDone) {
      this.append(inst, historyEvent(EventType.OrchestratorCompleted));
      this.finish(inst, "Completed", roundTrip(state.output) ?? null);
      return;
    }

    for (const item of post) this.runPostEpisode(inst, item, timestamp);
    for (let i = exec.scheduled.length; i < schedulable.length; i++) {
      const failureText = this.schedule(inst, schedulable[i]);
      if (failureText) {
        this.finish(inst, "Failed", failureText);
        return;
      }
    }
    this.append(inst, historyEvent(EventType.OrchestratorCompleted));
    this.checkSequence(inst, context);
  }

  /** Flattens compound actions; reports a task that a compound re-includes (see CompoundTaskReusePolicy). */
  private flatten(actions: WireAction[]): { actions: WireAction[]; reused?: WireAction } {
    const seen = new Set<WireAction>();
    const flat: WireAction[] = [];
    let reused: WireAction | undefined;
    const visit = (action: WireAction): void => {
      if (COMPOUND.has(action.actionType)) {
        for (const child of action.compoundActions ?? []) visit(child);
        return;
      }
      if (seen.has(action)) {
        reused ??= action;
        return;
      }
      seen.add(action);
      flat.push(action);
    };
    actions.forEach(visit);
    return { actions: flat, reused };
  }

  private checkDeterminism(exec: Execution, actions: WireAction[]): string | undefined {
    for (let i = 0; i < exec.scheduled.length; i++) {
      const before = exec.scheduled[i];
      const now = actions[i];
      if (!now) {
        return `action #${i} (${before.description}) was scheduled in an earlier episode but is missing on replay`;
      }
      if (signatureOf(now) !== before.signature) {
        return `action #${i} was ${before.description} in an earlier episode but is ${describeAction(now)} on replay`;
      }
    }
    return undefined;
  }

  /** TimerTask.cancel() only flags the action; the extension then drops the timer. */
  private applyCancellations(inst: Instance, actions: WireAction[]): void {
    inst.exec.scheduled.forEach((scheduled, i) => {
      if (scheduled.timerId !== undefined && actions[i]?.isCanceled) {
        const timer = inst.exec.timers.get(scheduled.timerId);
        if (timer) timer.cancel();
        const timerId = scheduled.timerId;
        inst.inbox = inst.inbox.filter(
          (item) => !(item.kind === "event" && item.event.EventType === EventType.TimerFired && item.event.TimerId === timerId),
        );
      }
    });
  }

  private continueAsNew(inst: Instance, input: unknown): void {
    // Events that have not reached history yet are still in the queue for the next execution;
    // stale completions of the old execution are not.
    const carried = inst.inbox.filter((item) => item.kind === "event" && item.event.EventType === EventType.EventRaised);
    this.cancelExecutionTimers(inst.exec);
    inst.exec = this.newExecution();
    inst.input = roundTrip(input) ?? null;
    inst.status = "ContinuedAsNew";
    inst.metrics.executions++;
    inst.lastUpdatedTime = new Date();
    inst.inbox = [
      { kind: "event", event: historyEvent(EventType.ExecutionStarted, { Name: inst.name, Input: toJson(inst.input) }) },
      ...carried,
    ];
    this.options.log(`[host] ${inst.instanceId}: continued as new (execution ${inst.metrics.executions})`);
  }

  private checkSequence(inst: Instance, context: unknown): void {
    // private field of the library's executor; a cheap guard against id drift (not permutations)
    const df = (context as { df?: { taskOrchestratorExecutor?: { sequenceNumber?: unknown } } }).df;
    const librarySequence = df?.taskOrchestratorExecutor?.sequenceNumber;
    if (typeof librarySequence === "number" && librarySequence !== inst.exec.nextId) {
      this.finish(
        inst,
        "Failed",
        `local host task-id drift in '${inst.name}': library sequence ${librarySequence}, host ${inst.exec.nextId}`,
      );
    }
  }

  // ------------------------------------------------------------------ scheduling

  /** @returns a failure message when the action cannot be run locally */
  private schedule(inst: Instance, action: WireAction): string | undefined {
    const exec = inst.exec;
    const record: ScheduledAction = { signature: signatureOf(action), description: describeAction(action) };
    switch (action.actionType) {
      case ActionType.CallActivity:
      case ActionType.CallActivityWithRetry: {
        const retry = action.actionType === ActionType.CallActivityWithRetry ? retryOptionsOf(action) : undefined;
        if (action.actionType === ActionType.CallActivityWithRetry && !retry) return `invalid retryOptions on ${record.description}`;
        const taskId = exec.nextId++;
        const input = roundTrip(decodeProcessedInput(action.input));
        const name = String(action.functionName);
        this.append(inst, historyEvent(EventType.TaskScheduled, { EventId: taskId, Name: name, Input: toJson(input) }));
        exec.scheduled.push(record);
        this.runActivity(inst, { kind: "activity", name, input, taskId, attempt: 1, retry });
        return undefined;
      }
      case ActionType.CallSubOrchestrator:
      case ActionType.CallSubOrchestratorWithRetry: {
        const retry = action.actionType === ActionType.CallSubOrchestratorWithRetry ? retryOptionsOf(action) : undefined;
        if (action.actionType === ActionType.CallSubOrchestratorWithRetry && !retry) return `invalid retryOptions on ${record.description}`;
        const taskId = exec.nextId++;
        const name = String(action.functionName);
        const childId = action.instanceId || `${inst.instanceId}:${taskId}`;
        const input = roundTrip(action.input);
        this.append(
          inst,
          historyEvent(EventType.SubOrchestrationInstanceCreated, { EventId: taskId, Name: name, InstanceId: childId, Input: toJson(input) }),
        );
        exec.scheduled.push(record);
        this.startChild(inst, { kind: "subOrchestration", name, input, childId, taskId, attempt: 1, retry });
        return undefined;
      }
      case ActionType.CreateTimer: {
        const taskId = exec.nextId++;
        const fireAt = fireAtOf(action);
        const fireAtIso = fireAt.toISOString();
        this.append(inst, historyEvent(EventType.TimerCreated, { EventId: taskId, FireAt: fireAtIso }));
        exec.scheduled.push({ ...record, timerId: taskId });
        if (!action.isCanceled) {
          this.startTimer(inst, taskId, fireAt, () => ({
            kind: "event",
            event: historyEvent(EventType.TimerFired, { TimerId: taskId, FireAt: fireAtIso }),
          }));
        }
        return undefined;
      }
      case ActionType.WaitForExternalEvent:
        // matched by name, consumes no task id
        exec.scheduled.push(record);
        return undefined;
      default:
        return `Orchestrator function '${inst.name}' used ${record.description}, which the local host does not support (entities, callHttp and locks are not emulated)`;
    }
  }

  private runPostEpisode(inst: Instance, item: PostEpisode, episodeTime: number): void {
    const work = item.work;
    if (item.kind === "retryTimer") {
      const retry = work.retry as WireRetryOptions;
      const failedAttempt = work.attempt;
      const fireAt = new Date(episodeTime + retryDelayMs(retry, failedAttempt));
      const fireAtIso = fireAt.toISOString();
      this.append(inst, historyEvent(EventType.TimerCreated, { EventId: item.timerId, FireAt: fireAtIso }));
      this.startTimer(inst, item.timerId, fireAt, () => ({
        kind: "retryTimer",
        timerId: item.timerId,
        fireAt: fireAtIso,
        work,
        exhausted: failedAttempt >= retry.maxNumberOfAttempts,
      }));
      return;
    }
    work.attempt++;
    work.taskId = item.taskId;
    if (work.kind === "activity") {
      this.append(inst, historyEvent(EventType.TaskScheduled, { EventId: work.taskId, Name: work.name, Input: toJson(work.input) }));
      this.runActivity(inst, work);
    } else {
      this.append(
        inst,
        historyEvent(EventType.SubOrchestrationInstanceCreated, {
          EventId: work.taskId,
          Name: work.name,
          InstanceId: work.childId,
          Input: toJson(work.input),
        }),
      );
      this.startChild(inst, work);
    }
  }

  /** Routes a finished attempt back into the owning execution's inbox (if it is still current). */
  private deliver(inst: Instance, generation: number, work: Work, outcome: Outcome): void {
    if (this.stopped || inst.exec.generation !== generation || isTerminal(inst.status)) return;
    const isActivityWork = work.kind === "activity";
    if (outcome.ok) {
      const type = isActivityWork ? EventType.TaskCompleted : EventType.SubOrchestrationInstanceCompleted;
      this.post(inst, { kind: "event", event: historyEvent(type, { TaskScheduledId: work.taskId, Result: toJson(outcome.result) }) });
      return;
    }
    const type = isActivityWork ? EventType.TaskFailed : EventType.SubOrchestrationInstanceFailed;
    const event = historyEvent(type, { TaskScheduledId: work.taskId, Reason: outcome.reason, Details: outcome.details });
    this.post(inst, work.retry ? { kind: "retryFailed", event, work } : { kind: "event", event });
  }

  private runActivity(inst: Instance, work: ActivityWork): void {
    const generation = inst.exec.generation;
    const attempt: ActivityWork = { ...work };
    const fn = getFunction(work.name);
    if (!fn || !isActivity(fn)) {
      this.deliver(inst, generation, attempt, {
        ok: false,
        reason: `The function '${work.name}' doesn't exist, is disabled, or is not an activity or orchestrator function.`,
        details: "",
      });
      return;
    }
    this.activities
      .run(async (): Promise<Outcome | undefined> => {
        // queued behind the concurrency bound while the instance ended: skip it
        if (this.stopped || inst.exec.generation !== generation || isTerminal(inst.status)) return undefined;
        return this.invokeActivity(inst, fn, attempt);
      })
      .then(
        (outcome) => {
          if (outcome) this.deliver(inst, generation, attempt, outcome);
        },
        (err: unknown) =>
          this.deliver(inst, generation, attempt, {
            ok: false,
            reason: `Activity function '${work.name}' failed: ${errorMessage(err)}`,
            details: errorDetails(err),
          }),
      );
  }

  private async invokeActivity(inst: Instance, fn: RegisteredFunction, work: ActivityWork): Promise<Outcome> {
    inst.metrics.activitiesRun++;
    // a floating rejection inside the invocation fails the attempt while it is still running
    let failAttempt: (reason: unknown) => void = () => undefined;
    const floating = new Promise<never>((_, reject) => {
      failAttempt = reject;
    });
    floating.catch(() => undefined);
    const scope = {
      report: (reason: unknown) => {
        this.options.log(`[${work.name}] unhandled rejection in ${inst.instanceId}: ${errorDetails(reason)}`);
        failAttempt(reason);
      },
    };
    try {
      const input = roundTrip(work.input);
      this.recordPayload(inst, work, "input", jsonSize(input));
      const context = this.contexts.create(fn);
      const result: unknown = await Promise.race([runInScope(scope, () => fn.callback(input, context)), floating]);
      const output = roundTrip(result);
      this.recordPayload(inst, work, "output", jsonSize(output));
      return { ok: true, result: output };
    } catch (err) {
      return {
        ok: false,
        reason: `Activity function '${work.name}' failed: ${errorMessage(err)}`,
        details: errorDetails(err),
      };
    }
  }

  private recordPayload(inst: Instance, work: ActivityWork, direction: "input" | "output", bytes: number): void {
    inst.metrics.maxActivityPayloadBytes = Math.max(inst.metrics.maxActivityPayloadBytes, bytes);
    if (bytes > LARGE_MESSAGE_BYTES) {
      this.options.log(
        `[host] ${inst.instanceId}: ${work.name} ${direction} is ${bytes} bytes; Azure Storage moves messages over 45 KB to blobs`,
      );
    }
  }

  private startChild(inst: Instance, work: SubOrchestrationWork): void {
    const generation = inst.exec.generation;
    const attempt: SubOrchestrationWork = { ...work };
    const fn = getFunction(work.name);
    const refusal = !fn || !isOrchestration(fn)
      ? `The function '${work.name}' doesn't exist, is disabled, or is not an activity or orchestrator function.`
      : undefined;
    const existing = this.instances.get(work.childId);
    const conflict = existing && !isTerminal(existing.status)
      ? new InstanceAlreadyExistsError(work.childId, existing.status).message
      : undefined;
    if (!fn || refusal || conflict) {
      this.deliver(inst, generation, attempt, { ok: false, reason: refusal ?? conflict ?? "", details: "" });
      return;
    }
    this.createInstance(fn.metadata.name, work.childId, roundTrip(work.input), { parent: inst, generation, work: attempt });
  }

  // ------------------------------------------------------------------ timers

  private startTimer(inst: Instance, timerId: number, fireAt: Date, item: () => InboxItem): void {
    const exec = inst.exec;
    const realDelay = Math.max(0, fireAt.getTime() - Date.now()) * this.options.timerScale;
    let handle: NodeJS.Timeout | undefined;
    const timer: HostTimer = {
      cancel: () => {
        if (handle) clearTimeout(handle);
        exec.timers.delete(timerId);
        this.allTimers.delete(timer);
      },
    };
    const deadline = Date.now() + realDelay;
    const arm = (): void => {
      const remaining = deadline - Date.now();
      if (remaining > MAX_TIMEOUT_MS) {
        handle = setTimeout(arm, MAX_TIMEOUT_MS);
        return;
      }
      handle = setTimeout(() => {
        timer.cancel();
        if (inst.exec === exec) this.post(inst, item());
      }, Math.max(0, remaining));
    };
    exec.timers.set(timerId, timer);
    this.allTimers.add(timer);
    arm();
  }

  private cancelExecutionTimers(exec: Execution): void {
    for (const timer of [...exec.timers.values()]) timer.cancel();
  }
}
