/** Small deterministic helpers shared by the simulator: a seeded PRNG and hash-derived ids. */
import { createHash } from "node:crypto";

/** mulberry32: a fast 32-bit seeded PRNG returning floats in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** sha256 of the parts joined by NUL, as a Buffer. */
export function hashParts(...parts: Array<string | number>): Buffer {
  const h = createHash("sha256");
  parts.forEach((p, i) => {
    if (i > 0) h.update("\0");
    h.update(String(p));
  });
  return h.digest();
}

/** `n` deterministic bytes derived from the parts (sha256 in counter mode). */
export function derivedBytes(n: number, ...parts: Array<string | number>): Buffer {
  const out: Buffer[] = [];
  let have = 0;
  for (let counter = 0; have < n; counter++) {
    const block = hashParts(...parts, `#${counter}`);
    out.push(block);
    have += block.length;
  }
  return Buffer.concat(out).subarray(0, n);
}

/** A GUID string (8-4-4-4-12, lowercase) derived from the parts. */
export function derivedGuid(...parts: Array<string | number>): string {
  const b = Buffer.from(derivedBytes(16, "guid", ...parts));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * A Graph-looking Exchange id: standard base64 (not URL-safe), 140 characters, always containing
 * `+`, `/` and a trailing `=`. `prefix` (e.g. the mailbox GUID bytes) is shared by ids of one mailbox,
 * as in real Exchange ids.
 */
export function exchangeId(prefix: Buffer, ...parts: Array<string | number>): string {
  // Layout: 4 fixed bytes, 38 mailbox bytes, 3 marker bytes, 59 unique bytes = 104 bytes -> 140 chars, one '='.
  const head = Buffer.from([0x00, 0x00, 0x03, 0x24]);
  const mbx = derivedBytes(38, "idprefix", prefix.toString("hex"));
  // 0xfb 0xff 0xbf encodes to "+/+/": guarantees both characters.
  const marker = Buffer.from([0xfb, 0xff, 0xbf]);
  const unique = derivedBytes(59, "id", ...parts);
  return Buffer.concat([head, mbx, marker, unique]).toString("base64");
}

/** A changeKey-looking string: base64 of 24 bytes starting like real change keys ("CQAAABYAAAC..."). */
export function changeKeyFor(...parts: Array<string | number>): string {
  const head = Buffer.from([0x09, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00, 0x00]);
  return Buffer.concat([head, derivedBytes(22, "ck", ...parts)]).toString("base64");
}

/** An opaque URL-safe token (for $skiptoken / $deltatoken). */
export function opaqueToken(...parts: Array<string | number>): string {
  return derivedBytes(33, "tok", ...parts).toString("base64url");
}
