/**
 * Base64 of a byte stream, produced as the bytes are read: each piece is encoded up to a multiple
 * of three bytes and the remainder carried into the next, so the output is exactly the base64 of
 * the whole, without ever holding the whole. Used for the item payload of Graph imports and EWS
 * UploadItems.
 */
export async function* base64Of(bytes: AsyncIterable<Uint8Array>): AsyncGenerator<Buffer> {
  let carry = Buffer.alloc(0);
  for await (const c of bytes) {
    const buf = carry.length ? Buffer.concat([carry, Buffer.from(c)]) : Buffer.from(c);
    const cut = buf.length - (buf.length % 3);
    if (cut > 0) yield Buffer.from(buf.subarray(0, cut).toString("base64"));
    carry = buf.subarray(cut);
  }
  if (carry.length) yield Buffer.from(carry.toString("base64"));
}
