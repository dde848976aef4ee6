import type { Readable } from "node:stream";
import { StringDecoder } from "node:string_decoder";
import sax from "sax";
import { ProtocolError } from "../errors";
import { Base64Decoder, type DecodedData, type ExportElement, shortId } from "../export/exportResponse";

/**
 * Streaming reader of an EWS ExportItems response (seeds/ews-ExportItems-operation.txt):
 *
 *   <m:ExportItemsResponse><m:ResponseMessages>
 *     <m:ExportItemsResponseMessage ResponseClass="Success">
 *       <m:ResponseCode>NoError</m:ResponseCode><m:ItemId Id=".." ChangeKey=".."/><m:Data>base64</m:Data>
 *     <m:ExportItemsResponseMessage ResponseClass="Error">
 *       <m:MessageText/><m:ResponseCode>ErrorInvalidChangeKey</m:ResponseCode><m:DescriptiveLinkKey/><m:MessageXml/>?
 *
 * Response messages come in request order and error messages carry no ItemId (see the seed's error
 * example), so an item is named by its position; a success message's own ItemId is used when it is
 * one of the requested ids. Each `<m:Data>` is decoded while it arrives (sax hands out text in
 * pieces of at most its 64 KB buffer, base64 whitespace is dropped), so memory stays flat whatever
 * the item's size.
 */

type SaxEvent =
  | { type: "open"; name: string; attrs: Record<string, string> }
  | { type: "text"; text: string }
  | { type: "close"; name: string };

const local = (qname: string) => qname.slice(qname.indexOf(":") + 1);

/** Pulls sax events, feeding the parser from the body only when the queue runs dry. */
class EventReader {
  private readonly queue: SaxEvent[] = [];
  private head = 0;
  // `position` must stay on: sax checks its text buffer (and hands out long text in pieces) by position.
  private readonly parser = sax.parser(true, { trim: false, normalize: false, xmlns: false, position: true });
  private readonly chunks: AsyncIterator<Buffer | string>;
  private readonly utf8 = new StringDecoder("utf8");
  private ended = false;
  private error: Error | undefined;
  /**
   * Set while an item's `<m:Data>` is being read: incoming text up to the next `<` or `&` is handed
   * out as it is, without going through sax character by character (base64 holds neither, so this
   * is the same text sax would give; a `<` or `&` hands the rest back to sax). It more than halves
   * the parsing cost of a large item.
   */
  private rawText = false;

  constructor(body: Readable) {
    this.chunks = body[Symbol.asyncIterator]();
    this.parser.onopentag = (t) => {
      const attrs: Record<string, string> = {};
      for (const [k, v] of Object.entries(t.attributes)) attrs[local(k)] = typeof v === "string" ? v : v.value;
      this.queue.push({ type: "open", name: local(t.name), attrs });
    };
    this.parser.onclosetag = (name) => this.queue.push({ type: "close", name: local(name) });
    this.parser.ontext = (text) => this.queue.push({ type: "text", text });
    this.parser.oncdata = (text) => this.queue.push({ type: "text", text });
    this.parser.ondoctype = () => {
      this.error = new ProtocolError("MalformedXml", "the ExportItems response declares a DTD, which EWS never does");
    };
    this.parser.onerror = (e) => {
      this.error = new ProtocolError("MalformedXml", `the ExportItems response is not well-formed XML: ${e.message.split("\n")[0].slice(0, 200)}`, { retryable: true });
    };
  }

  /** Starts handing out an element's text directly (see rawText); sax's pending text goes first. */
  beginRawText(): void {
    this.parser.flush();
    this.rawText = true;
  }

  endRawText(): void {
    this.rawText = false;
  }

  async next(): Promise<SaxEvent | undefined> {
    while (this.head >= this.queue.length) {
      if (this.error) throw this.error;
      if (this.ended) return undefined;
      this.queue.length = 0;
      this.head = 0;
      let r: IteratorResult<Buffer | string>;
      try {
        r = await this.chunks.next();
      } catch (e) {
        throw new ProtocolError("ResponseInterrupted", `the ExportItems response was interrupted: ${e instanceof Error ? e.message.slice(0, 200) : String(e)}`, { retryable: true, cause: e });
      }
      try {
        if (r.done) {
          this.ended = true;
          this.parser.write(this.utf8.end());
          this.parser.close();
        } else {
          const text = typeof r.value === "string" ? r.value : this.utf8.write(r.value);
          // Raw only while sax sits in an element's text: a chunk may have ended inside `</m:Data>`.
          if (this.rawText && this.inText()) {
            this.parser.flush();
            this.writeRaw(text);
          } else this.parser.write(text);
        }
      } catch (e) {
        // sax throws after calling onerror; the recorded error is the one to report.
        this.error ??= new ProtocolError("MalformedXml", `the ExportItems response is not well-formed XML: ${String(e).slice(0, 200)}`, { retryable: true });
      }
      // At the end, sax complains about unclosed tags: the body stopped before the document did.
      if (this.error && this.ended) this.error = new ProtocolError("TruncatedResponse", "the ExportItems response ended before its XML was complete", { retryable: true });
      if (this.error) throw this.error;
    }
    return this.queue[this.head++];
  }

  /** sax is inside an element's text (its `state` and `STATE` are public in sax, missing from @types/sax). */
  private inText(): boolean {
    return (this.parser as unknown as { state: number }).state === (sax as unknown as { STATE: { TEXT: number } }).STATE.TEXT;
  }

