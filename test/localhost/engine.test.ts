import { afterAll, beforeAll, beforeEach, describe, expect, test } from "vitest";
import { InstanceAlreadyExistsError, type LocalDurableHost, UnknownFunctionError } from "../../localhost";
import { probes, resetProbes } from "./fixtures/probes";
import { startFixtureHost } from "./helpers";

const WAIT = { timeoutMs: 4000 };

describe("local durable host: orchestration engine", () => {
  let host: LocalDurableHost;

  beforeAll(async () => {
    host = await startFixtureHost();
  });
  afterAll(async () => {
    await host.stop();
  });
  beforeEach(() => resetProbes());

  test("startNew returns before the instance runs", async () => {
    const id = await host.startNew("fxEchoOrch", { instanceId: "async-start", input: "x" });
    expect(id).toBe("async-start");
    expect(host.getStatus(id)?.runtimeStatus).toBe("Pending");
    const done = await host.waitForCompletion(id, WAIT);
    expect(done).toMatchObject({ runtimeStatus: "Completed", output: "x", input: "x", name: "fxEchoOrch" });
  });

  test("fan-out/fan-in returns results in task order", async () => {
    const id = await host.startNew("fxFanOut", { input: { count: 20, ms: 5 } });
    const done = await host.waitForCompletion(id, WAIT);
    expect(done.output).toEqual(Array.from({ length: 20 }, (_, i) => `t${i}`));
    expect(probes.delay.max).toBeLessThanOrEqual(16); // default maxConcurrentActivities
    expect(host.metrics(id)).toMatchObject({ executions: 1, activitiesRun: 20 });
  });

  test("many instances run concurrently", async () => {
    const started = Date.now();
    const ids = await Promise.all(
      Array.from({ length: 10 }, (_, i) => host.startNew("fxFanOut", { instanceId: `many-${i}`, input: { count: 3, ms: 40 } })),
    );
    const results = await Promise.all(ids.map((id) => host.waitForCompletion(id, WAIT)));
    expect(results.every((r) => r.runtimeStatus === "Completed")).toBe(true);
    // 30 activities of 40 ms, 16 at a time: well below the serial 1200 ms
    expect(Date.now() - started).toBeLessThan(600);
    expect(probes.delay.max).toBe(16);
  });

  test("sliding window with Task.any: a completion starts the next activity while slower ones run", async () => {
    const slidingHost = await startFixtureHost({ compoundTaskReuse: "schedule-once" });
    try {
      const shorts = ["b", "c", "d", "e", "f", "g"].map((id) => ({ id, ms: 40 }));
      const items = [{ id: "a", ms: 300 }, ...shorts];
      const started = Date.now();
      const id = await slidingHost.startNew("fxSlidingWindow", { input: { items, window: 3 } });
      const done = await slidingHost.waitForCompletion(id, WAIT);
      const elapsed = Date.now() - started;
      expect(done.runtimeStatus).toBe("Completed");
      expect(probes.delay.max).toBe(3);
      // every short item started and finished while "a" was still running
      expect(probes.delay.finished.at(-1)).toBe("a");
      expect((done.output as string[]).at(-1)).toBe("a");
      expect([...(done.output as string[])].sort()).toEqual(["a", "b", "c", "d", "e", "f", "g"]);
      // ~max (300 ms), not waves (300+40+40) and far from the sum (540)
      expect(elapsed).toBeGreaterThanOrEqual(295);
      expect(elapsed).toBeLessThan(380);
      expect(done.customStatus).toEqual({ done: 7 });
    } finally {
      await slidingHost.stop();
    }
  });

  test("by default a task re-yielded in a new Task.any fails the instance (it misbehaves in Azure)", async () => {
    const items = [
      { id: "a", ms: 30 },
      { id: "b", ms: 5 },
      { id: "c", ms: 5 },
    ];
    const id = await host.startNew("fxSlidingWindow", { input: { items, window: 2 } });
    const done = await host.waitForCompletion(id, WAIT);
    expect(done.runtimeStatus).toBe("Failed");
    expect(done.output).toContain("re-yielded an already scheduled task (CallActivity 'fxDelay')");
    expect(done.output).toContain("Azure/azure-functions-durable-js#574");
  });

  test("lanes of sub-orchestrations keep N activities in flight, event driven (production-safe)", async () => {
    const items = [{ id: "a", ms: 250 }, ...["b", "c", "d", "e", "f", "g"].map((id) => ({ id, ms: 30 }))];
    const id = await host.startNew("fxLanes", { input: { items, window: 3 } });
    const done = await host.waitForCompletion(id, WAIT);
    expect(done.runtimeStatus).toBe("Completed");
    expect(done.output).toEqual([
      ["a", "d", "g"],
      ["b", "e"],
      ["c", "f"],
    ]);
    expect(probes.delay.max).toBe(3);
    // lanes 1 and 2 finished all their work while lane 0 was still in its first, slow activity
    const finished = probes.delay.finished;
    for (const other of ["b", "c", "e", "f"]) expect(finished.indexOf(other)).toBeLessThan(finished.indexOf("a"));
  });

  test("retries with concurrent failures keep results in order and follow the retry policy", async () => {
    const failTimes = [0, 1, 2, 3, 1, 0, 2, 3];
    const items = failTimes.map((n, i) => ({ key: `r${i}`, failTimes: n, value: `v${i}`, ms: (i * 7) % 5 }));
    const id = await host.startNew("fxRetryMany", { input: { items } });
    const done = await host.waitForCompletion(id, WAIT);
    expect(done.runtimeStatus).toBe("Completed");
    expect(done.output).toEqual(items.map((item) => item.value));
    failTimes.forEach((n, i) => expect(probes.flakyCalls.get(`r${i}`)).toBe(n + 1));
    expect(host.metrics(id).activitiesRun).toBe(failTimes.reduce((sum, n) => sum + n + 1, 0));
    // RetryOptions(5000, 4) with backoff 2, scaled by 0.001: ~5 ms, then ~10 ms, then ~20 ms
    const times = probes.flakyTimes.get("r3") ?? [];
    expect(times).toHaveLength(4);
    const gaps = times.slice(1).map((t, i) => t - times[i]);
    expect(gaps[0]).toBeGreaterThanOrEqual(4);
    expect(gaps[1]).toBeGreaterThanOrEqual(9);
    expect(gaps[2]).toBeGreaterThanOrEqual(19);
  });

  test("retry no-op ids stay aligned when failures interleave with other completions", async () => {
    const ids = await Promise.all(
      Array.from({ length: 12 }, (_, i) => host.startNew("fxRetryInterleaved", { input: { key: `k${i}`, ms: i % 3 } })),
    );
    const results = await Promise.all(ids.map((id) => host.waitForCompletion(id, WAIT)));
    results.forEach((done, i) => {
      expect(done.runtimeStatus, String(done.output)).toBe("Completed");
      expect(done.output).toEqual({
        first: expect.stringMatching(new RegExp(`^(Q-k${i}|F-k${i})$`)),
        more: [`A-k${i}`, `B-k${i}`],
        flakyResult: `F-k${i}`,
        last: `C-k${i}`,
      });
    });
  });

  test("retry exhaustion fails with the activity's message", async () => {
    const id = await host.startNew("fxRetryExhaust");
    const done = await host.waitForCompletion(id, WAIT);
    expect(done.runtimeStatus).toBe("Failed");
    expect(done.output).toContain("Orchestrator function 'fxRetryExhaust' failed: Activity function 'fxAlwaysFail' failed: boom exhausted");
    expect(host.metrics(id).activitiesRun).toBe(3);
  });

  test("a caught activity failure lets the orchestration continue", async () => {
    const id = await host.startNew("fxCatch");
    const done = await host.waitForCompletion(id, WAIT);
    expect(done.runtimeStatus).toBe("Completed");
    expect(done.output).toMatchObject({ caught: true, after: "after" });
    expect((done.output as { message: string }).message).toContain("Activity function 'fxAlwaysFail' failed: boom caught");
  });

  test("an orchestrator exception fails the instance with the real error and keeps customStatus", async () => {
    const id = await host.startNew("fxThrows");
    const done = await host.waitForCompletion(id, WAIT);
    expect(done).toMatchObject({
      runtimeStatus: "Failed",
      output: "Orchestrator function 'fxThrows' failed: orchestrator exploded",
      customStatus: { stage: "before-throw" },
    });
  });

  test("a floating promise rejection in an activity fails that attempt, not the process", async () => {
    // the test runner treats any unhandled rejection as an error; only the host's trap may see this one
    const others = process.listeners("unhandledRejection").filter((l) => l.name !== "onUnhandledRejection");
    for (const listener of others) process.off("unhandledRejection", listener);
    try {
      const id = await host.startNew("fxFloatingOrch");
      const done = await host.waitForCompletion(id, WAIT);
      expect(done.output).toBe("Activity function 'fxFloating' failed: floating failure");
    } finally {
      for (const listener of others) process.on("unhandledRejection", listener);
    }
  });

  test("sub-orchestrations: explicit and generated ids, retry, and failure propagation", async () => {
    const id = await host.startNew("fxParent", { instanceId: "parent1" });
    const done = await host.waitForCompletion(id, WAIT);
    expect(done.runtimeStatus, String(done.output)).toBe("Completed");
    const output = done.output as { explicit: unknown; implicit: unknown; retried: unknown; failure: string };
    expect(output.explicit).toEqual({ doubled: 4, parent: "parent1" });
    expect(output.implicit).toEqual({ doubled: 10, parent: "parent1" });
    expect(output.retried).toBe("child-ok");
    expect(output.failure).toContain("Orchestrator function 'fxThrows' failed: orchestrator exploded");
    expect(probes.flakyCalls.get("parent1-subretry")).toBe(3);
    expect(host.getStatus("parent1-child")?.runtimeStatus).toBe("Completed");
    expect(host.getStatus("parent1:1")?.output).toEqual({ doubled: 10, parent: "parent1" });
    expect(host.getStatus("parent1-thrower")?.runtimeStatus).toBe("Failed");
  });

  test("registered-function call style with .withRetry", async () => {
    const id = await host.startNew("fxRegisteredStyle", { instanceId: "registered" });
    const done = await host.waitForCompletion(id, WAIT);
    expect(done.output).toEqual({ value: "registered", child: { doubled: 42, parent: "registered" } });
    expect(probes.flakyCalls.get("registered")).toBe(3);
  });

  test("timer vs external event: the event wins and the timer is cancelled", async () => {
    const id = await host.startNew("fxRace", { input: { timeoutMs: 3_600_000 } });
    await host.raiseEvent(id, "approve", { ok: 1 });
    const done = await host.waitForCompletion(id, WAIT);
    expect(done.output).toEqual({ outcome: "approved", data: { ok: 1 } });
  });

  test("timer vs external event: the timer wins", async () => {
    const id = await host.startNew("fxRace", { input: { timeoutMs: 5000 } });
    const done = await host.waitForCompletion(id, WAIT);
    expect(done.output).toEqual({ outcome: "timeout" });
    await expect(host.raiseEvent(id, "approve", {})).rejects.toThrow(/Completed/);
  });

  test("an event raised before the orchestration waits for it is kept", async () => {
    const id = await host.startNew("fxEarlyEvent");
    await host.raiseEvent(id, "go", "early");
    const done = await host.waitForCompletion(id, WAIT);
    expect(done.output).toBe("early");
  });

  test("continueAsNew pages with bounded history and a fresh execution each time", async () => {
    const id = await host.startNew("fxPager", { input: { page: 0, pages: 10, perPage: 5, total: 0 } });
    const done = await host.waitForCompletion(id, WAIT);
    expect(done).toMatchObject({ runtimeStatus: "Completed", output: { total: 50, pages: 10 } });
    expect(done.customStatus).toEqual({ page: 9, total: 50 });
    expect(done.input).toEqual({ page: 9, pages: 10, perPage: 5, total: 45 });
    const metrics = host.metrics(id);
    expect(metrics.executions).toBe(10);
    expect(metrics.maxHistoryLength).toBeLessThanOrEqual(30);
    expect(metrics.totalHistoryEvents).toBeGreaterThan(metrics.maxHistoryLength * 5);
  });

  test("non-determinism is detected", async () => {
    const id = await host.startNew("fxNonDeterministic");
    const done = await host.waitForCompletion(id, WAIT);
    expect(done.runtimeStatus).toBe("Failed");
    expect(done.output).toMatch(/Non-deterministic workflow detected in 'fxNonDeterministic'/);
    expect(done.output).toContain("CallActivity 'fxEcho'");
    expect(done.output).toContain("CallActivity 'fxDelay'");
  });

  test("replays are deterministic: newGuid, currentUtcDateTime and isReplaying", async () => {
    const id = await host.startNew("fxReplayProbe");
    const done = await host.waitForCompletion(id, WAIT);
    expect(done.runtimeStatus).toBe("Completed");
    const runs = probes.replaySeen;
    expect(runs.length).toBe(5); // one episode per activity completion, plus the first
    for (let step = 0; step < 4; step++) {
      const atStep = runs.filter((run) => run.length > step).map((run) => run[step]);
      expect(new Set(atStep.map((s) => s.guid)).size).toBe(1);
      expect(new Set(atStep.map((s) => s.time)).size).toBe(1);
      // the first invocation to reach a step executes it live; later ones replay it
      expect(atStep.map((s) => s.replaying)).toEqual([false, ...atStep.slice(1).map(() => true)]);
    }
    expect(done.output).toEqual(runs.at(-1)?.map((s) => s.guid));
  });

  test("activity payload sizes are recorded", async () => {
    const id = await host.startNew("fxBigPayload");
    const done = await host.waitForCompletion(id, WAIT);
    expect(done.output).toBe(2048);
    const { maxActivityPayloadBytes } = host.metrics(id);
    expect(maxActivityPayloadBytes).toBe(2050); // JSON string with quotes
    expect(maxActivityPayloadBytes).toBeLessThan(45 * 1024);
  });

  test("terminate, duplicate start and restart of a finished id", async () => {
    const id = await host.startNew("fxWaitForever", { instanceId: "dup" });
    await expect(host.startNew("fxWaitForever", { instanceId: "dup" })).rejects.toBeInstanceOf(InstanceAlreadyExistsError);
    const waiting = host.waitForCompletion(id, WAIT);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(host.getStatus(id)).toMatchObject({ runtimeStatus: "Running", customStatus: "waiting" });
    await host.terminate(id, "enough");
    expect(await waiting).toMatchObject({ runtimeStatus: "Terminated", output: "enough" });
    await expect(host.raiseEvent(id, "never")).rejects.toThrow(/Terminated/);
    await host.terminate(id, "again"); // no-op once finished
    await host.startNew("fxEchoOrch", { instanceId: "dup", input: "second life" });
    expect((await host.waitForCompletion("dup", WAIT)).output).toBe("second life");
  });

  test("unknown orchestrator, unknown instance and wait timeout", async () => {
    await expect(host.startNew("fxNope")).rejects.toBeInstanceOf(UnknownFunctionError);
    await expect(host.startNew("fxEcho")).rejects.toBeInstanceOf(UnknownFunctionError); // an activity
    expect(host.getStatus("no-such-instance")).toBeUndefined();
    const id = await host.startNew("fxWaitForever");
    await expect(host.waitForCompletion(id, { timeoutMs: 30 })).rejects.toThrow(/Timed out/);
    await host.terminate(id, "cleanup");
  });

  test("timer and generic triggers", async () => {
    await host.invokeTimer("fxTimerStart");
    expect((await host.waitForCompletion("fx-nightly", WAIT)).output).toBe("from-timer");
    await host.invokeTimer("fxPlainTimer");
    expect(probes.plainTimerRuns).toBe(1);
    await expect(host.invokeTimer("fxEchoOrch")).rejects.toBeInstanceOf(UnknownFunctionError);

    const raceId = await host.startNew("fxRace", { input: { timeoutMs: 3_600_000 } });
    await host.invoke("fxEventGrid", {
      id: "1",
      subject: raceId,
      eventType: "fx.approved",
      data: { via: "eventGrid" },
      dataVersion: "1",
      eventTime: new Date().toISOString(),
      topic: "fx",
    });
    expect((await host.waitForCompletion(raceId, WAIT)).output).toEqual({ outcome: "approved", data: { via: "eventGrid" } });
    expect(await host.invoke("fxEcho", { a: new Date(0) })).toEqual({ a: "1970-01-01T00:00:00.000Z" });
  });

  test("listInstances reports every instance, children included", () => {
    const ids = host.listInstances().map((s) => s.instanceId);
    expect(ids).toEqual(expect.arrayContaining(["parent1", "parent1-child", "parent1:1", "dup"]));
  });
});

