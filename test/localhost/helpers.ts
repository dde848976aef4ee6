import { LocalDurableHost, type LocalHostOptions } from "../../localhost";

/** Host diagnostics go to stdout only with LOCALHOST_LOG=1. */
export const testLog = process.env.LOCALHOST_LOG === "1" ? (line: string) => console.log(line) : undefined;

export function startFixtureHost(options: Partial<LocalHostOptions> = {}): Promise<LocalDurableHost> {
  return LocalDurableHost.start({
    loadApp: async () => {
      await import("./fixtures/app.js");
    },
    timerScale: 0.001,
    log: testLog,
    ...options,
  });
}

export async function pollJson(
  url: string,
  until: (status: number, body: unknown) => boolean,
  options: { timeoutMs?: number; intervalMs?: number; headers?: Record<string, string> } = {},
): Promise<{ status: number; body: unknown }> {
  const deadline = Date.now() + (options.timeoutMs ?? 3000);
  for (;;) {
    const response = await fetch(url, { headers: options.headers });
    const text = await response.text();
    const body: unknown = text ? JSON.parse(text) : undefined;
    if (until(response.status, body)) return { status: response.status, body };
    if (Date.now() > deadline) throw new Error(`polling ${url} timed out; last ${response.status} ${text}`);
    await new Promise((resolve) => setTimeout(resolve, options.intervalMs ?? 10));
  }
}
