#!/bin/bash
# The same four benches as ../int8-activations (its run.sh, run again into this directory), after
# the weights and KV cache moved into 2 MiB pages and the many-row int8-activation panels lost
# their gathers (issue 30). Needs llama-cpp-python in the environment.
set -e
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/../int8-activations/run.sh" "$here"
# the two ratios nearest their goals, again with three rounds (each run's median): cpu-bench at q4_0,
# single stream at 16 bits
cd "$here"
bench() { python -m nvllm.tools.bench --llamacpp kv_unified=false "$@"; }
bench --workload cpu-bench --peers nvllm,llamacpp --llamacpp-weights q4_0 \
    --nvllm-quantizations gguf=q4_0:a8 --rounds 3 --out cb-q4_0-rounds3.json 2>&1 | tee cb-q4_0-rounds3.log
bench --workload single-stream --peers nvllm,llamacpp --llamacpp-weights f16 \
    --nvllm-dtypes bfloat16,float16 --rounds 3 --out ss-16bit-rounds3.json 2>&1 | tee ss-16bit-rounds3.log
