/**
 * The ItemStore contract, run against both stores: LocalItemStore in a temp folder and BlobItemStore
 * on Azurite (started once per run by test/support/globalSetup.ts), a fresh container per suite.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, rm, stat, utimes, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Readable } from "node:stream";
import type { AccessToken, TokenCredential } from "@azure/identity";
import { ContainerClient } from "@azure/storage-blob";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { InvalidInputError, NotFoundError, StoreError } from "../shared/errors";
import type { ItemStore } from "../shared/store/itemStore";
import { itemObjectPath } from "../shared/store/naming";
import { BlobItemStore, DEFAULT_BLOCK_SIZE, DEFAULT_MAX_PARALLEL_BLOCKS } from "../shared/store/blobItemStore";
import { LocalItemStore } from "../shared/store/localItemStore";
import { openStore, parseStoreSpec } from "../shared/store/openStore";

const MiB = 1024 * 1024;
const sha = (b: Uint8Array | string) => createHash("sha256").update(b).digest("hex");
const EMPTY_SHA = sha("");

async function* chunks(...parts: (Uint8Array | string)[]): AsyncGenerator<Uint8Array> {
  for (const p of parts) yield typeof p === "string" ? Buffer.from(p) : p;
}

async function readAll(r: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

async function listAll(store: ItemStore, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const p of store.listObjects(prefix)) out.push(p);
  return out.sort();
}

function containerName(): string {
  return `t-${randomBytes(6).toString("hex")}`;
}

interface Fixture {
  store: ItemStore;
  /** Bytes the backend already holds for a put in progress at `path` (temp file, staged blocks). */
  received(path: string): Promise<number>;
  /** The most bytes a put may hold in memory beyond what the backend received (plus one source chunk). */
  memoryBound: number;
  /** Leftovers of failed puts that are not objects (local temp files). */
  leftovers(): Promise<string[]>;
  cleanup(): Promise<void>;
}

