import { GraphError } from "../errors";
import { buildXml, child, childrenNamed, NS, path, textOf, type XmlNode, type XmlSpec } from "./xml";

/**
 * SOAP envelopes and response messages of Exchange Web Services (research/graph-api.md §10).
 * Every EWS response lists one `<m:XxxResponseMessage ResponseClass="Success|Warning|Error">` per
 * requested thing, in request order; errors carry `MessageText`, `ResponseCode`,
 * `DescriptiveLinkKey` and optionally `MessageXml` (name/value pairs such as BackOffMilliseconds).
 * Whole-request failures are SOAP faults (HTTP 500), throttling among them.
 */

/** An EWS request that failed as a whole (SOAP fault or HTTP status), or an error ResponseCode raised as an exception. */
export class EwsError extends GraphError {
  /** BackOffMilliseconds from the server's MessageXml, when it gave one (ErrorServerBusy). */
  readonly backOffMs: number | undefined;
  constructor(status: number, code: string, message: string, options?: { retryable?: boolean; backOffMs?: number; cause?: unknown }) {
    super(status, code, message, { retryable: options?.retryable, cause: options?.cause });
    this.backOffMs = options?.backOffMs;
  }
}

/** ResponseCodes worth asking again for (research/graph-api.md §10, ResponseCode meanings). */
export const TRANSIENT_EWS_CODES = new Set([
  "ErrorServerBusy",
  "ErrorInternalServerTransientError",
  "ErrorTimeoutExpired",
  "ErrorMailboxStoreUnavailable",
  "ErrorMailboxMoveInProgress",
  "ErrorBatchProcessingStopped",
  "ErrorExceededConnectionCount",
  "ErrorConnectionFailed",
]);

export interface EnvelopeHeader {
  /** RequestServerVersion, e.g. Exchange2010_SP1 (the first version with ExportItems/UploadItems). */
  serverVersion: string;
  /** Act as this mailbox (ExchangeImpersonation): a service account with the ApplicationImpersonation role. */
  impersonate?: string;
  /** How the impersonated mailbox is named: by its primary address (default) or by any of its addresses. */
  impersonateBy?: "PrimarySmtpAddress" | "SmtpAddress";
}

export function soapEnvelope(header: EnvelopeHeader, operation: XmlSpec): string {
  const head: XmlSpec = { "t:RequestServerVersion": { "@_Version": header.serverVersion } };
  if (header.impersonate) head["t:ExchangeImpersonation"] = { "t:ConnectingSID": { [`t:${header.impersonateBy ?? "PrimarySmtpAddress"}`]: header.impersonate } };
  return (
    `<?xml version="1.0" encoding="utf-8"?>` +
    buildXml({
      "soap:Envelope": {
        "@_xmlns:soap": NS.soap,
        "@_xmlns:t": NS.types,
        "@_xmlns:m": NS.messages,
        "soap:Header": head,
        "soap:Body": operation,
      },
    })
  );
}

export interface ResponseMessage {
  node: XmlNode;
  /** Success and Warning count as success (Warning: e.g. ErrorBatchProcessingStopped is reported as Error). */
  ok: boolean;
  code: string;
  message: string;
  /** `<t:Value Name="...">` pairs of MessageXml. */
  details: Record<string, string>;
  backOffMs?: number;
}

export function readResponseMessage(node: XmlNode): ResponseMessage {
  const responseClass = node.attrs.ResponseClass ?? "Error";
  const code = textOf(node, "ResponseCode") ?? (responseClass === "Success" ? "NoError" : "UnknownError");
  const details = messageXmlValues(child(node, "MessageXml"));
  const backOff = Number(details.BackOffMilliseconds);
  return {
    node,
    ok: responseClass !== "Error" && code === "NoError",
    code,
    message: (textOf(node, "MessageText") ?? "").slice(0, 2000),
    details,
    ...(Number.isFinite(backOff) && backOff >= 0 ? { backOffMs: backOff } : {}),
  };
}

export function messageXmlValues(node: XmlNode | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of childrenNamed(node, "Value")) if (v.attrs.Name) out[v.attrs.Name] = v.text;
  return out;
}

/** The response messages of `<XxxResponse>` in a parsed envelope, in order. */
export function responseMessages(envelope: XmlNode, operation: string): ResponseMessage[] {
  const response = path(envelope, "Body", `${operation}Response`);
  const list = child(response, "ResponseMessages");
  if (!response || !list) throw new EwsError(200, "MalformedResponse", `the ${operation} response has no ResponseMessages`, { retryable: true });
  return list.children.map(readResponseMessage);
}

export interface SoapFault {
  code: string;
  message: string;
  backOffMs?: number;
}

/** The SOAP fault of a parsed envelope, if it is one. */
export function soapFault(envelope: XmlNode): SoapFault | undefined {
  const fault = path(envelope, "Body", "Fault");
  if (!fault) return undefined;
  const detail = child(fault, "detail") ?? child(fault, "Detail");
  const faultcode = textOf(fault, "faultcode") ?? "";
  const code = textOf(detail, "ResponseCode") || faultcode.slice(faultcode.indexOf(":") + 1) || "SoapFault";
  const details = messageXmlValues(child(detail, "MessageXml"));
  const backOff = Number(details.BackOffMilliseconds);
  return {
    code,
    message: (textOf(detail, "Message") || textOf(fault, "faultstring") || code).slice(0, 2000),
    ...(Number.isFinite(backOff) && backOff >= 0 ? { backOffMs: backOff } : {}),
  };
}

/** Raises an error message as an EwsError (for operations where one failed message fails the call). */
export function messageError(m: ResponseMessage, operation: string): EwsError {
  const extra = Object.entries(m.details).map(([k, v]) => `${k} ${v}`).join(", ");
  return new EwsError(200, m.code, `${operation}: ${m.message || m.code}${extra ? ` (${extra})` : ""}`, { retryable: TRANSIENT_EWS_CODES.has(m.code), backOffMs: m.backOffMs });
}
