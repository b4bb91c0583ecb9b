#!/bin/bash
while kill -0 14504 2>/dev/null; do sleep 5; done
cd /tmp/val2
export OMP_NUM_THREADS=1
date -u; cat /proc/loadavg
nice -n -10 /work/wt/sim/.venv/bin/python -m nvllm.run -m experiment=load_sweep hydra.sweep.dir=/tmp/val2/measured-again > measured-again.log 2>&1
date -u; cat /proc/loadavg
