#!/usr/bin/env bash
# One call on a machine with one NVIDIA GPU: the GPU-marked tests, then the switch benchmark
# (eager vs cudagraph vs compile) on a random Qwen3-0.6B-shape checkpoint; a table last.
# Installs nothing from the network. The GPU image lacks hydra-core/omegaconf/antlr4: carry them
# as wheels in .whl/ (experiments/gpu_wheels.sh fetches them here). Full output goes to $OUT.
#   device tool: run(command="bash experiments/gpu_check.sh", carry=[".whl"], timeout_s=600)
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest tests -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
tests_status=${PIPESTATUS[0]}
timeout 420 python3 experiments/bench_gpu.py --out "$OUT/bench" --num-seqs 256 --max-len 1024 2>&1 | tee "$OUT/bench.log"
echo
echo "== GPU check ($(head -2 "$OUT/gpu.txt" | tail -1)) =="
echo "gpu tests: $(tail -1 "$OUT/gpu_tests.log") (exit $tests_status)"
tail -5 "$OUT/bench.log"