describe("a second host over the same (process-global) registrations", () => {
  let host: LocalDurableHost;

  beforeAll(async () => {
    host = await startFixtureHost({ maxEventsPerEpisode: 1, maxConcurrentActivities: 4 });
  });
  afterAll(async () => {
    await host.stop();
  });
  beforeEach(() => resetProbes());

  test("the global activity bound holds", async () => {
    const id = await host.startNew("fxFanOut", { input: { count: 12, ms: 10 } });
    await host.waitForCompletion(id, WAIT);
    expect(probes.delay.max).toBe(4);
  });

  test("one event per episode: episodes = completions + 1", async () => {
    const id = await host.startNew("fxFanOut", { input: { count: 6, ms: 1 } });
    await host.waitForCompletion(id, WAIT);
    expect(host.metrics(id).episodes).toBe(7);
  });

  test("events not yet in history survive continueAsNew", async () => {
    const id = await host.startNew("fxCarryOver", { input: { round: 0 } });
    await host.raiseEvent(id, "tick", "first");
    await host.raiseEvent(id, "tick", "second");
    const done = await host.waitForCompletion(id, WAIT);
    expect(done.output).toBe("second");
    expect(host.metrics(id).executions).toBe(2);
  });

  test("stop() waits for running activities only up to its bound", async () => {
    const quickStop = await startFixtureHost({ stopTimeoutMs: 20 });
    const id = await quickStop.startNew("fxFanOut", { input: { count: 2, ms: 300 } });
    await new Promise((resolve) => setTimeout(resolve, 30));
    expect(probes.delay.current).toBe(2);
    const started = Date.now();
    await quickStop.stop();
    expect(Date.now() - started).toBeLessThan(200);
    expect(quickStop.getStatus(id)?.runtimeStatus).toBe("Running");
    await expect(quickStop.startNew("fxEchoOrch")).rejects.toThrow(/stopped/);
  });
});
