import { createHash, randomUUID } from "node:crypto";
import { constants as fsConstants, createReadStream } from "node:fs";
import { link, lstat, mkdir, open, opendir, readdir, readFile, rename, rmdir, stat, unlink, type FileHandle } from "node:fs/promises";
import { dirname, join, resolve, sep } from "node:path";
import type { Readable } from "node:stream";
import { InvalidInputError, NotFoundError, StoreError } from "../errors";
import type { ItemStore, PutObjectOptions, StoredObject } from "./itemStore";

/*
 * Object paths, shared by both stores so that the layout (and what is rejected) is the same in a
 * folder and in a container.
 */

/** Longest object path accepted (Azure allows 1,024 characters in a blob name). */
export const MAX_PATH_LENGTH = 1024;
/** Longest path segment accepted (most file systems allow 255 bytes per name). */
export const MAX_SEGMENT_LENGTH = 255;

const SEGMENT = /^[A-Za-z0-9._@=+-]+$/;
const PARTIAL_SEGMENT = /^[A-Za-z0-9._@=+-]*$/;
/** Names Windows reserves whatever the extension: a folder store must be portable. */
const WINDOWS_DEVICE = /^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\.|$)/i;
/** Where the local store keeps files being written; never a valid object path (segments cannot start with a dot). */
const TEMP_DIR = ".tmp";

function describePath(path: string): string {
  return JSON.stringify(path.length > 120 ? `${path.slice(0, 120)}...` : path);
}

function checkSegment(seg: string, path: string): void {
  if (seg === "") throw new InvalidInputError(`invalid store path ${describePath(path)}: empty segment (leading, trailing or double "/")`, "InvalidPath");
  if (seg.length > MAX_SEGMENT_LENGTH) throw new InvalidInputError(`invalid store path ${describePath(path)}: a segment is longer than ${MAX_SEGMENT_LENGTH} characters`, "InvalidPath");
  if (!SEGMENT.test(seg)) {
    throw new InvalidInputError(`invalid store path ${describePath(path)}: segments may only use A-Z a-z 0-9 . _ @ = + -`, "InvalidPath");
  }
  if (seg.startsWith(".")) throw new InvalidInputError(`invalid store path ${describePath(path)}: a segment may not start with "." (".", ".." and store internals)`, "InvalidPath");
  if (seg.endsWith(".")) throw new InvalidInputError(`invalid store path ${describePath(path)}: a segment may not end with "."`, "InvalidPath");
  if (WINDOWS_DEVICE.test(seg)) throw new InvalidInputError(`invalid store path ${describePath(path)}: ${seg} is a reserved device name on Windows`, "InvalidPath");
}

/**
 * Checks an object path and returns its segments. A valid path is relative, `/`-separated, has no
 * empty, `.` or `..` segment, and uses only `[A-Za-z0-9._@=+-]`: it can never leave the store root,
 * and means the same thing in a folder and in a container. Throws InvalidInputError otherwise.
 */
export function checkObjectPath(path: string): string[] {
  if (typeof path !== "string" || path === "") throw new InvalidInputError("invalid store path: empty", "InvalidPath");
  if (path.length > MAX_PATH_LENGTH) throw new InvalidInputError(`invalid store path ${describePath(path)}: longer than ${MAX_PATH_LENGTH} characters`, "InvalidPath");
  const segments = path.split("/");
  for (const seg of segments) checkSegment(seg, path);
  return segments;
}

/**
 * Checks a listing prefix: "" (everything), a folder-like prefix ending in `/`, or such a folder
 * plus the start of a name. Returns the folder segments and the partial name that follows them.
 */
