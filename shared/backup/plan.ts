import type { ExportItemRef } from "../export/exportBatch";

/**
 * Groups items into export calls: at most `maxItems` ids a call (Graph: 20; EWS: the configured batch), and at most `maxBytes` of listed item
 * size, so that one response stays within what an activity should stream in one go. An item larger
 * than the budget goes alone. Order is kept, so a plan is the same every time it is made.
 */
export function planBatches(items: readonly ExportItemRef[], maxBytes: number, maxItems = 20): ExportItemRef[][] {
  if (!(Number.isInteger(maxItems) && maxItems >= 1 && maxItems <= 100)) throw new Error("maxItems must be 1..100");
  const batches: ExportItemRef[][] = [];
  let current: ExportItemRef[] = [];
  let bytes = 0;
  for (const item of items) {
    const size = Math.max(0, item.size ?? 0);
    if (current.length > 0 && (current.length >= maxItems || bytes + size > maxBytes)) {
      batches.push(current);
      current = [];
      bytes = 0;
    }
    current.push(item);
    bytes += size;
  }
  if (current.length) batches.push(current);
  return batches;
}
