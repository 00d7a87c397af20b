#!/usr/bin/env bash
# One sweep variant per SLURM array task: task i runs line i + 1 of a commands file written by
# `python -m gwsss_jax.sweep ... --print_commands`.
#
#   python -m gwsss_jax.sweep --config=configs/voc.py --sweep=configs/sweeps/table3.py \
#       --workdir=/shared/runs/table3 --print_commands > /shared/runs/table3/commands.txt
#   grep -v -- '--only=' /shared/runs/table3/commands.txt > first.txt   # own classifiers
#   grep -- '--only=' /shared/runs/table3/commands.txt > second.txt     # reuse one (cam_*)
#   job=$(sbatch --parsable --array=0-$(( $(wc -l < first.txt) - 1 )) launch/sweep_slurm.sh first.txt)
#   sbatch --dependency=afterok:$job --array=0-$(( $(wc -l < second.txt) - 1 )) \
#       launch/sweep_slurm.sh second.txt
#   python -m gwsss_jax.sweep --config=configs/voc.py --sweep=configs/sweeps/table3.py \
#       --workdir=/shared/runs/table3 --table_only                      # the Markdown table
#
# Each task is one process on one node (all of its GPUs); ask for them with sbatch's
# --gpus-per-node. PYTHON replaces the interpreter named in the commands (e.g. a venv's).
#SBATCH --job-name=gwsss-sweep
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --output=gwsss-sweep-%A_%a.log
set -euo pipefail

commands=${1:?usage: sbatch --array=0-N launch/sweep_slurm.sh COMMANDS_FILE}
task=${SLURM_ARRAY_TASK_ID:?run as a SLURM array job (sbatch --array=...)}
[[ -f "$commands" ]] || { echo "commands file not found: $commands" >&2; exit 2; }
line=$(sed -n "$((task + 1))p" "$commands")
[[ -n "$line" ]] || { echo "$commands has no line $((task + 1)) for array task $task" >&2; exit 2; }
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
if [[ -n "${PYTHON:-}" ]]; then
  read -r first rest <<< "$line"
  line="$(printf '%q' "$PYTHON") $rest"
fi
echo "array task $task: $line" >&2
eval "exec $line"
