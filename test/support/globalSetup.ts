/**
 * vitest globalSetup: one Azurite blob service (in memory, free loopback port) for the whole run.
 * Tests read its connection string with `inject("azuriteConnectionString")`; it is stopped on teardown.
 */
import type { TestProject } from "vitest/node" with { "resolution-mode": "import" };
import { startAzurite } from "./azurite";

declare module "vitest" {
  export interface ProvidedContext {
    /** Connection string of the Azurite blob service started for this test run. */
    azuriteConnectionString: string;
    /** `http://127.0.0.1:<port>/devstoreaccount1` */
    azuriteBlobEndpoint: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const azurite = await startAzurite();
  project.provide("azuriteConnectionString", azurite.connectionString);
  project.provide("azuriteBlobEndpoint", azurite.blobEndpoint);
  return async () => {
    await azurite.stop();
  };
}
