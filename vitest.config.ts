import { defineConfig } from 'vitest/config';

/**
 * Three tiers, by folder (`npx vitest run --project unit`, or `npm run test:unit` etc.; plain
 * `vitest run` runs all three):
 * - test/unit: no sockets, no server, no child processes: logic and file formats, in seconds;
 * - test/integration: the real gateway over real sockets with real clients (and the CLI, llama.cpp);
 * - test/e2e: whole programs: the trainer, `npm ci` and the image steps, kill -9 and SIGTERM.
 */
export default defineConfig({
  test: {
    testTimeout: 120_000,
    hookTimeout: 180_000,
    projects: [
      // Small, self-contained files: two at a time, each worker keeping its modules (ORT loads once).
      { extends: true, test: { name: 'unit', include: ['test/unit/**/*.test.ts'], maxWorkers: 2, isolate: false } },
      // Real servers and ONNX sessions on two cores: these files run one at a time.
      { extends: true, test: { name: 'integration', include: ['test/integration/**/*.test.ts'], fileParallelism: false } },
      { extends: true, test: { name: 'e2e', include: ['test/e2e/**/*.test.ts'], fileParallelism: false } },
    ],
  },
});
