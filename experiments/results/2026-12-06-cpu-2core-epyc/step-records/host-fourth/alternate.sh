#!/bin/bash
# 6794ac0 (before) and main alternating, greedy and sampled, 1/64/256 sequences
for round in 1 2 3; do
  for which in before main; do
    dir=/work/$which  # /work/before: a checkout of 6794ac0; /work/main: main
    echo "== round $round $which $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    PYTHONPATH=$dir /work/main/.venv/bin/python -m nvllm.tools.bench --workload host --batch-sizes 1,64,256 --sampling greedy,sampled \
      --steps 60 --warmup 10 --out "$which-$round.json" 2>&1 | grep -v "Warn\|INFO" | tail -9 | head -7
  done
done
