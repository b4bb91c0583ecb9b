#!/bin/bash
# Host time per decode step, the checkout before the step-records change and the one after
# alternating in one sitting: alternate.sh BEFORE_CHECKOUT AFTER_CHECKOUT [ROUNDS]
# (each checkout's nvllm is put first on PYTHONPATH; the venv is this checkout's)
before=$1 after=$2 rounds=${3:-2}
for round in $(seq "$rounds"); do
  for which in before after; do
    dir=${!which}
    echo "== round $round $which $(date +%T) $(uptime | sed 's/.*load/load/')"
    PYTHONPATH=$dir python -m nvllm.tools.bench --workload host --batch-sizes 1,64,256 --sampling greedy \
      --steps 60 --warmup 10 --out "$which-$round.json" 2>&1 | grep -v "Warn\|INFO" | tail -8
  done
done
