#!/usr/bin/env bash
# The accelerator check (docs/accelerators.md): the training steps on one GPU, side by side with
# PyTorch, in at most 8 minutes. Run from anywhere; it works from the repository root.
#
#   bash benchmarks/device_check.sh            # on the GPU machine
#   bash benchmarks/device_check.sh --quick    # smoke test, any machine (CPU: well under a minute)
#
# The GPU machine has jax, flax, optax, orbax, numpy, opencv and torch, but no ml-collections
# (and maybe no absl-py). Their wheels travel in $GWSSS_WHEELS (default .wheels, filled here by
# `make device-wheels`); each one whose package is missing is installed from there, offline,
# into a temporary folder put on PYTHONPATH. Figures go to stdout (one JSON line each) and, with
# a Markdown table, to $OUT (the device tool's output folder) or runs/device_check.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${GWSSS_WHEELS:-.wheels}
SITE=${TMPDIR:-/tmp}/gwsss_device_site

need=()
for pair in ml_collections:ml_collections absl:absl_py; do
  module=${pair%%:*}; wheel=${pair##*:}
  if ! "$PY" -c "import $module" 2>/dev/null; then
    found=$(ls "$WHEELS"/"$wheel"-*.whl 2>/dev/null | head -n 1)
    if [ -z "$found" ]; then
      echo "error: Python module $module is missing and $WHEELS holds no $wheel wheel;" \
           "run 'make device-wheels' where pip reaches PyPI and carry $WHEELS" >&2
      exit 2
    fi
    need+=("$found")
  fi
done
if [ ${#need[@]} -gt 0 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "${need[@]}" || exit 2
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
exec "$PY" -m benchmarks.device_check "$@"
