/**
 * Fault injection. Rules are matched in the order they were added and consumed as they fire
 * (`times`, default 1; `Infinity` for a permanent rule). `every: N` fires on every Nth matching
 * request only; `probability: p` fires with probability p from a seeded PRNG (deterministic).
 */
import { mulberry32 } from "./prng";
import type { RouteName } from "./stats";

export type FaultRoute = RouteName | "any";

export interface FaultMatch {
  /** Route the rule applies to (`any`: every route, EWS operations included). */
  route: FaultRoute;
  /** Only requests for this mailbox (MBX id, case-insensitive). Settings requests match their user's mailbox; EWS requests their acting mailbox. */
  mailboxId?: string;
  /** How many times the rule fires before it is used up. Default 1. */
  times?: number;
  /** Fire only on every Nth matching request (N >= 1). */
  every?: number;
  /** Fire with this probability (0..1) on each matching request, from the plan's seeded PRNG. */
  probability?: number;
  /**
   * Fire only for calls whose item ids include this id (a "poison" item): Graph exportItems (body
   * faults), and every EWS route (all kinds; the ids are the request's ItemIds).
   */
  containsItemId?: string;
}

export type FaultKind =
  /**
   * Answer with this status and a Graph error body (`code` default from the status). EWS routes: a
   * SOAP fault body for 500 (faultcode `code`, default ErrorInternalServerError), else an empty body.
   */
  | { kind: "status"; status: number; code?: string; message?: string; retryAfterSeconds?: number }
  /** Destroy the socket after `afterBytes` (default 100) bytes of a 200 body. */
  | { kind: "resetMidBody"; afterBytes?: number }
  /** End a 200 body cleanly after `afterBytes` (default 100) bytes (always at least one byte short; EWS: the XML body). */
  | { kind: "truncateJson"; afterBytes?: number }
  /** exportItems / ewsExportItems: this item's `data` (`m:Data`) contains characters that are not base64. */
  | { kind: "invalidBase64"; itemId: string }
  /**
   * exportItems / ewsExportItems: this item gets a per-item error inside the 200. EWS: an Error
   * message in place of the item's; `backOffMs` adds `<m:MessageXml><t:Value Name="BackOffMilliseconds">`
   * (use with `code: "ErrorServerBusy"`).
   */
  | { kind: "itemError"; itemId: string; code?: string; message?: string; backOffMs?: number }
  /**
   * EWS routes: the whole request gets a SOAP fault (`faultcode a:<code>`, detail ResponseCode and
   * Message, and MessageXml BackOffMilliseconds when `backOffMs` is set), HTTP `httpStatus` (default 500).
   */
  | { kind: "soapFault"; code: string; message?: string; backOffMs?: number; httpStatus?: number }
  /** Wait `ms` before the response starts. */
  | { kind: "delayMs"; ms: number };

export type FaultRule = FaultMatch & FaultKind;

/** A rule as held by the plan: `remaining` counts down; `fired` counts up. */
export type ActiveFault = FaultRule & { readonly ruleId: number; remaining: number; fired: number; seen: number };

export interface FaultFiring {
  ruleId: number;
  kind: FaultKind["kind"];
  route: RouteName;
  mailboxId: string | null;
  itemId?: string;
  at: number;
}

type KindName = FaultKind["kind"];
type RuleOf<K extends KindName> = ActiveFault & Extract<FaultKind, { kind: K }>;

export class FaultPlan {
  private rules: ActiveFault[] = [];
  private nextId = 1;
  private rand: () => number;
  /** Every firing, in order. */
  readonly log: FaultFiring[] = [];
  /** Called on each firing (the simulator uses it for stats). */
  onFire?: (f: FaultFiring) => void;

  constructor(seed = 1) {
    this.rand = mulberry32(seed);
  }

  /** Re-seeds the PRNG used by `probability` rules. */
  seed(seed: number): void {
    this.rand = mulberry32(seed);
  }

  /** Adds rules (fired in the order added); returns the live rule objects. */
  add(...rules: FaultRule[]): ActiveFault[] {
    return rules.map((r) => {
      if (r.every !== undefined && !(r.every >= 1)) throw new Error("fault rule: every must be >= 1");
      const a: ActiveFault = { ...r, ruleId: this.nextId++, remaining: r.times ?? 1, fired: 0, seen: 0 };
      this.rules.push(a);
      return a;
    });
  }

  /** Removes all rules (the log is kept). */
  clear(): void {
    this.rules = [];
  }

  /** Rules not yet used up. */
  get pending(): readonly ActiveFault[] {
    return this.rules.filter((r) => r.remaining > 0);
  }

  /** Number of firings so far (optionally of one kind). */
  count(kind?: KindName): number {
    return kind ? this.log.filter((f) => f.kind === kind).length : this.log.length;
  }

  /**
   * @internal Takes the first matching rule of `kind` for this request, consuming one firing.
   * `itemId` restricts item-level kinds to their item.
   */
  take<K extends KindName>(kind: K, route: RouteName, mailboxId: string | null, itemId?: string, requestItemIds?: readonly string[]): RuleOf<K> | undefined {
    for (const r of this.rules) {
      if (r.kind !== kind || r.remaining <= 0) continue;
      if (r.route !== "any" && r.route !== route) continue;
      if (r.mailboxId !== undefined && (mailboxId === null || r.mailboxId.toLowerCase() !== mailboxId.toLowerCase())) continue;
      if ((r.kind === "invalidBase64" || r.kind === "itemError") && r.itemId !== itemId) continue;
      if (r.containsItemId !== undefined && !(requestItemIds ?? []).includes(r.containsItemId)) continue;
      r.seen++;
      if (r.every !== undefined && r.seen % r.every !== 0) continue;
      if (r.probability !== undefined && !(this.rand() < r.probability)) continue;
      r.remaining--;
      r.fired++;
      const firing: FaultFiring = { ruleId: r.ruleId, kind, route, mailboxId, at: Date.now() };
      if (itemId !== undefined) firing.itemId = itemId;
      this.log.push(firing);
      this.onFire?.(firing);
      return r as RuleOf<K>;
    }
    return undefined;
  }
}
