#!/usr/bin/env bash
# The container image's entrypoint, run under tini (PID 1): a preflight, then `exec "$@"` so the
# command (the Dockerfile's CMD: the gateway) replaces this shell and receives SIGTERM directly.
# test/e2e/image-steps.test.ts runs the Dockerfile's ENTRYPOINT + CMD through this same script.
#
#   CARRYON_DATA_DIR  the state folder (the image sets /data, its VOLUME); must be writable
set -euo pipefail
# CMD's relative paths (src/app/main.ts, bin/carryon.js) are relative to the app root.
cd "$(dirname "$0")/.."

if [ "$#" -eq 0 ]; then
  echo "image-start: no command given (the image's CMD runs the gateway)" >&2
  exit 64
fi

# A volume the container's user cannot write (a host folder owned by root, a PVC without the pod's
# fsGroup) would otherwise surface later as an EACCES deep inside the model import or the key store.
data_dir="${CARRYON_DATA_DIR:-data}"
probe="$data_dir/.image-start-write-probe.$$"
if ! { mkdir -p "$data_dir" && : >"$probe" && rm -f "$probe"; } 2>/dev/null; then
  echo "image-start: CARRYON_DATA_DIR '$data_dir' is not a writable folder for uid $(id -u) gid $(id -g)." >&2
  echo "  docker: mount a volume writable by that uid; Kubernetes: set the pod's fsGroup (the Helm chart does)." >&2
  exit 73
fi

exec "$@"
