import { createHash, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { type ExportElement, readExportResponse } from "../shared/export/exportResponse";
import { ProtocolError } from "../shared/errors";

/** A response body cut into pieces of `piece` bytes, so every token can straddle a chunk boundary. */
function body(text: string, piece = 7): Readable {
  const buf = Buffer.from(text);
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += piece) parts.push(buf.subarray(i, i + piece));
  return Readable.from(parts);
}

async function collect(b: Readable): Promise<Array<{ el: ExportElement; bytes?: Buffer }>> {
  const out: Array<{ el: ExportElement; bytes?: Buffer }> = [];
  for await (const el of readExportResponse(b)) {
    if (el.kind === "data") {
      const chunks: Buffer[] = [];
      for await (const c of el.data) chunks.push(c);
      out.push({ el, bytes: Buffer.concat(chunks) });
    } else out.push({ el });
  }
  return out;
}

describe("readExportResponse", () => {
  it("parses the documented sample, whatever the chunking", async () => {
    const sample = `{
      "@odata.context": "https://graph.microsoft.com/beta/$metadata#Collection(microsoft.graph.exportItemResponse)",
      "value": [
        {"itemId": "EDSVrdi3lRAADmpnf1AAA=", "changeKey": "CQAAABYAAACQ2fKdhq8oSKEDSVrdi3lRAAEu4C+G",
         "data": "VGhpcyBpcyBhIHRlc3QgZGF0YSB0aGF0IHdpbGwgYmUgY29udmVydGVkIHRvIGEgQmFzZTY0IHN0cmVhbQ=="},
        {"itemId": "EDSVrdi3lRAAD45b7RAAA=", "changeKey": "CQAAABYAAACQ2fKdhq8oSKEDSVrdi3lRAAD4pUax",
         "data": "VGhpcyBpcyBhIHRlc3QgZGF0YSB0aGF0IHdpbGwgYmUgY29udmVydGVkIHRvIGEgQmFzZTY0IHN0cmVhbQ=="}
      ]}`;
    for (const piece of [1, 3, 7, 64, 100000]) {
      const got = await collect(body(sample, piece));
      expect(got.map((g) => g.el.itemId)).toEqual(["EDSVrdi3lRAADmpnf1AAA=", "EDSVrdi3lRAAD45b7RAAA="]);
      expect(got[0].bytes?.toString()).toBe("This is a test data that will be converted to a Base64 stream");
      expect(got[1].el.kind === "data" && got[1].el.changeKey).toBe("CQAAABYAAACQ2fKdhq8oSKEDSVrdi3lRAAD4pUax");
    }
  });

  it("data written with JSON escapes (\\/ and \\u0041) or a multi-byte character nearby decodes the same, whatever the chunking", async () => {
    const bytes = randomBytes(300_000);
    const b64 = bytes.toString("base64");
    // Escape every '/' (some JSON writers do) and one 'A' as \u0041, at varying places.
    let escaped = b64.replace(/\//g, "\\/");
    const a = escaped.indexOf("A", 1000);
    escaped = `${escaped.slice(0, a)}\\u0041${escaped.slice(a + 1)}`;
    const text = `{"value":[{"itemId":"é-1","changeKey":"k","data":"${escaped}"},{"itemId":"b","changeKey":"k2","data":"${b64}"}]}`;
    for (const piece of [5, 4096, 65536]) {
      const got = await collect(body(text, piece));
      expect(got.map((g) => g.el.itemId)).toEqual(["é-1", "b"]);
      expect(got[0].bytes?.equals(bytes)).toBe(true);
      expect(got[1].bytes?.equals(bytes)).toBe(true);
    }
  });

  it("decodes a large item exactly, in bounded pieces", async () => {
    const bytes = randomBytes(3 * 1024 * 1024 + 1);
    const text = `{"value":[{"itemId":"a","changeKey":"k","data":"${bytes.toString("base64")}"}]}`;
    let largest = 0;
    const h = createHash("sha256");
    for await (const el of readExportResponse(body(text, 65536))) {
      if (el.kind !== "data") throw new Error("expected data");
      for await (const c of el.data) {
        largest = Math.max(largest, c.length);
        h.update(c);
      }
      expect(el.data.bytes).toBe(bytes.length);
    }
    expect(h.digest("hex")).toBe(createHash("sha256").update(bytes).digest("hex"));
    expect(largest).toBeLessThanOrEqual(256 * 1024);
  });

  it("reports per-item errors, with either spelling of the error key", async () => {
    const text = `{"value":[
      {"itemId":"x1","error":{"code":"ErrorItemNotFound","message":"gone"}},
      {"itemId":"x2","Error":{"code":"ErrorArchiveFolderMovedPermanently","message":"https://graph.microsoft.com/beta/x"}},
      {"itemId":"x3","changeKey":"c","data":"QUJD"}]}`;
    const got = await collect(body(text));
    expect(got.map((g) => g.el.kind)).toEqual(["error", "error", "data"]);
    expect(got[0].el.kind === "error" && got[0].el.error.code).toBe("ErrorItemNotFound");
    expect(got[1].el.kind === "error" && got[1].el.error.code).toBe("ErrorArchiveFolderMovedPermanently");
    expect(got[2].bytes?.toString()).toBe("ABC");
  });

  it("spools data that arrives before its itemId, and names it once the id is known", async () => {
    const got = await collect(body(`{"value":[{"data":"SGVsbG8=","changeKey":"c","itemId":"late"}]}`));
    expect(got).toHaveLength(1);
    expect(got[0].el.itemId).toBe("late");
    expect(got[0].bytes?.toString()).toBe("Hello");
  });

  it("skips unknown properties and the items a consumer does not read", async () => {
    const text = `{"@odata.context":"x","extra":{"a":[1,2,{"b":null}]},"value":[
      {"itemId":"a","unknown":[true,false],"data":"QUFBQQ=="},{"itemId":"b","data":"QkJCQg=="}],"@odata.nextLink":"n"}`;
    const ids: string[] = [];
    for await (const el of readExportResponse(body(text))) ids.push(el.itemId); // data never read: drained by the reader
    expect(ids).toEqual(["a", "b"]);
  });

  it("rejects invalid base64 for that item and still reads the rest", async () => {
    const text = `{"value":[{"itemId":"bad","data":"QUJD!!!!QUJD"},{"itemId":"good","data":"QUJD"}]}`;
    const seen: string[] = [];
    for await (const el of readExportResponse(body(text))) {
      if (el.kind !== "data") continue;
      try {
        for await (const _ of el.data) void _;
        seen.push(`${el.itemId}:ok`);
      } catch (e) {
        expect(e).toBeInstanceOf(ProtocolError);
        expect((e as ProtocolError).code).toBe("InvalidBase64");
        seen.push(`${el.itemId}:invalid`);
      }
    }
    expect(seen).toEqual(["bad:invalid", "good:ok"]);
  });

  it.each([
    ["misplaced padding", `QQ==QUJD`],
    ["too much padding", `QQ===`],
    ["a lone trailing character", `QUJDR`],
    ["a JSON escape that decodes to a non-base64 character", `QUJD\\n`],
  ])("rejects %s", async (_name, data) => {
    const text = `{"value":[{"itemId":"a","data":"${data}"}]}`;
    await expect(collect(body(text))).rejects.toMatchObject({ code: "InvalidBase64" });
  });

  it("gives typed, retryable errors for truncated and broken JSON", async () => {
    await expect(collect(body(`{"value":[{"itemId":"a","data":"QUJD`))).rejects.toMatchObject({ code: "TruncatedResponse", retryable: true });
    await expect(collect(body(`{"value":[{"itemId":"a","data":"QUJD"},,]}`))).rejects.toMatchObject({ code: "MalformedJson" });
    await expect(collect(body(`[1,2]`))).rejects.toMatchObject({ code: "MalformedResponse" });
    await expect(collect(body(`{"error":{"code":"x"}}`))).rejects.toMatchObject({ code: "MalformedResponse" });
    await expect(collect(body(`{"value":[{"changeKey":"c","data":"QUJD"}]}`))).rejects.toMatchObject({ code: "MalformedResponse" });
  });

  it("reports an element with neither data nor error", async () => {
    const got = await collect(body(`{"value":[{"itemId":"a","changeKey":"c"}]}`));
    expect(got[0].el).toMatchObject({ kind: "error", error: { code: "NoData" } });
  });

  it("refuses absurdly long ids instead of buffering them", async () => {
    const text = `{"value":[{"itemId":"${"a".repeat(10000)}","data":"QUJD"}]}`;
    await expect(collect(body(text, 4096))).rejects.toMatchObject({ code: "ValueTooLong" });
  });
});
