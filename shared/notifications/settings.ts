import { createHash } from "node:crypto";
import { type Env, intSetting, setting } from "../config";
import { InvalidInputError } from "../errors";

/**
 * The change-notification settings (shared/config.ts SETTINGS): where Graph delivers, the clientState
 * secret, the quiet period. Read at call time from the environment, like the nightly timer's.
 */

export type NotificationChannel = "webhook" | "eventGrid";

export interface NotificationConfig {
  /** The notificationUrl (and lifecycleNotificationUrl) of every subscription. A secret (it carries a function key): never log it. */
  notificationUrl: string;
  channel: NotificationChannel;
  /** The clientState secret. Never log it. */
  clientState: string;
}

const EVENT_GRID_PARAMS = ["azuresubscriptionid", "resourcegroup", "partnertopic", "location"];

/** The clientState, validated; undefined when unset. */
export function clientStateSetting(env: Env): string | undefined {
  const v = setting(env, "MAILVAULT_NOTIFICATION_CLIENT_STATE");
  if (v === undefined) return undefined;
  if (v.length < 16 || v.length > 128 || /[\x00-\x1f\x7f]/.test(v)) {
    // Say what is wrong, never the value.
    throw new InvalidInputError(`MAILVAULT_NOTIFICATION_CLIENT_STATE must be 16 to 128 printable characters (it has ${v.length})`, "InvalidSetting");
  }
  return v;
}

/**
 * The notification settings, or undefined when MAILVAULT_NOTIFICATION_URL is empty (notifications
 * off). Throws InvalidInputError for a URL Graph would refuse or a missing/weak clientState.
 */
export function notificationConfig(env: Env): NotificationConfig | undefined {
  const url = setting(env, "MAILVAULT_NOTIFICATION_URL");
  if (url === undefined) return undefined;
  const channel = notificationChannel(url);
  const clientState = clientStateSetting(env);
  if (!clientState) throw new InvalidInputError("MAILVAULT_NOTIFICATION_CLIENT_STATE must be set when MAILVAULT_NOTIFICATION_URL is", "InvalidSetting");
  return { notificationUrl: url, channel, clientState };
}

/** Checks the notificationUrl's form; the messages never repeat the URL (it carries a key). */
export function notificationChannel(url: string): NotificationChannel {
  if (/^EventGrid:/i.test(url)) {
    let q: URLSearchParams;
    try {
      q = new URLSearchParams(url.slice(url.indexOf("?") + 1));
    } catch {
      q = new URLSearchParams();
    }
    const keys = new Set([...q.keys()].map((k) => k.toLowerCase()));
    const missing = EVENT_GRID_PARAMS.filter((k) => !keys.has(k));
    if (!url.includes("?") || missing.length) {
      throw new InvalidInputError(`MAILVAULT_NOTIFICATION_URL: an Event Grid URL needs ${EVENT_GRID_PARAMS.join(", ")} (missing: ${missing.join(", ")})`, "InvalidSetting");
    }
    return "eventGrid";
  }
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new InvalidInputError("MAILVAULT_NOTIFICATION_URL is neither an https URL nor an EventGrid: URL", "InvalidSetting");
  }
  const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(u.hostname);
  if (u.protocol !== "https:" && !(u.protocol === "http:" && loopback)) {
    throw new InvalidInputError("MAILVAULT_NOTIFICATION_URL must be https (Graph refuses anything else; plain http only on loopback, for the simulator)", "InvalidSetting");
  }
  return "webhook";
}

/** Seconds of quiet before an event-triggered run (MAILVAULT_CHANGE_QUIET_SECONDS). */
export function quietSecondsSetting(env: Env): number {
  return intSetting(env, "MAILVAULT_CHANGE_QUIET_SECONDS", 0, 86_400);
}

/**
 * A fingerprint of the URL and clientState a subscription was made with, kept beside it so that a
 * changed setting (a rotated key or secret) makes the sync recreate the subscription. A salted,
 * truncated sha256 of a 16+ character secret: it identifies, it does not reveal.
 */
export function configFingerprint(config: NotificationConfig): string {
  return createHash("sha256").update(`mailvault-subscription-v1\0${config.notificationUrl}\0${config.clientState}`, "utf8").digest("hex").slice(0, 32);
}
