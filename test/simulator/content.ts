/**
 * Deterministic item content. The simulator never stores generated item bytes: an item's bytes are
 * the AES-128-CTR keystream under a key derived from (mailboxId, itemId, changeKey), so any version
 * of any item can be regenerated (and hashed) on demand at several hundred MB/s, and every block
 * differs. Only items created or updated through importItem keep their (imported) bytes in memory;
 * `contentChunks` knows nothing about those (use `sim.itemContent` / `sim.sha256Of`).
 */
import { createCipheriv, createHash } from "node:crypto";
import { hashParts } from "./prng";

/** Default chunk size of generated content: 192 KiB, a multiple of 3 so base64 chunks concatenate. */
export const CONTENT_CHUNK = 3 * 64 * 1024;

const ZEROS = Buffer.alloc(CONTENT_CHUNK);

/** Identifies one version of one item. */
export interface ContentKey {
  mailboxId: string;
  itemId: string;
  changeKey: string;
  size: number;
}

/** Yields the item's bytes in chunks of `chunkSize` (the last one shorter). Synchronous and fast. */
export function* contentChunks(key: ContentKey, chunkSize: number = CONTENT_CHUNK): Generator<Buffer> {
  if (!Number.isInteger(key.size) || key.size < 0) throw new RangeError(`invalid item size ${key.size}`);
  const seed = hashParts("content", key.mailboxId, key.itemId, key.changeKey);
  const cipher = createCipheriv("aes-128-ctr", seed.subarray(0, 16), seed.subarray(16, 32));
  const zeros = chunkSize <= ZEROS.length ? ZEROS : Buffer.alloc(chunkSize);
  let left = key.size;
  while (left > 0) {
    const n = Math.min(left, chunkSize);
    yield cipher.update(zeros.subarray(0, n));
    left -= n;
  }
}

/** Yields a stored Buffer (an imported item's bytes) in chunks of `chunkSize` (views, no copies). */
export function* bufferChunks(buf: Buffer, chunkSize: number = CONTENT_CHUNK): Generator<Buffer> {
  if (!Number.isInteger(chunkSize) || chunkSize <= 0) throw new RangeError(`invalid chunk size ${chunkSize}`);
  for (let off = 0; off < buf.length; off += chunkSize) yield buf.subarray(off, off + chunkSize);
}

/** The whole content as one Buffer (tests with small items only). */
export function contentBuffer(key: ContentKey): Buffer {
  return Buffer.concat([...contentChunks(key)]);
}

/** sha256 (lowercase hex) of the content, computed by streaming the generator. */
export function contentSha256(key: ContentKey): string {
  const h = createHash("sha256");
  for (const chunk of contentChunks(key)) h.update(chunk);
  return h.digest("hex");
}
