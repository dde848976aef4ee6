/** Counters the tests and benchmarks assert on. Reset with `sim.resetStats()`. */

/** The Graph routes the simulator serves (also the route names of fault rules). */
export type RouteName =
  | "settings"
  | "users"
  | "folders"
  | "foldersDelta"
  | "items"
  | "itemsDelta"
  | "exportItems"
  | "createFolder"
  | "createImportSession"
  | "importItem"
  | "subscriptions";

export const ROUTE_NAMES: readonly RouteName[] = [
  "settings",
  "users",
  "folders",
  "foldersDelta",
  "items",
  "itemsDelta",
  "exportItems",
  "createFolder",
  "createImportSession",
  "importItem",
  "subscriptions",
];

export class SimStats {
  /** Requests per route (counted on arrival, whatever the outcome; unroutable requests are not counted here). */
  requests: Record<RouteName, number> = emptyRouteCounts();
  /** Every HTTP request, routable or not. */
  totalRequests = 0;
  /** Responses by HTTP status. */
  statuses: Record<number, number> = {};
  /** exportItems calls that reached validation (admitted, not throttled or faulted before). */
  exportItemsCalls = 0;
  /** Successful item exports (elements with `data`), total. */
  itemsExported = 0;
  /** Successful exports per item id (an id exported twice counts 2). */
  exportedItemIds = new Map<string, number>();
  /** Per-item errors written inside 200 exportItems responses. */
  itemErrors = 0;
  /** Highest number of simultaneous in-flight requests seen, per mailbox id. */
  maxInFlight = new Map<string, number>();
  /** 429s caused by the per-mailbox concurrency limit. */
  throttledByConcurrency = 0;
  /** 429s produced by fault rules. */
  throttledByFault = 0;
  /** Fault rules fired, by kind. */
  faultsFired: Record<string, number> = {};
  /** Response body bytes written (headers not included). */
  bytesSent = 0;
  /** Successful importItem calls (create and update). */
  importedItems = 0;
  /** Decoded `Data` bytes of successful importItem calls. */
  importedBytes = 0;
  /** importItem 429s caused by the upload budget (`importBytesPerWindow` per `importWindowMs`). */
  importThrottled = 0;

  /** 429s by cause. */
  get throttled(): { concurrency: number; injected: number } {
    return { concurrency: this.throttledByConcurrency, injected: this.throttledByFault };
  }

  /** Highest in-flight count over all mailboxes. */
  get maxInFlightAny(): number {
    let m = 0;
    for (const v of this.maxInFlight.values()) m = Math.max(m, v);
    return m;
  }

  reset(): void {
    this.requests = emptyRouteCounts();
    this.totalRequests = 0;
    this.statuses = {};
    this.exportItemsCalls = 0;
    this.itemsExported = 0;
    this.exportedItemIds = new Map();
    this.itemErrors = 0;
    this.maxInFlight = new Map();
    this.throttledByConcurrency = 0;
    this.throttledByFault = 0;
    this.faultsFired = {};
    this.bytesSent = 0;
    this.importedItems = 0;
    this.importedBytes = 0;
    this.importThrottled = 0;
  }
}

function emptyRouteCounts(): Record<RouteName, number> {
  const r = {} as Record<RouteName, number>;
  for (const n of ROUTE_NAMES) r[n] = 0;
  return r;
}
