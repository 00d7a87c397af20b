#!/usr/bin/env bash
# The accelerator check (docs/accelerators.md): the training steps on one GPU, side by side with
# PyTorch, in at most 8 minutes. Run from anywhere; it works from the repository root.
#
#   bash benchmarks/device_check.sh            # on the GPU machine
#   bash benchmarks/device_check.sh --quick    # smoke test, any machine (CPU: well under a minute)
#
# The wheels of the packages that the GPU machine lacks travel in .wheels (benchmarks/
# device_env.sh). Figures go to stdout (one JSON line each) and, with a Markdown table, to $OUT
# (the device tool's output folder) or runs/device_check.
set -u
cd "$(dirname "$0")/.."
. benchmarks/device_env.sh || exit 2
exec "$PY" -m benchmarks.device_check "$@"