export function checkListPrefix(prefix: string): { folder: string[]; rest: string } {
  if (typeof prefix !== "string") throw new InvalidInputError("invalid list prefix", "InvalidPath");
  if (prefix === "") return { folder: [], rest: "" };
  if (prefix.length > MAX_PATH_LENGTH) throw new InvalidInputError(`invalid list prefix ${describePath(prefix)}: too long`, "InvalidPath");
  const cut = prefix.lastIndexOf("/");
  const folderPart = cut < 0 ? "" : prefix.slice(0, cut);
  const rest = prefix.slice(cut + 1);
  const folder = folderPart === "" && cut < 0 ? [] : folderPart.split("/");
  for (const seg of folder) checkSegment(seg, prefix);
  if (!PARTIAL_SEGMENT.test(rest) || rest.startsWith(".")) {
    throw new InvalidInputError(`invalid list prefix ${describePath(prefix)}: segments may only use A-Z a-z 0-9 . _ @ = + -`, "InvalidPath");
  }
  return { folder, rest };
}

/** True when `path` is a valid object path (used to skip foreign files when listing). */
export function isObjectPath(path: string): boolean {
  try {
    checkObjectPath(path);
    return true;
  } catch {
    return false;
  }
}

/*
 * Reading a put body: one chunk at a time, honouring an AbortSignal even while the source waits.
 */

