/** Counters the tests and benchmarks assert on. Reset with `sim.resetStats()`. */

/** The EWS operations the simulator serves, by route name (`ews` + operation). */
export type EwsRouteName = "ewsGetFolder" | "ewsSyncFolderHierarchy" | "ewsSyncFolderItems" | "ewsExportItems" | "ewsUploadItems" | "ewsCreateFolder" | "ewsResolveNames";

export const EWS_ROUTE_NAMES: readonly EwsRouteName[] = ["ewsGetFolder", "ewsSyncFolderHierarchy", "ewsSyncFolderItems", "ewsExportItems", "ewsUploadItems", "ewsCreateFolder", "ewsResolveNames"];

/** The Graph routes and EWS operations the simulator serves (also the route names of fault rules). */
export type RouteName =
  | EwsRouteName
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
  ...EWS_ROUTE_NAMES,
];

/** EWS operations the simulator serves. */
export type EwsOperation = "GetFolder" | "SyncFolderHierarchy" | "SyncFolderItems" | "ExportItems" | "UploadItems" | "CreateFolder" | "ResolveNames";

export const EWS_OPERATIONS: readonly EwsOperation[] = ["GetFolder", "SyncFolderHierarchy", "SyncFolderItems", "ExportItems", "UploadItems", "CreateFolder", "ResolveNames"];

/** An admitted EWS request (`stats.ews.log`): when it arrived, its acting mailbox and operation. */
export interface EwsRequestLogEntry {
  at: number;
  mailboxId: string | null;
  operation: EwsOperation;
  route: EwsRouteName;
}

/**
 * An ErrorServerBusy the simulator issued (`stats.ews.serverBusy`): when, for which mailbox and
 * operation, its BackOffMilliseconds, and its cause: the concurrency limit, a `soapFault` rule, or an
 * `itemError` rule (a per-item message inside an ExportItems response; `itemId` set).
 */
export interface EwsServerBusyEntry {
  at: number;
  mailboxId: string | null;
  operation: EwsOperation;
  route: EwsRouteName;
  backOffMs: number;
  source: "concurrency" | "soapFault" | "itemError";
  itemId?: string;
}

/** EWS counters (`stats.ews`). */
export class EwsStats {
  /** Requests per operation, counted once the operation is parsed (also in `stats.requests.ews*`). */
  requests: Record<EwsOperation, number> = emptyOperationCounts();
  /** Requests whose body named no known operation (fault ErrorInvalidRequest). */
  unknownOperations = 0;
  /** ErrorServerBusy faults caused by `ewsMaxConcurrentPerMailbox`. */
  throttled = 0;
  /** Highest number of simultaneous in-flight EWS requests seen, by acting mailbox id. */
  peakInFlight: Record<string, number> = {};
  /** Impersonated requests rejected because X-AnchorMailbox was missing or different (HTTP 400). */
  anchorMailboxRejected = 0;
  /** NTLM challenges issued (one per new connection that signs in with NTLM). */
  ntlmHandshakes = 0;
  /** Requests refused with 401 for missing or wrong credentials (NTLM challenges not counted). */
  unauthorized = 0;
  /** SyncFolderItems messages rejected for a missing or out-of-range MaxChangesReturned. */
  invalidMaxChanges = 0;
  /** Error ResponseCodes written (per response message and SOAP faults), by code. */
  errorCodes: Record<string, number> = {};
  /** Successful ExportItems messages (with Data). */
  itemsExported = 0;
  /** Successful ExportItems messages per item id. */
  exportedItemIds = new Map<string, number>();
  /** Error messages written inside ExportItems responses. */
  itemErrors = 0;
  /** Successful UploadItems items (CreateNew, Update, UpdateOrCreate). */
  uploadedItems = 0;
  /** Decoded Data bytes of successful UploadItems items. */
  uploadedBytes = 0;
  /** Every admitted request, in order of arrival. */
  log: EwsRequestLogEntry[] = [];
  /** Every ErrorServerBusy issued (faults and per-item messages), in order. */
  serverBusy: EwsServerBusyEntry[] = [];
}

function emptyOperationCounts(): Record<EwsOperation, number> {
  const r = {} as Record<EwsOperation, number>;
  for (const n of EWS_OPERATIONS) r[n] = 0;
  return r;
}

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

  /** EWS counters and logs (requests per operation, throttling, back-off log...). */
  ews = new EwsStats();

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
    this.ews = new EwsStats();
  }
}

function emptyRouteCounts(): Record<RouteName, number> {
  const r = {} as Record<RouteName, number>;
  for (const n of ROUTE_NAMES) r[n] = 0;
  return r;
}
