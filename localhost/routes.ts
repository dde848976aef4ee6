/**
 * ASP.NET-style route templates as the Functions host understands them: `mailboxes/{mailbox}/backups`,
 * optional `{x?}`, defaults `{x=1}`, catch-all `{*rest}`, and the common inline constraints
 * (int, long, bool, guid, alpha, decimal/double/float). Other constraints are accepted and ignored.
 * Matching is case-insensitive, like the host's.
 */

export interface CompiledRoute {
  template: string;
  /** lower sorts first: literal segments beat parameters, which beat optional and catch-all ones */
  precedence: number[];
  match(path: string): Record<string, string> | undefined;
}

const CONSTRAINTS: Record<string, string> = {
  int: "-?\\d+",
  long: "-?\\d+",
  bool: "(?:true|false)",
  guid: "[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}",
  alpha: "[A-Za-z]+",
  decimal: "-?\\d+(?:\\.\\d+)?",
  double: "-?\\d+(?:\\.\\d+)?",
  float: "-?\\d+(?:\\.\\d+)?",
};

interface ParamToken {
  name: string;
  pattern: string;
  optional: boolean;
  catchAll: boolean;
  defaultValue?: string;
  constrained: boolean;
}

const escapeRegex = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

function parseParam(body: string, template: string): ParamToken {
  let text = body;
  let catchAll = false;
  if (text.startsWith("**")) {
    catchAll = true;
    text = text.slice(2);
  } else if (text.startsWith("*")) {
    catchAll = true;
    text = text.slice(1);
  }
  let optional = false;
  if (text.endsWith("?")) {
    optional = true;
    text = text.slice(0, -1);
  }
  let defaultValue: string | undefined;
  const eq = text.indexOf("=");
  if (eq >= 0) {
    defaultValue = text.slice(eq + 1);
    text = text.slice(0, eq);
    optional = true;
  }
  const [name, ...constraints] = text.split(":");
  if (!name) throw new Error(`invalid route template '${template}': empty parameter name`);
  let pattern = catchAll ? ".*" : "[^/]+";
  let constrained = false;
  for (const constraint of constraints) {
    const known = CONSTRAINTS[constraint.replace(/\(.*\)$/, "").toLowerCase()];
    if (known) {
      pattern = known;
      constrained = true;
    }
  }
  return { name, pattern, optional: optional || catchAll, catchAll, defaultValue, constrained };
}

export function compileRoute(template: string): CompiledRoute {
  const trimmed = template.replace(/^\/+|\/+$/g, "");
  const segments = trimmed === "" ? [] : trimmed.split("/");
  const names: string[] = [];
  const defaults: Record<string, string> = {};
  const precedence: number[] = [];
  let source = "";
  segments.forEach((segment) => {
    const whole = /^\{([^{}]+)\}$/.exec(segment);
    if (whole) {
      const param = parseParam(whole[1], template);
      names.push(param.name);
      if (param.defaultValue !== undefined) defaults[param.name] = param.defaultValue;
      precedence.push(param.catchAll ? 5 : param.optional ? 4 : param.constrained ? 2 : 3);
      source += param.optional ? `(?:/(${param.pattern}))?` : `/(${param.pattern})`;
      return;
    }
    // literal text, possibly mixed with parameters ("file.{ext}")
    let segmentSource = "";
    let rest = segment;
    let hasParam = false;
    while (rest.length > 0) {
      const open = rest.indexOf("{");
      if (open < 0) {
        segmentSource += escapeRegex(rest);
        break;
      }
      segmentSource += escapeRegex(rest.slice(0, open));
      const close = rest.indexOf("}", open);
      if (close < 0) throw new Error(`invalid route template '${template}': unbalanced braces`);
      const param = parseParam(rest.slice(open + 1, close), template);
      names.push(param.name);
      if (param.defaultValue !== undefined) defaults[param.name] = param.defaultValue;
      segmentSource += `(${param.pattern === "[^/]+" ? "[^/]+?" : param.pattern})`;
      hasParam = true;
      rest = rest.slice(close + 1);
    }
    precedence.push(hasParam ? 2 : 1);
    source += `/${segmentSource}`;
  });
  const regex = new RegExp(`^${source}/?$`, "i");
  return {
    template,
    precedence,
    match(path: string): Record<string, string> | undefined {
      const normalized = "/" + path.replace(/^\/+/, "");
      const m = regex.exec(normalized);
      if (!m) return undefined;
      const params: Record<string, string> = { ...defaults };
      names.forEach((name, i) => {
        const value = m[i + 1];
        if (value !== undefined) {
          try {
            params[name] = decodeURIComponent(value);
          } catch {
            params[name] = value;
          }
        }
      });
      return params;
    },
  };
}

export function compareRoutes(a: CompiledRoute, b: CompiledRoute): number {
  const length = Math.max(a.precedence.length, b.precedence.length);
  for (let i = 0; i < length; i++) {
    const x = a.precedence[i] ?? 0;
    const y = b.precedence[i] ?? 0;
    if (x !== y) return x - y;
  }
  return b.precedence.length - a.precedence.length;
}