function contractSuite(name: string, make: () => Promise<Fixture>): void {
  describe(`ItemStore contract: ${name}`, () => {
    let fx: Fixture;
    let store: ItemStore;
    beforeAll(async () => {
      fx = await make();
      store = fx.store;
    });
    afterAll(async () => {
      await fx?.cleanup();
    });

    it("round-trips bytes with size and sha256", async () => {
      const data = randomBytes(300_000);
      const put = await store.putObject("rt/one.bin", chunks(data.subarray(0, 1000), data.subarray(1000)));
      expect(put).toEqual({ path: "rt/one.bin", size: data.length, sha256: sha(data), existed: false });
      expect(await readAll(await store.openObject("rt/one.bin"))).toEqual(data);
      expect(await store.statObject("rt/one.bin")).toEqual({ size: data.length });
    });

    it("streams a 40 MB object from a generator with bounded memory", async () => {
      const path = "big/forty.bin";
      const total = 40 * 1000 * 1000;
      const chunkSize = 256 * 1024;
      const seed = randomBytes(chunkSize);
      const hash = createHash("sha256");
      let yielded = 0;
      let maxAhead = 0;
      let probes = 0;
      let sawProgress = false;
      async function* source(): AsyncGenerator<Uint8Array> {
        for (let i = 0; yielded < total; i++) {
          // Before handing over more, check how far ahead of the backend the store has read.
          if (i % 8 === 0 && yielded > 0) {
            const received = await fx.received(path);
            probes++;
            if (received > 0) sawProgress = true;
            maxAhead = Math.max(maxAhead, yielded - received);
          }
          const n = Math.min(chunkSize, total - yielded);
          const c = Buffer.from(seed.subarray(0, n));
          c.writeUInt32BE(i, 0);
          hash.update(c);
          yielded += n;
          yield c;
        }
      }
      const put = await store.putObject(path, source(), { expectedSize: total });
      expect(put.size).toBe(total);
      expect(put.existed).toBe(false);
      expect(put.sha256).toBe(hash.digest("hex"));
      expect(probes).toBeGreaterThan(10);
      expect(sawProgress).toBe(true);
      // A store that buffered the object would be ~40 MB ahead; this one stays within its bound.
      expect(maxAhead).toBeLessThanOrEqual(fx.memoryBound + chunkSize);
      const back = createHash("sha256");
      let n = 0;
      for await (const c of await store.openObject(path)) {
        back.update(c as Buffer);
        n += (c as Buffer).length;
      }
      expect(n).toBe(total);
      expect(back.digest("hex")).toBe(put.sha256);
    });

    it("a body that errors midway leaves nothing visible and no temp leftovers", async () => {
      const boom = new Error("source broke");
      async function* source(): AsyncGenerator<Uint8Array> {
        for (let i = 0; i < 9; i++) yield randomBytes(MiB);
        throw boom;
      }
      await expect(store.putObject("broken/one.bin", source())).rejects.toBe(boom);
      expect(await store.statObject("broken/one.bin")).toBeUndefined();
      await expect(store.openObject("broken/one.bin")).rejects.toBeInstanceOf(NotFoundError);
      expect(await listAll(store, "")).not.toContain("broken/one.bin");
      expect(await listAll(store, "broken/")).toEqual([]);
      expect(await fx.leftovers()).toEqual([]);
    });

    it("an abort midway (even while the source waits) leaves nothing visible", async () => {
      const ac = new AbortController();
      let released = false;
      async function* source(): AsyncGenerator<Uint8Array> {
        try {
          for (let i = 0; i < 5; i++) yield randomBytes(MiB);
          ac.abort();
          await new Promise((r) => setTimeout(r, 300));
          yield randomBytes(MiB);
        } finally {
          released = true;
        }
      }
      const err = await store.putObject("aborted/one.bin", source(), { signal: ac.signal }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect((err as Error).name).toBe("AbortError");
      expect(await store.statObject("aborted/one.bin")).toBeUndefined();
      expect(await listAll(store, "aborted/")).toEqual([]);
      await new Promise((r) => setTimeout(r, 400));
      expect(released).toBe(true);
      expect(await fx.leftovers()).toEqual([]);
      // An already aborted signal fails before anything happens.
      await expect(store.putObject("aborted/two.bin", chunks("x"), { signal: AbortSignal.abort() })).rejects.toMatchObject({ name: "AbortError" });
    });

    it("expectedSize / expectedSha256 mismatch fails with IntegrityMismatch and stores nothing", async () => {
      const data = Buffer.from("twelve bytes");
      const cases = [{ expectedSize: 11 }, { expectedSha256: sha("something else") }, { expectedSize: 12, expectedSha256: "0".repeat(64) }];
      for (const [i, expectation] of cases.entries()) {
        const path = `mismatch/${i}.bin`;
        const err = await store.putObject(path, chunks(data), expectation).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(StoreError);
        expect(err).toMatchObject({ code: "IntegrityMismatch", kind: "storage" });
        expect(await store.statObject(path)).toBeUndefined();
      }
      expect(await listAll(store, "mismatch/")).toEqual([]);
      expect(await fx.leftovers()).toEqual([]);
      const ok = await store.putObject("mismatch/ok.bin", chunks(data), { expectedSize: 12, expectedSha256: sha(data) });
      expect(ok).toMatchObject({ size: 12, sha256: sha(data), existed: false });
    });

    it("a second put to the same path keeps the first, drains the body and reports existed", async () => {
      const first = await store.putObject("dup/v.bin", chunks("first version"));
      expect(first.existed).toBe(false);
      let drained = false;
      async function* second(): AsyncGenerator<Uint8Array> {
        yield Buffer.from("second ");
        yield Buffer.from("version, longer");
        drained = true;
      }
      const again = await store.putObject("dup/v.bin", second());
      expect(again).toEqual({ path: "dup/v.bin", size: first.size, sha256: first.sha256, existed: true });
      expect(drained).toBe(true);
      expect((await readAll(await store.openObject("dup/v.bin"))).toString()).toBe("first version");
    });

    it("two concurrent puts to one path: one stores, the other reports the winner's object", async () => {
      let arrived = 0;
      let open!: () => void;
      const bothIn = new Promise<void>((r) => (open = r));
      let aDone!: () => void;
      const aFinished = new Promise<void>((r) => (aDone = r));
      async function* body(text: string, waitForA: boolean): AsyncGenerator<Uint8Array> {
        // The first next() comes after the store's existence check: both puts are past it.
        if (++arrived === 2) open();
        await bothIn;
        yield Buffer.from(text.slice(0, 3));
        if (waitForA) await aFinished;
        yield Buffer.from(text.slice(3));
      }
      const a = store.putObject("race/v.bin", body("aaaaaaaa", false)).finally(() => aDone());
      const b = store.putObject("race/v.bin", body("bbbbbbbbbbbb", true));
      const [ra, rb] = await Promise.all([a, b]);
      expect(ra).toEqual({ path: "race/v.bin", size: 8, sha256: sha("aaaaaaaa"), existed: false });
      expect(rb).toEqual({ path: "race/v.bin", size: 8, sha256: sha("aaaaaaaa"), existed: true });
      expect((await readAll(await store.openObject("race/v.bin"))).toString()).toBe("aaaaaaaa");
      expect(await fx.leftovers()).toEqual([]);
    });

    it("ids that differ only in letter case stay two objects", async () => {
      const p1 = itemObjectPath("adele@contoso.com", "AAMkAbc=", "CQAAAA==");
      const p2 = itemObjectPath("adele@contoso.com", "AAMKABC=", "CQAAAA==");
      expect(p1).not.toBe(p2);
      expect(p1.toLowerCase()).not.toBe(p2.toLowerCase());
      const r1 = await store.putObject(p1, chunks("lower k"));
      const r2 = await store.putObject(p2, chunks("upper K"));
      expect(r1.existed).toBe(false);
      expect(r2.existed).toBe(false);
      expect((await readAll(await store.openObject(p1))).toString()).toBe("lower k");
      expect((await readAll(await store.openObject(p2))).toString()).toBe("upper K");
      const root = p1.split("/").slice(0, 3).join("/") + "/";
      expect(await listAll(store, root)).toEqual([p1, p2].sort());
    });

    it("rejects paths that could escape the root or are not portable", async () => {
      const bad = [
        "",
        "/abs.bin",
        "../up.bin",
        "a/../../up.bin",
        "a/./b.bin",
        "a//b.bin",
        "a/",
        "a\\b.bin",
        "..\\up.bin",
        "a\0b.bin",
        "C:/x.bin",
        "a b.bin",
        "é.bin",
        ".tmp/x.bin",
        "a/.hidden",
        "trailing.",
        "x".repeat(256),
        "con",
        `${"a/".repeat(600)}b`,
      ];
      for (const p of bad) {
        await expect(store.putObject(p, chunks("x")), JSON.stringify(p)).rejects.toBeInstanceOf(InvalidInputError);
        await expect(store.writeText(p, "x"), JSON.stringify(p)).rejects.toBeInstanceOf(InvalidInputError);
        await expect(store.readText(p), JSON.stringify(p)).rejects.toBeInstanceOf(InvalidInputError);
        await expect(store.openObject(p), JSON.stringify(p)).rejects.toBeInstanceOf(InvalidInputError);
        await expect(store.statObject(p), JSON.stringify(p)).rejects.toBeInstanceOf(InvalidInputError);
        await expect(store.deleteObject(p), JSON.stringify(p)).rejects.toBeInstanceOf(InvalidInputError);
      }
      for (const prefix of ["../", "/", "/abs/", "a/../", "a//", ".tmp/", "a\\"]) {
        await expect(listAll(store, prefix), JSON.stringify(prefix)).rejects.toBeInstanceOf(InvalidInputError);
      }
      // Every allowed character works.
      const odd = "ok/A-Za_z.0+9=@x.bin";
      await store.putObject(odd, chunks("fine"));
      expect(await store.readText(odd)).toBe("fine");
    });

    it("stores an empty object", async () => {
      const put = await store.putObject("empty/zero.bin", chunks());
      expect(put).toEqual({ path: "empty/zero.bin", size: 0, sha256: EMPTY_SHA, existed: false });
      expect(await store.statObject("empty/zero.bin")).toEqual({ size: 0 });
      expect((await readAll(await store.openObject("empty/zero.bin"))).length).toBe(0);
      const again = await store.putObject("empty/zero.bin", chunks("not empty"));
      expect(again).toEqual({ path: "empty/zero.bin", size: 0, sha256: EMPTY_SHA, existed: true });
      // Empty chunks in a body are fine too.
      const withEmpties = await store.putObject("empty/chunks.bin", chunks(new Uint8Array(0), "ab", new Uint8Array(0)));
      expect(withEmpties).toMatchObject({ size: 2, sha256: sha("ab") });
    });

    it("lists objects recursively below a prefix", async () => {
      await store.putObject("ls/a/b/c.bin", chunks("1"));
      await store.putObject("ls/a/d.bin", chunks("2"));
      await store.writeText("ls/e.json", "{}");
      await store.writeText("lsx/f.json", "{}");
      expect(await listAll(store, "ls/")).toEqual(["ls/a/b/c.bin", "ls/a/d.bin", "ls/e.json"]);
      expect(await listAll(store, "ls/a/")).toEqual(["ls/a/b/c.bin", "ls/a/d.bin"]);
      expect(await listAll(store, "ls/a/b/")).toEqual(["ls/a/b/c.bin"]);
      expect(await listAll(store, "nothing-here/")).toEqual([]);
      const all = await listAll(store, "");
      expect(all).toEqual(expect.arrayContaining(["ls/a/b/c.bin", "ls/a/d.bin", "ls/e.json", "lsx/f.json"]));
      expect(all.every((p) => !p.startsWith("."))).toBe(true);
      // A prefix that ends inside a name works like a blob prefix.
      expect(await listAll(store, "ls")).toEqual(["ls/a/b/c.bin", "ls/a/d.bin", "ls/e.json", "lsx/f.json"]);
    });

    it("writeText / readText: atomic documents that may be overwritten", async () => {
      expect(await store.readText("docs/state.json")).toBeUndefined();
      await store.writeText("docs/state.json", JSON.stringify({ v: 1 }));
      expect(await store.readText("docs/state.json")).toBe('{"v":1}');
      const text = "second, longer: ünïcødé ✓ 📬\n";
      await store.writeText("docs/state.json", text);
      expect(await store.readText("docs/state.json")).toBe(text);
      expect(await store.statObject("docs/state.json")).toEqual({ size: Buffer.byteLength(text) });
      await store.writeText("docs/empty.txt", "");
      expect(await store.readText("docs/empty.txt")).toBe("");
      expect(await fx.leftovers()).toEqual([]);
    });

    it("a put over a document written by writeText describes it (sha256 computed)", async () => {
      await store.writeText("docs/put-over.json", "[1,2,3]");
      const r = await store.putObject("docs/put-over.json", chunks("other"));
      expect(r).toEqual({ path: "docs/put-over.json", size: 7, sha256: sha("[1,2,3]"), existed: true });
    });

    it("NotFound on open; undefined on stat and readText; delete is idempotent", async () => {
      const err = await store.openObject("missing/none.bin").then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(NotFoundError);
      expect(err).toMatchObject({ code: "NotFound", kind: "storage" });
      expect(await store.statObject("missing/none.bin")).toBeUndefined();
      expect(await store.readText("missing/none.json")).toBeUndefined();
      await store.deleteObject("missing/none.bin");
      await store.putObject("del/x.bin", chunks("x"));
      await store.deleteObject("del/x.bin");
      expect(await store.statObject("del/x.bin")).toBeUndefined();
      expect(await listAll(store, "del/")).toEqual([]);
      // A deleted path can be written again (work files are).
      expect((await store.putObject("del/x.bin", chunks("y"))).existed).toBe(false);
    });
  });
}

async function localFixture(): Promise<Fixture> {
  const parent = await mkdtemp(join(tmpdir(), "mailvault-store-"));
  const root = join(parent, "root");
  const store = new LocalItemStore(root);
  const tempFiles = async () => readdir(join(root, ".tmp")).catch(() => [] as string[]);
  return {
    store,
    received: async () => {
      let n = 0;
      for (const f of await tempFiles()) n += (await stat(join(root, ".tmp", f)).catch(() => ({ size: 0 }))).size;
      return n;
    },
    memoryBound: 0, // each chunk is written before the next is read
    leftovers: async () => {
      // Nothing may appear next to the root either (no path escaped it).
      const outside = (await readdir(parent)).filter((f) => f !== "root");
      return [...(await tempFiles()), ...outside];
    },
    cleanup: () => rm(parent, { recursive: true, force: true }),
  };
}

async function blobFixture(): Promise<Fixture> {
  const store = BlobItemStore.fromConnectionString(inject("azuriteConnectionString"), containerName());
  expect(await store.ensureContainer()).toBe(true);
  expect(await store.ensureContainer()).toBe(false);
  return {
    store,
    received: async (path) => {
      try {
        const list = await store.container.getBlockBlobClient(path).getBlockList("uncommitted");
        return (list.uncommittedBlocks ?? []).reduce((n, b) => n + b.size, 0);
      } catch (e) {
        if ((e as { statusCode?: number }).statusCode === 404) return 0;
        throw e;
      }
    },
    memoryBound: (DEFAULT_MAX_PARALLEL_BLOCKS + 1) * DEFAULT_BLOCK_SIZE,
    leftovers: async () => [], // uncommitted blocks are invisible and dropped by the service
    cleanup: async () => {
      await store.container.deleteIfExists();
    },
  };
}

contractSuite("LocalItemStore (folder)", localFixture);
contractSuite("BlobItemStore (Azurite)", blobFixture);

describe("LocalItemStore specifics", () => {
  it("keeps temp files in .tmp inside the root and cleans up emptied folders on delete", async () => {
    const fx = await localFixture();
    try {
      await fx.store.putObject("a/b/c/d.bin", chunks("x"));
      await fx.store.writeText("a/keep.json", "{}");
      await fx.store.deleteObject("a/b/c/d.bin");
      const root = fx.store.location;
      expect((await readdir(join(root, "a"))).sort()).toEqual(["keep.json"]);
      expect(await readdir(join(root, ".tmp"))).toEqual([]);
    } finally {
      await fx.cleanup();
    }
  });

  it("a file where a folder must be is a PathConflict, not an 'existing' object", async () => {
    const fx = await localFixture();
    try {
      await fx.store.putObject("pc/a.bin", chunks("x"));
      await expect(fx.store.putObject("pc/a.bin/b.bin", chunks("y"))).rejects.toMatchObject({ code: "PathConflict", kind: "storage" });
      expect(await fx.leftovers()).toEqual([]);
    } finally {
      await fx.cleanup();
    }
  });

  it("removes stale temp files a crashed writer left behind, and never lists them", async () => {
    const fx = await localFixture();
    try {
      const root = fx.store.location;
      await mkdir(join(root, ".tmp"), { recursive: true });
      await writeFile(join(root, ".tmp", "old.part"), "partial");
      await writeFile(join(root, ".tmp", "recent.part"), "in use");
      const old = new Date(Date.now() - 3 * 24 * 3600_000);
      await utimes(join(root, ".tmp", "old.part"), old, old);
      expect(await listAll(fx.store, "")).toEqual([]);
      await fx.store.putObject("s/x.bin", chunks("x"));
      expect(await readdir(join(root, ".tmp"))).toEqual(["recent.part"]);
      expect(await listAll(fx.store, "")).toEqual(["s/x.bin"]);
    } finally {
      await fx.cleanup();
    }
  });
});

describe("BlobItemStore specifics", () => {
  it("stores metadata sha256/size, uses blocks for large objects, commits only complete objects", async () => {
    const store = new BlobItemStore(new ContainerClient(inject("azuriteConnectionString"), containerName()), { blockSize: 64 * 1024 });
    await store.ensureContainer();
    try {
      const data = randomBytes(200_000);
      const put = await store.putObject("m/x.bin", chunks(data));
      const blob = store.container.getBlockBlobClient("m/x.bin");
      const props = await blob.getProperties();
      expect(props.metadata).toMatchObject({ sha256: sha(data), size: String(data.length) });
      const blocks = await blob.getBlockList("committed");
      expect(blocks.committedBlocks?.map((b) => b.size)).toEqual([65536, 65536, 65536, 200_000 - 3 * 65536]);
      const ids = blocks.committedBlocks?.map((b) => b.name) ?? [];
      expect(new Set(ids.map((id) => id.length)).size).toBe(1);
      expect(put.sha256).toBe(sha(data));
    } finally {
      await store.container.deleteIfExists();
    }
  });

  it("a missing container: puts fail with ContainerNotFound, reads see nothing", async () => {
    const store = BlobItemStore.fromConnectionString(inject("azuriteConnectionString"), containerName());
    await expect(store.putObject("a.bin", chunks("x"))).rejects.toMatchObject({ code: "ContainerNotFound", kind: "storage" });
    expect(await listAll(store, "")).toEqual([]);
    expect(await store.statObject("a.bin")).toBeUndefined();
    expect(await store.readText("a.json")).toBeUndefined();
  });

  it("an unreachable service is a retryable StoreError", async () => {
    const port = await new Promise<number>((ok) => {
      const s = createServer().listen(0, "127.0.0.1", () => {
        const addr = s.address();
        s.close(() => ok(typeof addr === "object" && addr ? addr.port : 1));
      });
    });
    const client = new ContainerClient(`http://127.0.0.1:${port}/devstoreaccount1/nowhere`, undefined, { retryOptions: { maxTries: 1 } });
    const store = new BlobItemStore(client);
    const err = await store.statObject("a.bin").then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(StoreError);
    expect(err).toMatchObject({ retryable: true, code: "StorageUnavailable" });
  });
});

describe("openStore", () => {
  class FakeCredential implements TokenCredential {
    calls = 0;
    async getToken(): Promise<AccessToken> {
      this.calls++;
      return { token: "fake", expiresOnTimestamp: Date.now() + 3600_000 };
    }
  }

  it("a folder path opens a LocalItemStore at its absolute path", () => {
    const s = openStore("./some-backups", {});
    expect(s).toBeInstanceOf(LocalItemStore);
    expect(s.location).toBe(resolve("some-backups"));
    const abs = join(tmpdir(), "mv-abs");
    expect(openStore(abs, {}).location).toBe(abs);
    expect(parseStoreSpec("file:///var/backups/mv")).toEqual({ kind: "folder", path: resolve("/var/backups/mv") });
  });

  it("an https container URL opens a BlobItemStore with a token credential", () => {
    const cred = new FakeCredential();
    let made = 0;
    const s = openStore("https://contosobackup.blob.core.windows.net/mailvault/", {}, () => {
      made++;
      return cred;
    });
    expect(s).toBeInstanceOf(BlobItemStore);
    expect(s.location).toBe("https://contosobackup.blob.core.windows.net/mailvault");
    expect(made).toBe(1);
    expect(parseStoreSpec("https://backups.contoso.com/mv-1")).toEqual({ kind: "blob-url", url: "https://backups.contoso.com/mv-1", container: "mv-1" });
    // Without a factory: DefaultAzureCredential (constructed, not used: nothing is contacted).
    const d = openStore("https://contosobackup.blob.core.windows.net/mailvault", { AZURE_CLIENT_ID: "00000000-0000-0000-0000-000000000001" });
    expect(d).toBeInstanceOf(BlobItemStore);
  });

  it("refuses URLs with a SAS or credentials, without repeating them", () => {
    for (const spec of [
      "https://acct.blob.core.windows.net/mailvault?sv=2024-01-01&sig=SECRETSIG",
      "https://user:SECRETPW@acct.blob.core.windows.net/mailvault",
    ]) {
      const err = (() => {
        try {
          openStore(spec, {}, () => new FakeCredential());
        } catch (e) {
          return e;
        }
      })();
      expect(err).toBeInstanceOf(InvalidInputError);
      expect(String((err as Error).message)).not.toMatch(/SECRET/);
    }
  });

  it("blob:<container> uses MAILVAULT_STORAGE_CONNECTION_STRING, and says so when it is unset", async () => {
    const cs = inject("azuriteConnectionString");
    const endpoint = inject("azuriteBlobEndpoint");
    const name = containerName();
    const s = openStore(`blob:${name}`, { MAILVAULT_STORAGE_CONNECTION_STRING: cs });
    expect(s).toBeInstanceOf(BlobItemStore);
    expect(s.location).toBe(`${endpoint}/${name}`);
    expect(s.location).not.toMatch(/AccountKey|Eby8/);
    // It works: create, write, read.
    await (s as BlobItemStore).ensureContainer();
    await s.writeText("hello.txt", "hi");
    expect(await s.readText("hello.txt")).toBe("hi");
    // The same container by its Azurite URL (http on loopback) with the connection string.
    const viaUrl = openStore(`${endpoint}/${name}`, { MAILVAULT_STORAGE_CONNECTION_STRING: cs });
    expect(await viaUrl.readText("hello.txt")).toBe("hi");
    await (s as BlobItemStore).container.deleteIfExists();

    for (const env of [{}, { MAILVAULT_STORAGE_CONNECTION_STRING: "  " }]) {
      const err = (() => {
        try {
          openStore(`blob:${name}`, env);
        } catch (e) {
          return e;
        }
      })();
      expect(err).toBeInstanceOf(InvalidInputError);
      expect(err).toMatchObject({ code: "MissingConnectionString" });
      expect((err as Error).message).toMatch(/MAILVAULT_STORAGE_CONNECTION_STRING/);
    }
    expect(() => openStore(`${endpoint}/${name}`, {})).toThrow(InvalidInputError);
    expect(() => openStore(`blob:${name}`, { MAILVAULT_STORAGE_CONNECTION_STRING: "not a connection string" })).toThrow(InvalidInputError);
  });

  it("rejects bad container names and malformed store settings", () => {
    const env = { MAILVAULT_STORAGE_CONNECTION_STRING: inject("azuriteConnectionString") };
    const bad = [
      "blob:Bad_Name",
      "blob:ab",
      "blob:a--b",
      "blob:-abc",
      "blob:abc-",
      `blob:${"a".repeat(64)}`,
      "blob:",
      "https://acct.blob.core.windows.net/UPPER",
      "https://acct.blob.core.windows.net/",
      "https://acct.blob.core.windows.net/c1/extra/segments",
      "http://acct.blob.core.windows.net/mailvault",
      "s3://bucket/x",
      "",
      "   ",
    ];
    for (const spec of bad) {
      expect(() => openStore(spec, env, () => new FakeCredential()), JSON.stringify(spec)).toThrow(InvalidInputError);
    }
  });
});
