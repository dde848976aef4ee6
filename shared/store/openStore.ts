import { isIP } from "node:net";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { TokenCredential } from "@azure/identity";
import { type Env, setting } from "../config";
import { InvalidInputError } from "../errors";
import { BlobItemStore, checkContainerName, publicUrl } from "./blobItemStore";
import { LocalItemStore } from "./localItemStore";

/** What a store setting (`MAILVAULT_STORE`, `--store`) names. */
export type StoreSpec =
  /** A local folder (absolute path). */
  | { kind: "folder"; path: string }
  /** A container URL reached with a token credential (managed identity, DefaultAzureCredential). */
  | { kind: "blob-url"; url: string; container: string }
  /** A container reached with MAILVAULT_STORAGE_CONNECTION_STRING (`blob:<container>`, or an http loopback URL for Azurite). */
  | { kind: "blob-connection-string"; container: string; url?: string };

const SCHEME = /^([a-z][a-z0-9+.-]*):/i;

function isLoopback(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, "").toLowerCase();
  return h === "localhost" || h === "::1" || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/**
 * Parses a store setting without touching anything:
 * - a folder path (relative to the working directory, or absolute; `file:` URLs too);
 * - `https://<account>.blob.core.windows.net/<container>` or any https URL whose path is one container
 *   segment (`/<account>/<container>` when the host is an IP address or localhost, as in Azurite);
 * - `http://127.0.0.1:<port>/<account>/<container>` (Azurite, with the connection string);
 * - `blob:<container>` (with the connection string).
 * A URL must not carry credentials or a query (a SAS): they would end up in logs.
 */
export function parseStoreSpec(spec: string): StoreSpec {
  const s = spec.trim();
  if (s === "") throw new InvalidInputError("the store setting is empty: give a folder, a container URL or blob:<container>", "InvalidStore");
  const scheme = SCHEME.exec(s)?.[1]?.toLowerCase();

  if (scheme === "blob") {
    const container = s.slice("blob:".length).replace(/^\/\//, "").replace(/\/$/, "");
    return { kind: "blob-connection-string", container: checkContainerName(container) };
  }

  if (scheme === "https" || scheme === "http") {
    let u: URL;
    try {
      u = new URL(s);
    } catch {
      throw new InvalidInputError(`the store URL is not a valid URL: ${publicUrl(s)}`, "InvalidStore");
    }
    if (u.username || u.password || u.search || u.hash) {
      // Do not echo it: the query may be a SAS.
      throw new InvalidInputError(
        `the store URL ${publicUrl(s)} must not carry credentials, a query or a fragment (no SAS): blob URLs are reached with an Azure identity, Azurite with MAILVAULT_STORAGE_CONNECTION_STRING`,
        "InvalidStore",
      );
    }
    const loopback = isLoopback(u.hostname);
    if (scheme === "http" && !loopback) {
      throw new InvalidInputError(`the store URL ${publicUrl(s)} must use https (plain http is only for a local emulator on 127.0.0.1)`, "InvalidStore");
    }
    const segments = u.pathname.split("/").filter((x) => x !== "");
    // Path-style URLs (IP address or localhost host, like Azurite) carry the account first.
    const pathStyle = loopback || isIP(u.hostname.replace(/^\[|\]$/g, "")) !== 0;
    const want = pathStyle ? 2 : 1;
    if (segments.length !== want) {
      const shape = pathStyle ? `${u.protocol}//${u.host}/<account>/<container>` : `${u.protocol}//${u.host}/<container>`;
      throw new InvalidInputError(`the store URL ${publicUrl(s)} must name one container: ${shape}`, "InvalidStore");
    }
    const container = checkContainerName(decodeURIComponent(segments[want - 1]));
    const url = `${u.protocol}//${u.host}/${segments.join("/")}`;
    if (scheme === "http") return { kind: "blob-connection-string", container, url };
    return { kind: "blob-url", url, container };
  }

  if (scheme === "file") {
    try {
      return { kind: "folder", path: resolve(fileURLToPath(s)) };
    } catch {
      throw new InvalidInputError(`the store ${JSON.stringify(s.slice(0, 120))} is not a valid file URL`, "InvalidStore");
    }
  }

  // Anything else with a scheme of two letters or more is not a folder (a Windows drive like C: is).
  if (scheme !== undefined && scheme.length > 1 && /^[a-z][a-z0-9+.-]*:\/\//i.test(s)) {
    throw new InvalidInputError(`unsupported store ${JSON.stringify(publicUrl(s).slice(0, 120))}: give a folder, an https container URL or blob:<container>`, "InvalidStore");
  }
  return { kind: "folder", path: resolve(s) };
}

function defaultCredential(env: Env): TokenCredential {
  // Loaded lazily: @azure/identity is large and folder and connection-string stores do not need it.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { DefaultAzureCredential } = require("@azure/identity") as typeof import("@azure/identity");
  const clientId = setting(env, "AZURE_CLIENT_ID");
  // AZURE_CLIENT_ID names the user-assigned managed identity (and the app for workload identity).
  return new DefaultAzureCredential(clientId ? { managedIdentityClientId: clientId, workloadIdentityClientId: clientId } : {});
}

function connectionString(env: Env, what: string): string {
  const cs = setting(env, "MAILVAULT_STORAGE_CONNECTION_STRING");
  if (!cs) {
    throw new InvalidInputError(
      `${what} needs MAILVAULT_STORAGE_CONNECTION_STRING (a storage connection string, e.g. Azurite's); for Azure use https://<account>.blob.core.windows.net/<container>`,
      "MissingConnectionString",
    );
  }
  return cs;
}

/**
 * Opens the store a setting names (see `parseStoreSpec`). Nothing is contacted yet; call
 * `ensureContainer()` on a BlobItemStore to create its container when that is wanted.
 * `credentialFactory` replaces `DefaultAzureCredential` for container URLs (tests, the CLI's token).
 */
export function openStore(spec: string, env: Env, credentialFactory?: () => TokenCredential): LocalItemStore | BlobItemStore {
  const parsed = parseStoreSpec(spec);
  switch (parsed.kind) {
    case "folder":
      return new LocalItemStore(parsed.path);
    case "blob-url":
      return BlobItemStore.fromUrl(parsed.url, credentialFactory ? credentialFactory() : defaultCredential(env));
    case "blob-connection-string": {
      const what = parsed.url ? `the store ${parsed.url}` : `the store blob:${parsed.container}`;
      const store = BlobItemStore.fromConnectionString(connectionString(env, what), parsed.container);
      if (parsed.url !== undefined && publicUrl(store.location) !== publicUrl(parsed.url)) {
        throw new InvalidInputError(
          `the store ${parsed.url} is not where MAILVAULT_STORAGE_CONNECTION_STRING points (${store.location})`,
          "InvalidStore",
        );
      }
      return store;
    }
  }
}
