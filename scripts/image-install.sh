#!/usr/bin/env bash
# The container image's dependency install: the Dockerfile's deps stage runs exactly this, and
# test/e2e/image-steps.test.ts runs it on a copy of the build context, so the two cannot drift.
#
#   ACCELERATOR=cpu   onnxruntime-node's bundled CPU build (package.json's allowScripts denies ORT's
#                     install script, whose only job is downloading CUDA files, so nothing is fetched
#                     beyond the npm packages)
#   ACCELERATOR=cuda  then runs that script on purpose, for ORT's CUDA 12 provider libraries (needs
#                     CUDA 12 + cuDNN 9 at run time)
#
# Run from the app root (the folder holding package.json and package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."

accelerator="${ACCELERATOR:-cpu}"
args=(ci --omit=dev --no-audit --no-fund)
case "$accelerator" in
  cpu | cuda) ;;
  *)
    echo "image-install: ACCELERATOR must be cpu or cuda, not '$accelerator'" >&2
    exit 2
    ;;
esac

# Where a native addon has no prebuilt binary for this platform (better-sqlite3 falls back to
# node-gyp), compile its sources in parallel.
export JOBS="${JOBS:-max}"
npm "${args[@]}"
if [ "$accelerator" = cuda ]; then
  (cd node_modules/onnxruntime-node && ONNXRUNTIME_NODE_INSTALL=cuda12 node script/install.js)
fi

# Fail the image build, not the first boot: load every native addon once, and for cuda check that
# ORT's CUDA provider landed where src/engine/model-runner.ts looks for it.
ACCELERATOR="$accelerator" node --input-type=module --eval '
  import { createRequire } from "node:module";
  import fs from "node:fs";
  import path from "node:path";
  const require = createRequire(path.resolve("package.json"));
  // tsx runs the TypeScript sources at run time: its esbuild binary must match this platform.
  createRequire(require.resolve("tsx/package.json"))("esbuild").transformSync("const a: number = 1;", { loader: "ts" });
  const Database = require("better-sqlite3");
  new Database(":memory:").close();
  const ort = require("onnxruntime-node");
  const backends = ort.listSupportedBackends().map((b) => b.name);
  if (!backends.includes("cpu")) throw new Error(`onnxruntime-node has no cpu backend: ${backends}`);
  if (process.env.ACCELERATOR === "cuda") {
    const dir = path.join(path.dirname(require.resolve("onnxruntime-node")), "..", "bin", "napi-v6", process.platform, process.arch);
    const lib = path.join(dir, "libonnxruntime_providers_cuda.so");
    if (!fs.existsSync(lib)) throw new Error(`the CUDA provider was not installed: ${lib} is missing`);
  }
  console.log(`image-install: dependencies load (ACCELERATOR=${process.env.ACCELERATOR}, node ${process.version})`);
'
