import { createServer, request as httpRequest, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { mulberry32 } from "../simulator/prng";

/**
 * A fault-injecting HTTP proxy in front of Azurite: the store under test talks to real Azurite
 * through it, and it answers a share of requests itself with 500 or 503 (Azure Storage's
 * ServerBusy / InternalError bodies) or resets the connection, before or after forwarding.
 */

export interface FaultProxyOptions {
  /** Where Azurite listens, e.g. http://127.0.0.1:10000 */
  target: string;
  /** Share of requests (0..1) answered with a fault; decided by a seeded PRNG (repeatable). */
  faultRate: number;
  /** Only requests with these methods are candidates (default PUT and GET). */
  methods?: string[];
  seed?: number;
}

export interface FaultProxy {
  url: string;
  faults: { status500: number; status503: number; reset: number; forwarded: number };
  /** Stop injecting (the proxy keeps forwarding). */
  heal(): void;
  close(): Promise<void>;
}

export async function startFaultProxy(options: FaultProxyOptions): Promise<FaultProxy> {
  const target = new URL(options.target);
  const rand = mulberry32(options.seed ?? 7);
  const methods = new Set(options.methods ?? ["PUT", "GET"]);
  const faults = { status500: 0, status503: 0, reset: 0, forwarded: 0 };
  let rate = options.faultRate;
  const server: Server = createServer((req, res) => {
    const roll = methods.has(req.method ?? "") ? rand() : 1;
    if (roll < rate) {
      const kind = rand();
      // Drain the request first so the client sees a clean answer, as the service does.
      req.resume();
      req.on("end", () => {
        if (kind < 0.4) {
          faults.status503++;
          res.writeHead(503, { "Content-Type": "application/xml", "x-ms-error-code": "ServerBusy" });
          res.end('<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code><Message>The server is busy.</Message></Error>');
        } else if (kind < 0.8) {
          faults.status500++;
          res.writeHead(500, { "Content-Type": "application/xml", "x-ms-error-code": "InternalError" });
          res.end('<?xml version="1.0" encoding="utf-8"?><Error><Code>InternalError</Code><Message>The server encountered an internal error.</Message></Error>');
        } else {
          faults.reset++;
          res.socket?.destroy();
        }
      });
      return;
    }
    faults.forwarded++;
    const upstream = httpRequest(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
      },
    );
    upstream.on("error", () => res.socket?.destroy());
    req.pipe(upstream);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    faults,
    heal() {
      rate = 0;
    },
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