/** The next chunk of `it`, or the signal's reason as soon as it aborts. Source errors pass through unchanged. */
export function nextChunk(
  it: AsyncIterator<Uint8Array>,
  signal: AbortSignal | undefined,
): Promise<IteratorResult<Uint8Array>> {
  if (!signal) return it.next();
  signal.throwIfAborted();
  return new Promise((resolvePromise, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    it.next().then(
      (r) => {
        signal.removeEventListener("abort", onAbort);
        resolvePromise(r);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

/** A chunk, checked: the body must yield bytes. */
export function asBytes(chunk: unknown): Uint8Array {
  if (chunk instanceof Uint8Array) return chunk;
  throw new InvalidInputError("putObject body must yield Uint8Array chunks", "InvalidBody");
}

/** Tells the source we stop reading (runs a generator's `finally`); never throws, never waits. */
export function releaseSource(it: AsyncIterator<Uint8Array>): void {
  try {
    const r = it.return?.();
    if (r) r.then(undefined, () => {});
  } catch {
    // the source's own cleanup failed: nothing we can add
  }
}

/** Reads `body` to its end and discards it (an existing object is kept; the caller's shared stream goes on). */
export async function drainBody(body: AsyncIterable<Uint8Array>, signal?: AbortSignal): Promise<void> {
  const it = body[Symbol.asyncIterator]();
  let finished = false;
  try {
    for (;;) {
      const r = await nextChunk(it, signal);
      if (r.done) {
        finished = true;
        return;
      }
    }
  } finally {
    if (!finished) releaseSource(it);
  }
}

/** The IntegrityMismatch error, or undefined when the bytes match what the caller expected. */
export function checkExpectations(path: string, size: number, sha256: string, options: PutObjectOptions | undefined): StoreError | undefined {
  if (options?.expectedSize !== undefined && options.expectedSize !== size) {
    return new StoreError("IntegrityMismatch", `object ${path}: expected ${options.expectedSize} bytes, got ${size}; nothing stored`);
  }
  if (options?.expectedSha256 !== undefined && options.expectedSha256.toLowerCase() !== sha256) {
    return new StoreError("IntegrityMismatch", `object ${path}: expected sha256 ${options.expectedSha256.toLowerCase()}, got ${sha256}; nothing stored`);
  }
  return undefined;
}

export const EMPTY_SHA256 = createHash("sha256").digest("hex");

/*
 * The store.
 */

/** Errno codes worth another try. */
const TRANSIENT_ERRNO = new Set(["EAGAIN", "EBUSY", "EMFILE", "ENFILE", "ETIMEDOUT", "EINTR"]);

function errno(e: unknown): string | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

function ioError(op: string, path: string, e: unknown): StoreError {
  if (e instanceof StoreError) return e;
  const code = errno(e);
  return new StoreError("LocalIoError", `${op} ${path} failed: ${code ?? (e instanceof Error ? e.message : String(e))}`, {
    cause: e,
    retryable: code !== undefined && TRANSIENT_ERRNO.has(code),
  });
}

/** Temp files older than this are leftovers of a crashed process; the first write of a store removes them. */
const STALE_TEMP_MS = 24 * 60 * 60 * 1000;

/** Sources of `link` failure that mean "this file system cannot hard-link": fall back to a guarded rename. */
const NO_LINK = new Set(["EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS", "EXDEV"]);

/**
 * An ItemStore in a local folder. Objects are files below `root` at their object path; files being
 * written live in `root/.tmp/` (same file system, so publishing is a link/rename) and are never
 * listed. A put streams into a temp file while hashing, fsyncs it, and publishes it with a hard link,
 * which fails if the target exists: an object is visible only complete and is never overwritten.
 * Memory per put is one source chunk, whatever the object size.
 */
export class LocalItemStore implements ItemStore {
  readonly location: string;
  private readonly root: string;
  /** `root` with a trailing separator: every object file starts with it. */
  private readonly rootPrefix: string;
  private readonly tempDir: string;
  private swept = false;

  constructor(root: string) {
    this.root = resolve(root);
    this.rootPrefix = this.root.endsWith(sep) ? this.root : this.root + sep;
    this.tempDir = join(this.root, TEMP_DIR);
    this.location = this.root;
  }

  private fileOf(path: string): string {
    const segments = checkObjectPath(path);
    const file = join(this.root, ...segments);
    // Belt and braces: the segment rules already make escaping impossible.
    if (!file.startsWith(this.rootPrefix)) throw new InvalidInputError(`invalid store path ${describePath(path)}`, "InvalidPath");
    return file;
  }

  private async newTempFile(suffix: string): Promise<{ file: string; fh: FileHandle }> {
    await mkdir(this.tempDir, { recursive: true });
    if (!this.swept) {
      this.swept = true;
      await this.sweepStaleTemp();
    }
    const file = join(this.tempDir, `${randomUUID()}${suffix}`);
    const fh = await open(file, fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_WRONLY, 0o644);
    return { file, fh };
  }

  /** Removes temp files a crashed process left behind (best effort; recent ones may be in use). */
  private async sweepStaleTemp(): Promise<void> {
    const cutoff = Date.now() - STALE_TEMP_MS;
    for (const name of await readdir(this.tempDir).catch(() => [] as string[])) {
      const file = join(this.tempDir, name);
      const st = await lstat(file).catch(() => undefined);
      if (st?.isFile() && st.mtimeMs < cutoff) await unlink(file).catch(() => {});
    }
  }

  async putObject(path: string, body: AsyncIterable<Uint8Array>, options?: PutObjectOptions): Promise<StoredObject> {
    const target = this.fileOf(path);
    const signal = options?.signal;
    signal?.throwIfAborted();

    const existing = await this.describeFile(path, target);
    if (existing) {
      await drainBody(body, signal);
      return existing;
    }

    let temp: { file: string; fh: FileHandle };
    try {
      temp = await this.newTempFile(".part");
    } catch (e) {
      throw ioError("create temp file for", path, e);
    }
    let fh: FileHandle | undefined = temp.fh;
    let published = false;
    const it = body[Symbol.asyncIterator]();
    let sourceDone = false;
    try {
      const hash = createHash("sha256");
      let size = 0;
      for (;;) {
        const r = await nextChunk(it, signal); // source errors and aborts propagate unchanged
        if (r.done) {
          sourceDone = true;
          break;
        }
        const chunk = asBytes(r.value);
        if (chunk.byteLength === 0) continue;
        hash.update(chunk);
        size += chunk.byteLength;
        try {
          let off = 0;
          while (off < chunk.byteLength) {
            const { bytesWritten } = await fh.write(chunk, off, chunk.byteLength - off);
            off += bytesWritten;
          }
        } catch (e) {
          throw ioError("write", path, e);
        }
      }
      signal?.throwIfAborted();
      try {
        await fh.sync();
        await fh.close();
        fh = undefined;
      } catch (e) {
        throw ioError("flush", path, e);
      }
      const sha256 = hash.digest("hex");
      const mismatch = checkExpectations(path, size, sha256, options);
      if (mismatch) throw mismatch;

      const won = await this.publish(temp.file, target, path);
      if (!won) {
        // Another writer published first: keep theirs.
        const other = await this.describeFile(path, target);
        if (!other) throw new StoreError("PublishFailed", `object ${path} appeared and vanished while publishing`, { retryable: true });
        return other;
      }
      published = true;
      return { path, size, sha256, existed: false };
    } finally {
      if (!sourceDone) releaseSource(it);
      if (fh) await fh.close().catch(() => {});
      // After a link the temp name is a second name of the published file; either way it goes.
      await unlink(temp.file).catch(() => {});
      if (published) await syncDir(dirname(target));
    }
  }

  /** Makes `temp` visible at `target` unless something is there already. False when it was. */
  private async publish(temp: string, target: string, path: string): Promise<boolean> {
    for (let attempt = 0; ; attempt++) {
      await this.makeParent(target, path);
      try {
        await link(temp, target);
        return true;
      } catch (e) {
        const code = errno(e);
        if (code === "EEXIST") return false;
        // A concurrent deleteObject may have removed the (then empty) parent folder: make it again.
        if (code === "ENOENT" && attempt < 5) continue;
        if (code !== undefined && NO_LINK.has(code)) {
          // No hard links here (some network shares, FAT): rename, guarded by an existence check.
          // Between the check and the rename another writer could publish; its object would be replaced
          // by one with the same path, which for item versions holds the same bytes.
          if ((await lstat(target).catch(() => undefined)) !== undefined) return false;
          try {
            await rename(temp, target);
            return true;
          } catch (e2) {
            throw ioError("publish", path, e2);
          }
        }
        throw ioError("publish", path, e);
      }
    }
  }

  /** Creates the folders above an object; a file in the way is a PathConflict. */
  private async makeParent(target: string, path: string): Promise<void> {
    try {
      await mkdir(dirname(target), { recursive: true });
    } catch (e) {
      const code = errno(e);
      if (code === "EEXIST" || code === "ENOTDIR") {
        throw new StoreError("PathConflict", `object ${path}: a folder above it is an object in ${this.location}`);
      }
      throw ioError("create folder for", path, e);
    }
  }

  /** Size and sha256 (computed by reading it back) of an existing object, or undefined. */
  private async describeFile(path: string, file: string): Promise<StoredObject | undefined> {
    let st;
    try {
      st = await stat(file);
    } catch (e) {
      const code = errno(e);
      if (code === "ENOENT" || code === "ENOTDIR") return undefined;
      throw ioError("stat", path, e);
    }
    if (!st.isFile()) throw new StoreError("PathConflict", `object ${path} is a folder in ${this.location}`);
    try {
      const hash = createHash("sha256");
      let size = 0;
      for await (const chunk of createReadStream(file, { highWaterMark: 1024 * 1024 })) {
        const b = chunk as Buffer;
        hash.update(b);
        size += b.byteLength;
      }
      return { path, size, sha256: hash.digest("hex"), existed: true };
    } catch (e) {
      throw ioError("read", path, e);
    }
  }

  async openObject(path: string, options?: { signal?: AbortSignal }): Promise<Readable> {
    const file = this.fileOf(path);
    options?.signal?.throwIfAborted();
    let fh: FileHandle;
    try {
      fh = await open(file, "r");
    } catch (e) {
      const code = errno(e);
      if (code === "ENOENT" || code === "ENOTDIR" || code === "EISDIR") throw new NotFoundError(path);
      throw ioError("open", path, e);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new NotFoundError(path);
    } catch (e) {
      await fh.close().catch(() => {});
      throw e instanceof StoreError ? e : ioError("stat", path, e);
    }
    return fh.createReadStream({ highWaterMark: 1024 * 1024, autoClose: true, signal: options?.signal });
  }

  async statObject(path: string): Promise<{ size: number } | undefined> {
    const file = this.fileOf(path);
    try {
      const st = await stat(file);
      return st.isFile() ? { size: st.size } : undefined;
    } catch (e) {
      const code = errno(e);
      if (code === "ENOENT" || code === "ENOTDIR") return undefined;
      throw ioError("stat", path, e);
    }
  }

  async *listObjects(prefix: string): AsyncIterable<string> {
    const { folder, rest } = checkListPrefix(prefix);
    const base = folder.join("/");
    yield* this.walk(folder.length ? join(this.root, ...folder) : this.root, base, rest);
  }

  /** Files below `dir` (object path `rel`), depth first, one directory handle open per level. */
  private async *walk(dir: string, rel: string, namePrefix: string): AsyncGenerator<string> {
    let handle;
    try {
      handle = await opendir(dir, { bufferSize: 128 });
    } catch (e) {
      const code = errno(e);
      if (code === "ENOENT" || code === "ENOTDIR") return;
      throw ioError("list", rel || "/", e);
    }
    try {
      for await (const entry of handle) {
        // Skips .tmp and anything else that is not a valid object name (e.g. .DS_Store).
        if (entry.name.startsWith(".") || !entry.name.startsWith(namePrefix)) continue;
        const p = rel ? `${rel}/${entry.name}` : entry.name;
        if (entry.isDirectory()) yield* this.walk(join(dir, entry.name), p, "");
        else if (entry.isFile() && isObjectPath(p)) yield p;
      }
    } catch (e) {
      throw ioError("list", rel || "/", e);
    }
  }

  async writeText(path: string, text: string): Promise<void> {
    const target = this.fileOf(path);
    let temp: { file: string; fh: FileHandle } | undefined;
    try {
      temp = await this.newTempFile(".txt");
      await temp.fh.writeFile(text, "utf8");
      await temp.fh.sync();
      await temp.fh.close();
      for (let attempt = 0; ; attempt++) {
        await this.makeParent(target, path);
        try {
          await rename(temp.file, target);
          break;
        } catch (e) {
          if (errno(e) === "ENOENT" && attempt < 5) continue;
          throw e;
        }
      }
      temp = undefined;
      await syncDir(dirname(target));
    } catch (e) {
      throw ioError("write", path, e);
    } finally {
      if (temp) {
        await temp.fh.close().catch(() => {});
        await unlink(temp.file).catch(() => {});
      }
    }
  }

  async readText(path: string): Promise<string | undefined> {
    const file = this.fileOf(path);
    try {
      return await readFile(file, "utf8");
    } catch (e) {
      const code = errno(e);
      if (code === "ENOENT" || code === "ENOTDIR" || code === "EISDIR") return undefined;
      throw ioError("read", path, e);
    }
  }

  async deleteObject(path: string): Promise<void> {
    const file = this.fileOf(path);
    try {
      await unlink(file);
    } catch (e) {
      const code = errno(e);
      if (code === "ENOENT" || code === "ENOTDIR") return;
      throw ioError("delete", path, e);
    }
    // Remove folders left empty, up to (not including) the root, so deleted work files leave no litter.
    let dir = dirname(file);
    while (dir.startsWith(this.rootPrefix) && dir.length > this.rootPrefix.length) {
      try {
        await rmdir(dir);
      } catch {
        break; // not empty (or already gone, or busy): stop
      }
      dir = dirname(dir);
    }
  }
}

/** fsync a directory so a new name in it survives a crash; not possible everywhere (Windows), so best effort. */
async function syncDir(dir: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(dir, "r");
    await fh.sync();
  } catch {
    // best effort
  } finally {
    await fh?.close().catch(() => {});
  }
}
