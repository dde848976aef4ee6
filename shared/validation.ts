import type { z } from "zod";
import { InvalidInputError } from "./errors";

/** Validates a value against a schema; the first issue becomes a clear InvalidInputError ("InvalidBody"). */
export function parseWith<T>(schema: z.ZodType<T>, value: unknown): T {
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue.path.length ? issue.path.join(".") : "body";
    throw new InvalidInputError(`${where}: ${issue.message}`, "InvalidBody");
  }
  return parsed.data;
}
