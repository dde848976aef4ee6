import type { InvocationContext } from "@azure/functions";
import type { Logger } from "../shared/log";
import { redact } from "../shared/log";
import { getServices, type Services } from "../shared/services";

/**
 * The bridge between Functions invocations and shared/: the process's services, with log lines
 * going to the invocation's logger (and so to Application Insights), redacted on the way.
 */
export function invocationLogger(context: InvocationContext): Logger {
  return {
    log(level, message, fields) {
      const line = redact(fields && Object.keys(fields).length ? `${message} ${JSON.stringify(fields)}` : message);
      if (level === "error") context.error(line);
      else if (level === "warn") context.warn(line);
      else if (level === "debug") context.debug(line);
      else context.log(line);
    },
  };
}

export function activityServices(context: InvocationContext): Services {
  return { ...getServices(), logger: invocationLogger(context) };
}
