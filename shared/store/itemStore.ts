import type { Readable } from "node:stream";

/**
 * One interface over the two places a backup can live: an Azure Blob container and a local folder.
 * Paths are `/`-separated, relative to the store root, and made only of characters that are safe on
 * blob storage and on case-insensitive file systems (see `naming.ts`). The layout is the same in both.
 */

export interface PutObjectOptions {
  /** When known, the byte count the object must have; a mismatch fails the put and nothing is visible. */
  expectedSize?: number;
  /** When known, the lowercase hex sha256 the object must have; a mismatch fails the put. */
  expectedSha256?: string;
  signal?: AbortSignal;
}

export interface StoredObject {
  /** Path relative to the store root. */
  path: string;
  /** Bytes stored. */
  size: number;
  /** Lowercase hex sha256 of the stored bytes. */
  sha256: string;
  /**
   * True when an object already existed at this path: the put kept the existing object (versions are
   * never overwritten in place) and `size`/`sha256` describe that existing object.
   */
  existed: boolean;
}

export interface ItemStore {
  /** Where this store is, for humans: a folder path or a container URL. Never a secret. */
  readonly location: string;

  /**
   * Streams `body` into a new object at `path`. The object becomes visible only when every byte has
   * arrived and matched the expectations (staged blocks then commit; temp file then rename). If the
   * source stream errors or the signal aborts, nothing is visible at `path` afterwards.
   * If an object already exists at `path` it is kept untouched (no overwrite) and described; the
   * body is then drained and discarded, so a caller reading a shared stream can go on.
   */
  putObject(path: string, body: AsyncIterable<Uint8Array>, options?: PutObjectOptions): Promise<StoredObject>;

  /** Reads an object as a stream. Throws NotFoundError when it does not exist. */
  openObject(path: string, options?: { signal?: AbortSignal }): Promise<Readable>;

  /** Size of the object, or undefined when it does not exist. */
  statObject(path: string): Promise<{ size: number } | undefined>;

  /** Every object path below `prefix` (a folder-like prefix ending in `/`, or "" for all). Order unspecified. */
  listObjects(prefix: string): AsyncIterable<string>;

  /** Small documents (manifests, summaries, state): written whole, atomically, overwriting. */
  writeText(path: string, text: string): Promise<void>;
  /** Reads a small document, or undefined when it does not exist. */
  readText(path: string): Promise<string | undefined>;

  /** Removes an object if it exists (used for temporary parts, never for item versions). */
  deleteObject(path: string): Promise<void>;
}
