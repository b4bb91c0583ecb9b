#!/bin/bash
# profile -> measured sweep -> profile, each at nice -10 with one thread (run from /tmp/val2)
set -x
cd /tmp/val2
PY=/work/wt/sim/.venv/bin/python
export OMP_NUM_THREADS=1
date -u; cat /proc/loadavg
nice -n -10 $PY -m nvllm.tools.profile experiment=load_sweep --out /tmp/val2/profile-before.json --budget-s 600 --repeats 5 > profile-before.log 2>&1
date -u; cat /proc/loadavg
nice -n -10 $PY -m nvllm.run -m experiment=load_sweep hydra.sweep.dir=/tmp/val2/measured > measured.log 2>&1
date -u; cat /proc/loadavg
nice -n -10 $PY -m nvllm.tools.profile experiment=load_sweep --out /tmp/val2/profile-after.json --budget-s 600 --repeats 5 > profile-after.log 2>&1
date -u; cat /proc/loadavg
