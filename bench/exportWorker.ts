/**
 * One export of one batch, in its own process so that its peak RSS is its own (the simulator
 * serving the bytes runs in the parent). Modes:
 *   stream    mailvault's exportBatch: streamed JSON, chunked base64 decode, streamed store writes
 *   buffered  the naive client: read the whole body, JSON.parse, Buffer.from(base64) per item
 *   ews       the EWS source's exportBatch: streamed ExportItems XML (sax), chunked base64 decode
 * Prints one JSON line: {mode, items, bytes, ms, maxRssMB}.
 */
import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { exportBatch } from "../shared/export/exportBatch";
import { GraphClient, StaticTokenCredential } from "../shared/graph/graphClient";
import { MailboxApi } from "../shared/graph/mailboxApi";
import { GraphSource } from "../shared/graph/graphSource";
import { EwsClient } from "../shared/ews/ewsClient";
import { EwsSource } from "../shared/ews/ewsSource";
import { LocalItemStore } from "../shared/store/localItemStore";
import { itemObjectPath } from "../shared/store/naming";

interface Args {
  mode: "stream" | "buffered" | "ews";
  endpoint: string;
  token: string;
  mailboxId: string;
  items: Array<{ itemId: string; folderId: string; changeKey: string }>;
}

async function main(): Promise<void> {
  const args = JSON.parse(process.argv[2]) as Args;
  const dir = await mkdtemp(join(tmpdir(), "mailvault-bench-"));
  const store = new LocalItemStore(dir);
  const graph = new GraphClient({ endpoint: args.endpoint, apiVersion: "v1.0", credential: new StaticTokenCredential(args.token) });
  const api = new MailboxApi(graph);
  const t0 = performance.now();
  let bytes = 0;
  let items = 0;
  try {
    if (args.mode === "ews") {
      const source = new EwsSource(new EwsClient({ url: args.endpoint, auth: { kind: "oauth", credential: new StaticTokenCredential(args.token), scope: "x/.default" } }), 50);
      const out = await exportBatch({ mailbox: source, store }, { mailboxId: args.mailboxId, items: args.items });
      for (const o of out) {
        if (o.status !== "exported") throw new Error(`${o.itemId}: ${o.error.code}`);
        bytes += o.size;
        items++;
      }
    } else if (args.mode === "stream") {
      const out = await exportBatch({ mailbox: new GraphSource(api), store }, { mailboxId: args.mailboxId, items: args.items });
      for (const o of out) {
        if (o.status !== "exported") throw new Error(`${o.itemId}: ${o.error.code}`);
        bytes += o.size;
        items++;
      }
    } else {
      const text = await api.exportItems(args.mailboxId, args.items.map((i) => i.itemId), async (body) => {
        const chunks: Buffer[] = [];
        for await (const c of body) chunks.push(c as Buffer);
        return Buffer.concat(chunks).toString("utf8");
      });
      const doc = JSON.parse(text) as { value: Array<{ itemId: string; changeKey: string; data: string }> };
      for (const v of doc.value) {
        const data = Buffer.from(v.data, "base64");
        createHash("sha256").update(data).digest("hex");
        await store.putObject(itemObjectPath(args.mailboxId, v.itemId, v.changeKey), (async function* () {
          yield data;
        })());
        bytes += data.length;
        items++;
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const ms = performance.now() - t0;
  const maxRssMB = process.resourceUsage().maxRSS / 1024;
  process.stdout.write(JSON.stringify({ mode: args.mode, items, bytes, ms, maxRssMB }) + "\n");
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