  private writeRaw(text: string): void {
    const lt = text.indexOf("<");
    const amp = text.indexOf("&");
    const stop = lt < 0 ? amp : amp < 0 ? lt : Math.min(lt, amp);
    if (stop < 0) {
      if (text) this.queue.push({ type: "text", text });
      return;
    }
    if (stop > 0) this.queue.push({ type: "text", text: text.slice(0, stop) });
    // Markup or a reference: sax (still inside the element's text) takes it from here.
    this.rawText = false;
    this.parser.write(text.slice(stop));
  }
}

/** Iterates the per-item outcomes of an ExportItems response for `requested` ids, in request order. */
export async function* readEwsExportResponse(body: Readable, requested: readonly string[]): AsyncGenerator<ExportElement> {
  const r = new EventReader(body);
  const wanted = new Set(requested);
  let index = 0;
  let sawMessages = false;
  let depthInResponse = 0;
  for (let e = await r.next(); e; e = await r.next()) {
    if (e.type === "open" && e.name === "ResponseMessages") {
      sawMessages = true;
      depthInResponse = 1;
      continue;
    }
    if (!depthInResponse) continue;
    if (e.type === "close" && e.name === "ResponseMessages") {
      depthInResponse = 0;
      continue;
    }
    if (e.type !== "open") continue;
    // One response message per requested id, whatever its element name.
    const position = index++;
    yield* readMessage(r, e.name, e.attrs.ResponseClass ?? "Error", requested[position], wanted);
  }
  if (!sawMessages) throw new ProtocolError("TruncatedResponse", "the ExportItems response ended before its ResponseMessages", { retryable: true });
  if (depthInResponse) throw new ProtocolError("TruncatedResponse", "the ExportItems response ended before its ResponseMessages were complete", { retryable: true });
}

async function* readMessage(r: EventReader, element: string, responseClass: string, positional: string | undefined, wanted: Set<string>): AsyncGenerator<ExportElement> {
  let code: string | undefined;
  let messageText = "";
  const details: Record<string, string> = {};
  let itemId: string | undefined;
  let changeKey: string | undefined;
  let delivered = false;
  let field: string | undefined;
  let valueName: string | undefined;
  let text = "";
  for (let e = await r.next(); ; e = await r.next()) {
    if (!e) throw new ProtocolError("TruncatedResponse", "the ExportItems response ended inside a response message", { retryable: true });
    if (e.type === "close" && e.name === element) break;
    if (e.type === "open") {
      if (e.name === "ItemId") {
        const id = e.attrs.Id;
        itemId = id && wanted.has(id) ? id : positional;
        changeKey = e.attrs.ChangeKey || undefined;
      } else if (e.name === "Data") {
        const id = itemId ?? positional;
        const data = new XmlData(r, id ?? "(unknown)");
        if (id !== undefined && responseClass !== "Error" && !delivered) {
          delivered = true;
          yield { kind: "data", itemId: id, changeKey, data };
        }
        await data.drain();
      } else if (e.name === "Value") {
        valueName = e.attrs.Name;
        field = "Value";
        text = "";
      } else {
        field = e.name;
        text = "";
      }
    } else if (e.type === "text") {
      if (field && text.length < 4096) text += e.text;
    } else if (e.type === "close") {
      if (e.name === "ResponseCode") code = text.trim();
      else if (e.name === "MessageText") messageText = text.trim().slice(0, 2000);
      else if (e.name === "Value" && valueName) details[valueName] = text.trim().slice(0, 200);
      field = undefined;
    }
  }
  if (positional === undefined) return; // more messages than ids asked for: nothing to attach them to
  const id = itemId ?? positional;
  if (delivered) return;
  if (responseClass === "Error" || (code && code !== "NoError")) {
    const extra = Object.entries(details).map(([k, v]) => `${k} ${v}`).join(", ");
    const backOff = Number(details.BackOffMilliseconds);
    yield {
      kind: "error",
      itemId: id,
      error: { code: code || "UnknownError", message: `${messageText || code || "error"}${extra ? ` (${extra})` : ""}` },
      ...(Number.isFinite(backOff) && backOff >= 0 && details.BackOffMilliseconds !== undefined ? { backOffMs: backOff } : {}),
    };
    return;
  }
  yield { kind: "error", itemId: id, error: { code: "NoData", message: `the ExportItems response carried no Data for item ${shortId(id)}` } };
}

/** The decoded bytes of one `<m:Data>`, pulled from the event stream on demand. */
class XmlData implements DecodedData {
  private readonly decoder = new Base64Decoder();
  private finished = false;
  private started = false;

  constructor(private readonly r: EventReader, private readonly itemId: string) {}

  get bytes(): number {
    return this.decoder.bytes;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    if (this.started) throw new Error("item data can be read once");
    this.started = true;
    this.r.beginRawText();
    try {
      while (!this.finished) {
        const e = await this.r.next();
        if (!e) throw new ProtocolError("TruncatedResponse", "the ExportItems response ended inside an item's Data", { retryable: true });
        if (e.type === "close" && e.name === "Data") {
          this.finished = true;
          this.r.endRawText();
          const last = this.decoder.end(this.itemId);
          if (last?.length) yield last;
          return;
        }
        if (e.type !== "text") throw new ProtocolError("MalformedResponse", "an ExportItems Data element holds markup", { retryable: false });
        // xs:base64Binary may be wrapped over lines; the decoder wants the bare alphabet.
        const out = this.decoder.push(e.text.replace(/\s+/g, ""), this.itemId);
        if (out?.length) yield out;
      }
    } finally {
      this.r.endRawText();
    }
  }

  async drain(): Promise<void> {
    if (!this.finished) this.r.beginRawText();
    while (!this.finished) {
      const e = await this.r.next();
      if (!e) throw new ProtocolError("TruncatedResponse", "the ExportItems response ended inside an item's Data", { retryable: true });
      if (e.type === "close" && e.name === "Data") this.finished = true;
    }
    this.r.endRawText();
  }
}
