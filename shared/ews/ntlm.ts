import { type Agent as HttpAgent, Agent as HttpPlainAgent, type IncomingMessage, request as httpRequest } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { pipeline, Readable } from "node:stream";
import { ntlm } from "httpntlm";
import { EwsError } from "./soap";

/**
 * NTLM sign-in for Exchange Server's EWS, the default on the EWS virtual directory on premises.
 * NTLM authenticates a TCP connection, not a request: the handshake (Type 1 -> 401 with the
 * server's Type 2 challenge -> the request with Type 3) runs on one kept-alive connection, which
 * then carries later requests without credentials. Node's fetch gives no hold on connections, so
 * this transport uses node:http(s) with one single-socket agent per connection and keeps a pool
 * of them. The NTLM messages (NTLMv2) come from httpntlm.
 */

export interface NtlmCredentials {
  /** `DOMAIN\user`, `user@domain` (UPN) or `user` with `domain`. */
  username: string;
  password: string;
  domain?: string;
  workstation?: string;
}

interface Connection {
  agent: HttpAgent;
  /** The handshake ran on this agent's current socket (or is about to finish with the next request). */
  authenticated: boolean;
  /** Type 3 goes with the first request after the challenge; later requests ride the connection. */
  pendingType3?: string;
}

export interface NtlmRequest {
  headers: Record<string, string>;
  /** The body, produced afresh for each send (a rejected first send is sent again after the handshake). */
  body: () => AsyncIterable<Uint8Array>;
  signal?: AbortSignal;
  headersTimeoutMs: number;
}

export class NtlmTransport {
  private readonly idle: Connection[] = [];
  private readonly all = new Set<Connection>();
  private readonly options: { username: string; password: string; domain: string; workstation: string };
  private readonly https: boolean;

  constructor(private readonly url: string, credentials: NtlmCredentials) {
    const u = credentials.username;
    const slash = u.indexOf("\\");
    this.options = {
      username: slash >= 0 ? u.slice(slash + 1) : u,
      domain: slash >= 0 ? u.slice(0, slash) : (credentials.domain ?? ""),
      password: credentials.password,
      workstation: credentials.workstation ?? "",
    };
    this.https = new URL(url).protocol === "https:";
  }

  /** POSTs on an authenticated connection (handshaking first when the connection is new). */
  async post(req: NtlmRequest): Promise<Response> {
    const conn = this.idle.pop() ?? this.open();
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.idle.push(conn);
    };
    try {
      // An idle connection whose socket the server has closed (servers drop idle keep-alive
      // connections) would send the whole body unauthenticated just to be refused: handshake first.
      if (conn.authenticated && !hasLiveSocket(conn.agent)) conn.authenticated = false;
      const reused = conn.authenticated;
      if (!reused) await this.handshake(conn, req);
      let res = await this.send(conn, req.headers, req.body(), req);
      if (res.statusCode === 401 && reused) {
        // The server had closed the authenticated connection and the agent opened a new one.
        await drain(res);
        conn.authenticated = false;
        await this.handshake(conn, req);
        res = await this.send(conn, req.headers, req.body(), req);
      }
      // A 401 right after the handshake: the credentials were refused.
      if (res.statusCode === 401) conn.authenticated = false;
      // The connection is free for the next call once this response has been read to the end; a
      // response abandoned midway takes its socket (and so the authentication) with it.
      let ended = false;
      res.once("end", () => {
        ended = true;
      });
      res.once("close", () => {
        if (!ended) conn.authenticated = false;
        release();
      });
      try {
        return toResponse(res);
      } catch (e) {
        res.destroy(); // a status Response refuses: free the connection's only socket
        throw e;
      }
    } catch (e) {
      conn.authenticated = false;
      release();
      throw e;
    }
  }

  close(): void {
    for (const c of this.all) c.agent.destroy();
  }

  private open(): Connection {
    const agent = this.https ? new HttpsAgent({ keepAlive: true, maxSockets: 1 }) : new HttpPlainAgent({ keepAlive: true, maxSockets: 1 });
    const conn = { agent, authenticated: false };
    this.all.add(conn);
    return conn;
  }

  private async handshake(conn: Connection, req: NtlmRequest): Promise<void> {
    const challenge = await this.send(conn, { ...req.headers, Authorization: ntlm.createType1Message(this.options), "Content-Length": "0" }, emptyBody(), req);
    const header = challenge.headers["www-authenticate"];
    await drain(challenge);
    const type2Header = (Array.isArray(header) ? header : [header ?? ""]).flatMap((h) => h.split(",")).map((h) => h.trim()).find((h) => /^NTLM\s+\S/.test(h));
    if (challenge.statusCode !== 401 || !type2Header) {
      throw new EwsError(challenge.statusCode ?? 0, "NtlmNotOffered", `the EWS server did not answer the NTLM negotiation with a challenge (HTTP ${challenge.statusCode}); check MAILVAULT_EWS_AUTH`);
    }
    let failure: Error | undefined;
    const type2 = ntlm.parseType2Message(type2Header, (e) => {
      failure = e;
    });
    if (!type2 || failure) throw new EwsError(401, "NtlmChallengeInvalid", "the EWS server's NTLM challenge could not be read");
    conn.pendingType3 = ntlm.createType3Message(type2, this.options);
    conn.authenticated = true; // the next request on this connection carries Type 3, then none
  }

  private send(conn: Connection, headers: Record<string, string>, body: AsyncIterable<Uint8Array>, req: NtlmRequest): Promise<IncomingMessage> {
    const h: Record<string, string> = { ...headers, Connection: "keep-alive" };
    if (conn.pendingType3 && !h.Authorization) {
      h.Authorization = conn.pendingType3;
      conn.pendingType3 = undefined;
    }
    return new Promise<IncomingMessage>((resolve, reject) => {
      const u = new URL(this.url);
      const r = (this.https ? httpsRequest : httpRequest)(
        { protocol: u.protocol, hostname: u.hostname.replace(/^\[(.*)\]$/, "$1"), port: u.port, path: `${u.pathname}${u.search}`, method: "POST", headers: h, agent: conn.agent, signal: req.signal },
        (res) => {
          clearTimeout(timer);
          resolve(res);
        },
      );
      const timer = setTimeout(() => r.destroy(new Error(`no response headers within ${req.headersTimeoutMs} ms`)), req.headersTimeoutMs);
      r.on("error", (e) => {
        clearTimeout(timer);
        reject(e);
      });
      // pipeline (not pipe): a failed or aborted request also closes the body's source (a stored item being read).
      pipeline(Readable.from(body), r, () => {});
    });
  }
}

async function* emptyBody(): AsyncGenerator<Uint8Array> {}

/** The agent still holds an open, idle socket (the authenticated one). */
function hasLiveSocket(agent: HttpAgent): boolean {
  return Object.values(agent.freeSockets).some((list) => (list ?? []).some((socket) => !socket.destroyed));
}

async function drain(res: IncomingMessage): Promise<void> {
  for await (const _ of res) void _;
}

function toResponse(res: IncomingMessage): Response {
  const headers = new Headers();
  for (const [k, v] of Object.entries(res.headers)) {
    if (Array.isArray(v)) for (const x of v) headers.append(k, x);
    else if (v !== undefined) headers.set(k, v);
  }
  return new Response(Readable.toWeb(res) as ReadableStream<Uint8Array>, { status: res.statusCode ?? 500, headers });
}
