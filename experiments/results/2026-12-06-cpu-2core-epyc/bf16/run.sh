#!/bin/bash
cd /work/wt-bf16
out=/tmp/bf16bench
date -u > $out/start.txt; uptime >> $out/start.txt
( while true; do echo "$(date -u +%H:%M:%S) $(cat /proc/loadavg)"; sleep 15; done ) > $out/load.log &
sampler=$!
.venv/bin/python -m nvllm.tools.bench --workload all --peers nvllm,llamacpp --llamacpp kv_unified=false --nvllm-dtypes float32,bfloat16,float16 --out $out/bench.json > $out/bench.log 2>&1
echo "rc=$?" >> $out/bench.log
kill $sampler
date -u > $out/end.txt; uptime >> $out/end.txt
