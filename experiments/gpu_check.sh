#!/usr/bin/env bash
# The device check: one call on a machine with one NVIDIA GPU, from a fresh checkout, under
# 9.5 minutes. Installs nothing from the network: make the wheels first, here (where PyPI is
# reachable), then run it there carrying them:
#   bash experiments/gpu_wheels.sh                                            # here: .whl/, ~17 MiB
#   device tool: run(command="bash experiments/gpu_check.sh", carry=[".whl"], timeout_s=600)
# It installs the wheels and this checkout into a scratch directory (so nvllm.conf exists under
# a plain python3), then runs experiments/gpu_check.py from there: the GPU tests, greedy float32
# parity with transformers, the Triton kernels' tests and parity (quantized matmuls, fused MoE),
# nano-vllm's benchmark; each part under its own cap. A table is
# printed last; check.json, logs and each part's JSON go to $OUT.
#   --smoke: the same on a CPU with a tiny model (the test suite runs it; no .whl needed)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
SCRATCH=$(mktemp -d)
export PYTHONUNBUFFERED=1
WHEELS=${WHEEL_DIR:-.whl}  # the smoke test points it elsewhere to use its own environment
if [ -d "$WHEELS" ]; then
  bash "$ROOT/experiments/gpu_install.sh" "$SCRATCH/site" || { echo "gpu_check: installing .whl/ and nvllm failed" >&2; exit 1; }
  export PYTHONPATH=$SCRATCH/site
fi
# run from the scratch directory, with a copy of the checkout but its nvllm/ (the tests read docs/,
# plugins/, experiments/): `nvllm` is then the installed package (with nvllm.conf), never the
# checkout's source tree, which has no nvllm.conf
for entry in "$ROOT"/*; do [ "$(basename "$entry")" = nvllm ] || cp -r "$entry" "$SCRATCH/"; done
cd "$SCRATCH"
"$PY" -c "import nvllm.conf, hydra, omegaconf, xxhash, hypothesis, torch, transformers; print('nvllm from', nvllm.__file__)" \
  || { echo "gpu_check: a package nvllm needs is missing (bash experiments/gpu_wheels.sh, then carry .whl)" >&2; exit 1; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  "$PY" -c "import sys, torch, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__)"
} | tee "$OUT/machine.txt"
"$PY" "$ROOT/experiments/gpu_check.py" --out "$OUT" --tests "$SCRATCH/tests" "$@"
status=$?
echo "machine: $(tr '\n' ';' < "$OUT/machine.txt")  results: $OUT"
rm -rf "$SCRATCH"
exit $status
