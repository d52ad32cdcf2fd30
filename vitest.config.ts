import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 180_000,
    // Tests start real servers and ONNX sessions; two cores, so keep files sequential.
    fileParallelism: false,
  },
});
