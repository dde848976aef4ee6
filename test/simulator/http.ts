/** HTTP plumbing for the simulator: Graph error bodies, a fault-aware streaming body writer. */
import type { IncomingMessage, ServerResponse } from "node:http";
import { randomUUID } from "node:crypto";
import type { SimStats } from "./stats";

export const JSON_CONTENT_TYPE = "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8";

/** An error that becomes a Graph error response. */
export class GraphError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** Thrown to stop producing a body: the client went away or a body fault fired. */
export class BodyAbort extends Error {}

/** Per-request context: ids echoed in headers and error bodies. */
export class RequestContext {
  readonly requestId = randomUUID();
  readonly clientRequestId: string;

  constructor(
    readonly req: IncomingMessage,
    readonly res: ServerResponse,
    private readonly stats: SimStats,
  ) {
    const crid = req.headers["client-request-id"];
    this.clientRequestId = typeof crid === "string" && crid !== "" ? crid : randomUUID();
    res.setHeader("request-id", this.requestId);
    res.setHeader("client-request-id", this.clientRequestId);
  }

  /** Sends a Graph error body; if the body already started, kills the connection instead. */
  sendError(err: GraphError): void {
    const { res } = this;
    if (res.headersSent || res.writableEnded) {
      res.destroy();
      return;
    }
    const body = Buffer.from(
      JSON.stringify({
        error: {
          code: err.code,
          message: err.message,
          innerError: {
            date: new Date().toISOString().replace(/\.\d{3}Z$/, ""),
            "request-id": this.requestId,
            "client-request-id": this.clientRequestId,
          },
        },
      }),
    );
    res.statusCode = err.status;
    for (const [k, v] of Object.entries(err.headers)) res.setHeader(k, v);
    res.setHeader("Content-Type", JSON_CONTENT_TYPE);
    res.setHeader("Content-Length", body.length);
    this.stats.bytesSent += body.length;
    res.end(body);
  }
}

export interface BodyCut {
  kind: "reset" | "truncate";
  afterBytes: number;
}

export function sleep(ms: number): Promise<void> {
  return ms > 0 ? new Promise((r) => setTimeout(r, ms)) : Promise.resolve();
}

/**
 * Writes a (streamed, chunked) 200 body: honours backpressure, counts bytes, paces to
 * `bytesPerSecond`, and applies a body fault (`reset`: destroy the socket after N bytes;
 * `truncate`: end cleanly after N bytes, always at least one byte short of the full body).
 */
export class BodyWriter {
  private written = 0;
  private held: Buffer | null = null;
  private done = false;
  private readonly started = Date.now();

  constructor(
    private readonly res: ServerResponse,
    private readonly stats: SimStats,
    private readonly cut: BodyCut | undefined,
    private readonly bytesPerSecond: number | undefined,
  ) {}

  /** True when the body is plain (no fault, no pacing), so a Content-Length may be set. */
  get plain(): boolean {
    return this.cut === undefined && this.bytesPerSecond === undefined;
  }

  async write(input: Buffer): Promise<void> {
    if (this.done) throw new BodyAbort();
    let buf = input;
    if (this.cut?.kind === "truncate" && this.held) {
      buf = Buffer.concat([this.held, buf]);
      this.held = null;
    }
    if (this.cut) {
      const room = this.cut.afterBytes - this.written;
      if (buf.length > room) {
        await this.raw(buf.subarray(0, Math.max(0, room)));
        await this.fire();
        throw new BodyAbort();
      }
      if (this.cut.kind === "truncate" && buf.length > 0) {
        await this.raw(buf.subarray(0, buf.length - 1));
        this.held = buf.subarray(buf.length - 1);
        return;
      }
    }
    await this.raw(buf);
  }

  /** Ends the body (or, with a pending fault, fires it: a reset body never ends cleanly). */
  async end(): Promise<void> {
    if (this.done) return;
    if (this.cut) {
      await this.fire();
      return;
    }
    this.done = true;
    await new Promise<void>((resolve) => this.res.end(resolve));
  }

  private async fire(): Promise<void> {
    if (this.done) return;
    this.done = true;
    if (this.cut?.kind === "truncate") {
      await new Promise<void>((resolve) => this.res.end(resolve));
    } else {
      // The client must see the 200 status line before the connection dies.
      if (!this.res.headersSent) this.res.flushHeaders();
      await new Promise((r) => setTimeout(r, 5));
      this.res.destroy();
    }
  }

  private async raw(buf: Buffer): Promise<void> {
    if (buf.length === 0) return;
    const pace = this.bytesPerSecond;
    const step = pace ? 16 * 1024 : buf.length;
    for (let off = 0; off < buf.length; off += step) {
      const piece = buf.subarray(off, off + step);
      await this.rawPiece(piece, this.cut?.kind === "reset");
      if (pace) await sleep(this.started + (this.written / pace) * 1000 - Date.now());
    }
  }

  private rawPiece(piece: Buffer, waitFlush: boolean): Promise<void> {
    const res = this.res;
    if (res.destroyed || res.writableEnded) return Promise.reject(new BodyAbort());
    this.written += piece.length;
    this.stats.bytesSent += piece.length;
    return new Promise<void>((resolve, reject) => {
      let flushed = !waitFlush;
      let drained = true;
      const cleanup = (): void => {
        res.off("drain", onDrain);
        res.off("close", onClose);
      };
      const check = (): void => {
        if (flushed && drained) {
          cleanup();
          resolve();
        }
      };
      const onDrain = (): void => {
        drained = true;
        check();
      };
      const onClose = (): void => {
        cleanup();
        reject(new BodyAbort());
      };
      res.on("close", onClose);
      const ok = res.write(piece, (err) => {
        if (err) return onClose();
        flushed = true;
        check();
      });
      if (!ok) {
        drained = false;
        res.on("drain", onDrain);
      }
      check();
    });
  }
}
