import { createHash, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import type { TokenCredential } from "@azure/identity";
import {
  type BlobGetPropertiesResponse,
  type BlockBlobClient,
  ContainerClient,
  RestError,
  type StoragePipelineOptions,
  StorageRetryPolicyType,
} from "@azure/storage-blob";
import { InvalidInputError, NotFoundError, StoreError } from "../errors";
import type { ItemStore, PutObjectOptions, StoredObject } from "./itemStore";
import { asBytes, checkExpectations, checkListPrefix, checkObjectPath, drainBody, isObjectPath, nextChunk, releaseSource } from "./localItemStore";

/** Block size of a put: bytes per staged block. */
export const DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024;
/** Blocks staged at once per put. */
export const DEFAULT_MAX_PARALLEL_BLOCKS = 2;
/** Azure's limit of blocks in one block blob. */
const MAX_BLOCKS = 50_000;

/**
 * Pipeline options for every container client mailvault makes. Transient failures (5xx, resets,
 * timeouts) are retried by the SDK's storage retry policy with exponential backoff; a put's blocks are
 * Buffers, so a retried block resends the same bytes. tryTimeoutInMs stays unset: it becomes the
 * server-side `timeout` of each request, and the service's own defaults scale with the payload.
 */
export const STORAGE_PIPELINE_OPTIONS: StoragePipelineOptions = {
  retryOptions: {
    retryPolicyType: StorageRetryPolicyType.EXPONENTIAL,
    maxTries: 6,
    retryDelayInMs: 1_000,
    maxRetryDelayInMs: 30_000,
  },
  userAgentOptions: { userAgentPrefix: "mailvault" },
};

export interface BlobItemStoreOptions {
  /** Bytes per staged block (default 4 MiB, at most 100 MiB). */
  blockSize?: number;
  /** Blocks staged in parallel per put (default 2). */
  maxParallelBlocks?: number;
}

const CONTAINER_NAME = /^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*$/;

/** Azure container naming rules: 3-63 characters, lowercase letters, digits and single inner hyphens. */
export function isValidContainerName(name: string): boolean {
  return CONTAINER_NAME.test(name);
}

export function checkContainerName(name: string): string {
  if (!isValidContainerName(name)) {
    throw new InvalidInputError(
      `invalid container name ${JSON.stringify(name.slice(0, 80))}: use 3-63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit`,
      "InvalidContainerName",
    );
  }
  return name;
}

/** A URL for humans and logs: no credentials, no query (a SAS), no fragment. */
export function publicUrl(url: string): string {
  try {
    const u = new URL(url);
    u.username = "";
    u.password = "";
    u.search = "";
    u.hash = "";
    return u.toString().replace(/\/$/, "");
  } catch {
    return url.replace(/[?#].*$/, "");
  }
}

function statusOf(e: unknown): number | undefined {
  return e instanceof RestError ? e.statusCode : undefined;
}

function serviceCode(e: unknown): string | undefined {
  if (!(e instanceof RestError)) return undefined;
  const header = e.response?.headers.get("x-ms-error-code");
  return header ?? (typeof e.code === "string" ? e.code : undefined);
}

function isAbortError(e: unknown): boolean {
  return e instanceof Error && e.name === "AbortError";
}

const TRANSIENT_NETWORK = /ETIMEDOUT|ESOCKETTIMEDOUT|ECONNRESET|ECONNREFUSED|EPIPE|ENOTFOUND|EAI_AGAIN|TIMEOUT|REQUEST_SEND_ERROR/i;

function firstLine(s: string): string {
  return s.split(/\r?\n/, 1)[0].replace(/([?&]sig=)[^&\s]+/gi, "$1REDACTED").slice(0, 300);
}

/**
 * A StoreError for a failed storage call: retryable for 5xx, 408, 429, timeouts and network errors
 * (after the SDK's own retries). Aborts pass through unchanged. The message names the operation,
 * the object and the service's error code and request id, never a key or SAS.
 */
function storageError(op: string, path: string, e: unknown, signal?: AbortSignal): unknown {
  if (signal?.aborted) return signal.reason;
  if (isAbortError(e) || e instanceof StoreError) return e;
  const status = statusOf(e);
  const code = serviceCode(e);
  const requestId = e instanceof RestError ? e.response?.headers.get("x-ms-request-id") : undefined;
  const message = e instanceof Error ? firstLine(e.message) : String(e);
  const network = status === undefined && TRANSIENT_NETWORK.test(`${code ?? ""} ${message}`);
  const retryable = network || status === undefined || status === 408 || status === 429 || status >= 500;
  const ourCode =
    code === "ContainerNotFound"
      ? "ContainerNotFound"
      : status === 401 || status === 403
        ? "StorageAccessDenied"
        : retryable
          ? "StorageUnavailable"
          : "StorageRequestFailed";
  const hint = code === "ContainerNotFound" ? " (create the container first)" : "";
  const detail = [status !== undefined ? `HTTP ${status}` : undefined, code, message, requestId ? `request id ${requestId}` : undefined]
    .filter((x) => x)
    .join(", ");
  return new StoreError(ourCode, `${op} ${path} failed${hint}: ${detail}`, { retryable });
}

/** Fixed-length block ids, unique per put so concurrent writers to one path never mix their blocks. */
function blockIdMaker(): (index: number) => string {
  const nonce = randomBytes(8).toString("hex");
  return (index) => Buffer.from(`${nonce}-${index.toString().padStart(6, "0")}`).toString("base64");
}

/**
 * An ItemStore in an Azure Blob container (or Azurite). A put stages blocks of `blockSize` bytes,
 * at most `maxParallelBlocks` at a time, while hashing and counting; only when every byte arrived and
 * matched does it commit the block list, with `If-None-Match: *`, so the blob is visible only
 * complete and an existing blob is never overwritten. Blob metadata `sha256` and `size` describe it.
 * Memory per put: (maxParallelBlocks + 1) x blockSize (12 MiB by default), whatever the object size.
 */
export class BlobItemStore implements ItemStore {
  readonly location: string;
  readonly container: ContainerClient;
  private readonly blockSize: number;
  private readonly maxParallel: number;

  constructor(container: ContainerClient, options: BlobItemStoreOptions = {}) {
    this.container = container;
    this.location = publicUrl(container.url);
    this.blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
    this.maxParallel = options.maxParallelBlocks ?? DEFAULT_MAX_PARALLEL_BLOCKS;
    if (!Number.isInteger(this.blockSize) || this.blockSize < 1 || this.blockSize > 100 * 1024 * 1024) {
      throw new InvalidInputError(`blockSize must be 1 byte to 100 MiB, got ${this.blockSize}`);
    }
    if (!Number.isInteger(this.maxParallel) || this.maxParallel < 1 || this.maxParallel > 16) {
      throw new InvalidInputError(`maxParallelBlocks must be 1 to 16, got ${this.maxParallel}`);
    }
  }

  /** A store on `containerName` reached with a storage connection string (e.g. Azurite). */
  static fromConnectionString(connectionString: string, containerName: string, options?: BlobItemStoreOptions): BlobItemStore {
    checkContainerName(containerName);
    let client: ContainerClient;
    try {
      client = new ContainerClient(connectionString, containerName, STORAGE_PIPELINE_OPTIONS);
    } catch {
      // The SDK's message may quote the connection string: never repeat it.
      throw new InvalidInputError("the storage connection string is not valid (expected e.g. DefaultEndpointsProtocol=...;AccountName=...;AccountKey=...;BlobEndpoint=...)", "InvalidConnectionString");
    }
    return new BlobItemStore(client, options);
  }

  /** A store on a container URL (`https://<account>.blob.core.windows.net/<container>`) reached with a token credential. */
  static fromUrl(containerUrl: string, credential: TokenCredential, options?: BlobItemStoreOptions): BlobItemStore {
    return new BlobItemStore(new ContainerClient(containerUrl, credential, STORAGE_PIPELINE_OPTIONS), options);
  }

  /** Creates the container when it does not exist. True when this call created it. */
  async ensureContainer(): Promise<boolean> {
    try {
      const r = await this.container.createIfNotExists();
      return r.succeeded;
    } catch (e) {
      // An identity allowed to write blobs but not to create containers: fine when it exists.
      if ((statusOf(e) === 403 || statusOf(e) === 401) && (await this.container.exists().catch(() => false))) return false;
      throw storageError("create container", this.location, e);
    }
  }

  private blob(path: string): BlockBlobClient {
    checkObjectPath(path);
    return this.container.getBlockBlobClient(path);
  }

  async putObject(path: string, body: AsyncIterable<Uint8Array>, options?: PutObjectOptions): Promise<StoredObject> {
    const blob = this.blob(path);
    const signal = options?.signal;
    signal?.throwIfAborted();

    // Most items are smaller than one block: they go up in one Put Blob that refuses to overwrite,
    // so the common case is a single round trip. Larger ones look for an existing version first,
    // to avoid uploading megabytes that would be refused at commit.
    const blockSize = this.blockSize;
    const blockId = blockIdMaker();
    const ids: string[] = [];
    const free: Buffer[] = [];
    const inFlight = new Set<Promise<void>>();
    let stageFailure: { error: unknown } | undefined;

    const stage = (buf: Buffer, length: number): void => {
      if (ids.length >= MAX_BLOCKS) throw new StoreError("ObjectTooLarge", `object ${path} needs more than ${MAX_BLOCKS} blocks of ${blockSize} bytes`);
      const id = blockId(ids.length);
      ids.push(id);
      const data = buf.subarray(0, length);
      const md5 = createHash("md5").update(data).digest();
      const p: Promise<void> = blob
        .stageBlock(id, data, length, { abortSignal: signal, transactionalContentMD5: md5 })
        .then(
          () => {
            free.push(buf);
          },
          (e: unknown) => {
            stageFailure ??= { error: e };
          },
        )
        .finally(() => inFlight.delete(p));
      inFlight.add(p);
    };
    const throwIfStageFailed = (): void => {
      if (stageFailure) throw storageError("stage block of", path, stageFailure.error, signal);
    };
    /** Waits until fewer than maxParallel blocks are in flight. */
    const slot = async (): Promise<void> => {
      while (inFlight.size >= this.maxParallel) await Promise.race(inFlight);
      throwIfStageFailed();
    };

    const it = body[Symbol.asyncIterator]();
    let sourceDone = false;
    let current: Buffer | undefined;
    let fill = 0;
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
        hash.update(chunk);
        size += chunk.byteLength;
        let off = 0;
        while (off < chunk.byteLength) {
          current ??= free.pop() ?? Buffer.allocUnsafe(blockSize);
          const n = Math.min(blockSize - fill, chunk.byteLength - off);
          current.set(chunk.subarray(off, off + n), fill);
          fill += n;
          off += n;
          if (fill === blockSize) {
            if (ids.length === 0) {
              const existing = await this.properties(blob, path, signal);
              if (existing) {
                sourceDone = true;
                await drainRest(it, signal);
                return await this.describe(blob, path, existing, signal);
              }
            }
            await slot();
            stage(current, fill);
            current = undefined;
            fill = 0;
          }
        }
        throwIfStageFailed();
      }
      if (ids.length === 0) {
        // The whole object fits in one block: one conditional Put Blob.
        const data = current ? current.subarray(0, fill) : Buffer.alloc(0);
        const sha256 = hash.digest("hex");
        const mismatch = checkExpectations(path, size, sha256, options);
        if (mismatch) throw mismatch;
        try {
          await blob.upload(data, data.byteLength, {
            abortSignal: signal,
            conditions: { ifNoneMatch: "*" },
            metadata: { sha256, size: String(size) },
            blobHTTPHeaders: { blobContentType: "application/octet-stream", blobContentMD5: createHash("md5").update(data).digest() },
          });
        } catch (e) {
          const status = statusOf(e);
          if ((status === 409 || status === 412) && !signal?.aborted) {
            const other = await this.properties(blob, path, signal);
            if (other) return this.describe(blob, path, other, signal);
          }
          throw storageError("upload", path, e, signal);
        }
        return { path, size, sha256, existed: false };
      }
      if (fill > 0 && current) {
        await slot();
        stage(current, fill);
        current = undefined;
        fill = 0;
      }
      await Promise.all(inFlight);
      throwIfStageFailed();
      signal?.throwIfAborted();

      const sha256 = hash.digest("hex");
      const mismatch = checkExpectations(path, size, sha256, options);
      if (mismatch) throw mismatch; // staged blocks stay uncommitted: invisible, and the service drops them

      try {
        await blob.commitBlockList(ids, {
          abortSignal: signal,
          conditions: { ifNoneMatch: "*" },
          metadata: { sha256, size: String(size) },
          blobHTTPHeaders: { blobContentType: "application/octet-stream" },
        });
      } catch (e) {
        const status = statusOf(e);
        const lostRace = status === 409 || status === 412 || (status === 400 && serviceCode(e) === "InvalidBlockList");
        if (lostRace && !signal?.aborted) {
          // Another writer committed first (its commit also discards our uncommitted blocks): keep theirs.
          const other = await this.properties(blob, path, signal);
          if (other) return this.describe(blob, path, other, signal);
        }
        throw storageError("commit", path, e, signal);
      }
      return { path, size, sha256, existed: false };
    } finally {
      if (!sourceDone) releaseSource(it);
      // Never leave a stage running behind our back (its buffer, its request).
      if (inFlight.size) await Promise.allSettled([...inFlight]);
    }
  }

  /** The blob's properties, or undefined when it does not exist. */
  private async properties(blob: BlockBlobClient, path: string, signal?: AbortSignal): Promise<BlobGetPropertiesResponse | undefined> {
    try {
      return await blob.getProperties({ abortSignal: signal });
    } catch (e) {
      if (statusOf(e) === 404) return undefined;
      throw storageError("read properties of", path, e, signal);
    }
  }

  /** An existing blob as a StoredObject: from its metadata, else by reading and hashing it. */
  private async describe(blob: BlockBlobClient, path: string, props: BlobGetPropertiesResponse, signal?: AbortSignal): Promise<StoredObject> {
    const length = props.contentLength ?? 0;
    const meta = props.metadata ?? {};
    const sha = meta.sha256 ?? meta.SHA256;
    const size = meta.size ?? meta.SIZE;
    if (sha !== undefined && /^[0-9a-f]{64}$/.test(sha) && size === String(length)) {
      return { path, size: length, sha256: sha, existed: true };
    }
    // Written without metadata (writeText, other tools): compute it. The etag pins the version read.
    try {
      const res = await blob.download(0, undefined, { abortSignal: signal, maxRetryRequests: 5, conditions: props.etag ? { ifMatch: props.etag } : undefined });
      const hash = createHash("sha256");
      let n = 0;
      if (res.readableStreamBody) {
        for await (const chunk of res.readableStreamBody) {
          const b = typeof chunk === "string" ? Buffer.from(chunk) : (chunk as Buffer);
          hash.update(b);
          n += b.byteLength;
        }
      }
      return { path, size: n, sha256: hash.digest("hex"), existed: true };
    } catch (e) {
      throw storageError("read", path, e, signal);
    }
  }

  async openObject(path: string, options?: { signal?: AbortSignal }): Promise<Readable> {
    const blob = this.blob(path);
    const signal = options?.signal;
    signal?.throwIfAborted();
    try {
      const res = await blob.download(0, undefined, { abortSignal: signal, maxRetryRequests: 5 });
      const stream = res.readableStreamBody;
      if (!stream) return Readable.from([]);
      return stream instanceof Readable ? stream : Readable.from(stream as AsyncIterable<Buffer>);
    } catch (e) {
      if (statusOf(e) === 404 && !signal?.aborted) throw new NotFoundError(path);
      throw storageError("open", path, e, signal);
    }
  }

  async statObject(path: string): Promise<{ size: number } | undefined> {
    const props = await this.properties(this.blob(path), path);
    return props ? { size: props.contentLength ?? 0 } : undefined;
  }

  async *listObjects(prefix: string): AsyncIterable<string> {
    checkListPrefix(prefix);
    try {
      for await (const item of this.container.listBlobsFlat(prefix ? { prefix } : {})) {
        // Blobs other tools put there under names no object can have are skipped, as in a folder.
        if (isObjectPath(item.name)) yield item.name;
      }
    } catch (e) {
      if (serviceCode(e) === "ContainerNotFound") return; // no container, no objects (like a missing folder)
      throw storageError("list", prefix || "/", e);
    }
  }

  async writeText(path: string, text: string): Promise<void> {
    const blob = this.blob(path);
    const bytes = Buffer.from(text, "utf8");
    const type = path.endsWith(".json") ? "application/json" : path.endsWith(".jsonl") ? "application/jsonl" : "text/plain";
    try {
      // One Put Blob: atomic, and it replaces any earlier version.
      await blob.upload(bytes, bytes.byteLength, { blobHTTPHeaders: { blobContentType: `${type}; charset=utf-8` } });
    } catch (e) {
      throw storageError("write", path, e);
    }
  }

  async readText(path: string): Promise<string | undefined> {
    const blob = this.blob(path);
    try {
      const res = await blob.download(0, undefined, { maxRetryRequests: 5 });
      const parts: Buffer[] = [];
      if (res.readableStreamBody) {
        for await (const chunk of res.readableStreamBody) parts.push(typeof chunk === "string" ? Buffer.from(chunk) : (chunk as Buffer));
      }
      return Buffer.concat(parts).toString("utf8");
    } catch (e) {
      if (statusOf(e) === 404) return undefined;
      throw storageError("read", path, e);
    }
  }

  async deleteObject(path: string): Promise<void> {
    const blob = this.blob(path);
    try {
      await blob.deleteIfExists({ deleteSnapshots: "include" });
    } catch (e) {
      throw storageError("delete", path, e);
    }
  }
}

/** Reads and discards the rest of a source whose object turned out to exist already. */
async function drainRest(it: AsyncIterator<Uint8Array>, signal?: AbortSignal): Promise<void> {
  for (;;) {
    const r = await nextChunk(it, signal);
    if (r.done) return;
  }
}
