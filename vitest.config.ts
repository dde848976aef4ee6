// CommonJS like the rest of the package; vitest/config is ESM-only, so only its type is imported.
type ViteUserConfig = import("vitest/config", { with: { "resolution-mode": "import" } }).ViteUserConfig;

const config: ViteUserConfig = {
  test: {
    include: ["test/**/*.test.ts"],
    // Starts Azurite (blob, in memory, free loopback port) once per run; tests inject its connection string.
    globalSetup: ["test/support/globalSetup.ts"],
    pool: "forks",
    testTimeout: 60_000,
    hookTimeout: 60_000,
    teardownTimeout: 20_000,
  },
};

export = config;
