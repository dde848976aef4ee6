import { XMLBuilder, XMLParser } from "fast-xml-parser";
import { ProtocolError } from "../errors";

/**
 * XML for EWS: requests are built with fast-xml-parser's builder (it escapes every text and
 * attribute value), small responses are parsed into a plain tree of local names. Namespace prefixes
 * and URIs are ignored on purpose: servers differ in prefixes, and Microsoft's published examples
 * even spell the namespace URIs with https (see test/fixtures/ews/). The one large response,
 * ExportItems, is read as a stream elsewhere (exportItemsReader.ts).
 */

export const NS = {
  soap: "http://schemas.xmlsoap.org/soap/envelope/",
  types: "http://schemas.microsoft.com/exchange/services/2006/types",
  messages: "http://schemas.microsoft.com/exchange/services/2006/messages",
} as const;

/** fast-xml-parser's builder input: `@_name` keys are attributes, `#text` is text, arrays repeat an element. */
export type XmlSpec = { [name: string]: XmlSpec | XmlSpec[] | string | number | boolean | undefined };

const builder = new XMLBuilder({ ignoreAttributes: false, attributeNamePrefix: "@_", suppressEmptyNode: true, format: false });

export function buildXml(spec: XmlSpec): string {
  return builder.build(spec) as string;
}

export interface XmlNode {
  /** Local name (prefix removed). */
  name: string;
  attrs: Record<string, string>;
  children: XmlNode[];
  /** Concatenated text content directly inside this element, trimmed. */
  text: string;
}

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: "",
  removeNSPrefix: true,
  preserveOrder: true,
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: true,
  // EWS never uses DTDs; refusing them closes the entity-expansion door.
  processEntities: true,
  // Character references (&#233;) in display names are decoded; named HTML entities do not occur in EWS.
  htmlEntities: true,
});

/** Largest response parsed as a whole (sync pages of 512 changes are well below this). */
export const MAX_SMALL_RESPONSE = 32 * 1024 * 1024;

export function parseXml(text: string): XmlNode {
  if (text.length > MAX_SMALL_RESPONSE) throw new ProtocolError("ResponseTooLarge", `an EWS response of ${text.length} characters is larger than expected`);
  if (/<!DOCTYPE/i.test(text)) throw new ProtocolError("MalformedXml", "the EWS response declares a DTD, which EWS never does");
  let raw: unknown;
  try {
    raw = parser.parse(text, true);
  } catch (e) {
    throw new ProtocolError("MalformedXml", `the EWS response is not well-formed XML: ${e instanceof Error ? e.message.slice(0, 200) : String(e)}`, { retryable: true });
  }
  const roots = toNodes(raw).filter((n) => !n.name.startsWith("?"));
  if (roots.length !== 1) throw new ProtocolError("MalformedXml", "the EWS response has no single root element", { retryable: true });
  return roots[0];
}

type Ordered = Array<Record<string, unknown>>;

function toNodes(list: unknown): XmlNode[] {
  const out: XmlNode[] = [];
  for (const entry of (Array.isArray(list) ? list : []) as Ordered) {
    const attrs = (entry[":@"] ?? {}) as Record<string, string>;
    for (const [key, value] of Object.entries(entry)) {
      if (key === ":@" || key === "#text") continue;
      const kids = Array.isArray(value) ? (value as Ordered) : [];
      const text = kids.filter((k) => "#text" in k).map((k) => String(k["#text"])).join("");
      out.push({ name: key, attrs: stripXmlns(attrs), children: toNodes(kids), text: text.trim() });
    }
  }
  return out;
}

function stripXmlns(attrs: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "xmlns" || k.startsWith("xmlns:")) continue;
    out[k.includes(":") ? k.slice(k.indexOf(":") + 1) : k] = String(v);
  }
  return out;
}

export function child(node: XmlNode | undefined, name: string): XmlNode | undefined {
  return node?.children.find((c) => c.name === name);
}

export function childrenNamed(node: XmlNode | undefined, name: string): XmlNode[] {
  return node ? node.children.filter((c) => c.name === name) : [];
}

/** Follows a path of local names: path(env, "Body", "Fault"). */
export function path(node: XmlNode | undefined, ...names: string[]): XmlNode | undefined {
  let n = node;
  for (const name of names) n = child(n, name);
  return n;
}

export function textOf(node: XmlNode | undefined, name: string): string | undefined {
  return child(node, name)?.text;
}
