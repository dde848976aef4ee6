/**
 * Import-side state of the simulator: preauthenticated import sessions (the `authtoken` of an
 * `importUrl`) and the per-mailbox upload budget (Exchange Online: 150 MB per 5 minutes per app
 * and mailbox). No HTTP here.
 */
import { randomBytes } from "node:crypto";

/** @internal one import session */
export interface SessionRec {
  token: string;
  /** Canonical MBX id of the mailbox the session imports into. */
  mailboxId: string;
  version: "v1.0" | "beta";
  importUrl: string;
  createdAt: number;
  expiresAt: number;
}

/** A snapshot of an import session (`sim.importSessions(mailboxId)`). */
export interface SimImportSession {
  readonly mailboxId: string;
  readonly version: "v1.0" | "beta";
  /** The preauthenticated URL as returned by createImportSession. */
  readonly importUrl: string;
  /** The opaque `authtoken` query value of `importUrl`. */
  readonly token: string;
  readonly createdDateTime: string;
  readonly expirationDateTime: string;
  /** True once the lifetime ran out or `expireImportSessions` was called. */
  readonly expired: boolean;
}

/** Most sessions kept (oldest dropped first; a dropped token then reads as unknown, still 401). */
const MAX_SESSIONS = 10_000;

export class ImportSessions {
  private readonly byToken = new Map<string, SessionRec>();

  create(mailboxId: string, version: "v1.0" | "beta", lifetimeMs: number, urlOf: (token: string) => string): SessionRec {
    const token = randomBytes(48).toString("base64url");
    const now = Date.now();
    const rec: SessionRec = { token, mailboxId, version, importUrl: urlOf(token), createdAt: now, expiresAt: now + Math.max(0, lifetimeMs) };
    this.byToken.set(token, rec);
    while (this.byToken.size > MAX_SESSIONS) {
      const oldest = this.byToken.keys().next().value;
      if (oldest === undefined) break;
      this.byToken.delete(oldest);
    }
    return rec;
  }

  get(token: string): SessionRec | undefined {
    return this.byToken.get(token);
  }

  /** Expires every current session of the mailbox; returns how many were still valid. */
  expireAll(mailboxId: string): number {
    const now = Date.now();
    let n = 0;
    for (const s of this.byToken.values()) {
      if (s.mailboxId === mailboxId && s.expiresAt > now) {
        s.expiresAt = now;
        n++;
      }
    }
    return n;
  }

  list(mailboxId: string): SimImportSession[] {
    const now = Date.now();
    const out: SimImportSession[] = [];
    for (const s of this.byToken.values()) {
      if (s.mailboxId !== mailboxId) continue;
      out.push({
        mailboxId: s.mailboxId,
        version: s.version,
        importUrl: s.importUrl,
        token: s.token,
        createdDateTime: new Date(s.createdAt).toISOString(),
        expirationDateTime: new Date(s.expiresAt).toISOString(),
        expired: s.expiresAt <= now,
      });
    }
    return out;
  }
}

/** Usage of a mailbox's upload budget (`sim.importUsage(mailboxId)`). */
export interface ImportUsage {
  /** Request-body bytes charged in the current window. */
  readonly bytesInWindow: number;
  readonly budgetBytes: number;
  readonly windowMs: number;
}

/**
 * Sliding-window upload budget per mailbox. Every importItem body that gets past auth, admission
 * and faults is charged with its length (request bytes, i.e. the JSON with the base64 `Data`).
 * A body that would push the window over the budget is refused (not charged); a body is always
 * accepted when nothing else is charged in the window (so an item larger than the budget can pass).
 */
export class ImportPacer {
  private readonly windows = new Map<string, Array<{ at: number; bytes: number }>>();

  private live(key: string, windowMs: number, now: number): Array<{ at: number; bytes: number }> {
    const list = this.windows.get(key) ?? [];
    let drop = 0;
    while (drop < list.length && list[drop].at + windowMs <= now) drop++;
    if (drop > 0) list.splice(0, drop);
    if (list.length === 0) this.windows.delete(key);
    else this.windows.set(key, list);
    return list;
  }

  used(key: string, windowMs: number, now = Date.now()): number {
    return this.live(key, windowMs, now).reduce((a, e) => a + e.bytes, 0);
  }

  /** Charges `bytes` and returns null, or returns the ms until enough budget frees up. */
  tryCharge(key: string, bytes: number, budget: number, windowMs: number, now = Date.now()): number | null {
    const list = this.live(key, windowMs, now);
    const used = list.reduce((a, e) => a + e.bytes, 0);
    if (used === 0 || used + bytes <= budget) {
      list.push({ at: now, bytes });
      this.windows.set(key, list);
      return null;
    }
    let left = used;
    for (const e of list) {
      left -= e.bytes;
      if (left === 0 || left + bytes <= budget) return Math.max(0, e.at + windowMs - now);
    }
    return windowMs; // not reached
  }

  reset(key?: string): void {
    if (key === undefined) this.windows.clear();
    else this.windows.delete(key);
  }
}

/** Strict standard base64: alphabet `A-Z a-z 0-9 + /`, padded to a multiple of 4, no whitespace. */
export function isStrictBase64(s: string): boolean {
  return s.length % 4 === 0 && /^[A-Za-z0-9+/]*={0,2}$/.test(s);
}
