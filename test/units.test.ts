import { describe, expect, it } from "vitest";
import { planBatches } from "../shared/backup/plan";
import { assignLanes, backupInstanceId } from "../shared/backup/orchestration";
import { itemObjectPath, mailboxKey, makeRunId, isRunId } from "../shared/store/naming";
import { redact, lineLogger } from "../shared/log";
import { Semaphore } from "../shared/util/semaphore";

describe("planBatches", () => {
  const items = (sizes: number[]) => sizes.map((size, i) => ({ itemId: `i${i}`, folderId: "f", size }));

  it("puts at most 20 items in a call and keeps order", () => {
    const b = planBatches(items(Array(45).fill(10)), 1e9);
    expect(b.map((x) => x.length)).toEqual([20, 20, 5]);
    expect(b.flat().map((i) => i.itemId)).toEqual(items(Array(45).fill(10)).map((i) => i.itemId));
  });

  it("respects the byte budget, and a huge item goes alone", () => {
    const b = planBatches(items([40, 40, 40, 500, 10, 10]), 100);
    expect(b.map((x) => x.map((i) => i.size))).toEqual([[40, 40], [40], [500], [10, 10]]);
  });

  it("handles no items and unknown sizes", () => {
    expect(planBatches([], 100)).toEqual([]);
    expect(planBatches([{ itemId: "a", folderId: "f" }], 100)).toHaveLength(1);
  });
});

describe("assignLanes", () => {
  it("deals every batch exactly once, balancing bytes", () => {
    const bytes = [90, 10, 10, 10, 10, 50, 40, 30, 20, 5];
    const lanes = assignLanes(bytes, 4);
    expect(lanes).toHaveLength(4);
    expect(lanes.flat().sort((a, b) => a - b)).toEqual(bytes.map((_, i) => i));
    for (const l of lanes) expect([...l].sort((a, b) => a - b)).toEqual(l);
  });

  it("never makes more lanes than batches, nor empty lanes", () => {
    expect(assignLanes([1, 2], 4)).toHaveLength(2);
    expect(assignLanes([], 4)).toEqual([]);
  });

  it("is deterministic (the orchestrator replays it)", () => {
    const bytes = Array.from({ length: 50 }, (_, i) => (i * 7919) % 1000);
    expect(assignLanes(bytes, 4)).toEqual(assignLanes(bytes, 4));
  });
});

describe("naming (backup format v1)", () => {
  it("keeps ids that differ only in letter case apart, in lowercase-only names", () => {
    const a = itemObjectPath("MBX:a@b", "AAMkAbc=", "ck1");
    const b = itemObjectPath("MBX:a@b", "AAMKABC=", "ck1");
    expect(a).not.toBe(b);
    expect(a.toLowerCase()).toBe(a);
    expect(a.toLowerCase()).not.toBe(b.toLowerCase());
  });

  it("maps each item version to its own object and never uses raw ids", () => {
    const id = "AAMkAGI2/+THIS/is+a=long/id".repeat(5);
    const v1 = itemObjectPath("MBX:a@b", id, "CQAAABYAAACQ2fKdhq8oSKEDSVrdi3lRAAEu4C+G");
    const v2 = itemObjectPath("MBX:a@b", id, "CQAAABYAAACQ2fKdhq8oSKEDSVrdi3lRAAD4pUax");
    expect(v1).not.toBe(v2);
    for (const p of [v1, v2]) {
      expect(p).toMatch(/^[a-z0-9@._\/-]+$/);
      for (const seg of p.split("/")) expect(seg.length).toBeLessThan(255);
    }
  });

  it("gives mailboxes readable, distinct, safe folder names", () => {
    expect(mailboxKey("MBX:e0643f21@a7809c93")).toMatch(/^mbx_e0643f21@a7809c93-[0-9a-f]{16}$/);
    expect(mailboxKey("Adele@Contoso.com")).not.toBe(mailboxKey("adele@contoso.com"));
    expect(mailboxKey("../../etc")).not.toContain("/");
    expect(backupInstanceId("MBX:x@y")).toMatch(/^backup-mbx_x@y-/);
  });

  it("makes sortable run ids", () => {
    const a = makeRunId(new Date("2026-11-23T02:00:00.123Z"), "ab12cd34");
    const b = makeRunId(new Date("2026-11-23T02:00:01Z"), "00000000");
    expect(a).toBe("20261123T020000123Z-ab12cd34");
    expect(isRunId(a)).toBe(true);
    expect([b, a].sort()).toEqual([a, b]);
    expect(isRunId("../x")).toBe(false);
  });
});

describe("redaction", () => {
  it("removes bearer tokens, JWTs, signed URL parameters and account keys", () => {
    const jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2dyYXBoIn0.c2lnbmF0dXJlLXBhcnQ";
    const line = redact(
      `Authorization: Bearer abc.def-ghi ${jwt} https://outlook.office.com/import?authtoken=SECRET1&x=1 https://a.blob.core.windows.net/c/b?sv=2020&sig=SECRET2 AccountKey=SECRET3;`,
    );
    for (const secret of ["abc.def-ghi", jwt, "SECRET1", "SECRET2", "SECRET3"]) expect(line).not.toContain(secret);
    expect(line).toContain("x=1");
  });

  it("applies to every logged line", () => {
    const lines: string[] = [];
    lineLogger((l) => lines.push(l), "debug").log("info", "calling", { auth: "Bearer tok123" });
    expect(lines[0]).not.toContain("tok123");
  });
});

describe("Semaphore", () => {
  it("bounds holders and serves waiters in order", async () => {
    const s = new Semaphore(2);
    let active = 0;
    let peak = 0;
    const order: number[] = [];
    await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        s.run(async () => {
          active++;
          peak = Math.max(peak, active);
          await new Promise((r) => setTimeout(r, 5));
          order.push(i);
          active--;
        }),
      ),
    );
    expect(peak).toBe(2);
    expect(order).toHaveLength(6);
  });

  it("lets an aborted waiter go without taking a slot", async () => {
    const s = new Semaphore(1);
    const release = await s.acquire();
    const ac = new AbortController();
    const waiting = s.acquire(ac.signal);
    ac.abort(new Error("stop"));
    await expect(waiting).rejects.toThrow("stop");
    release();
    expect(s.inUse).toBe(0);
  });
});
