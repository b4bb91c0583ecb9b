#!/bin/bash
# Peers at matched formats, nvllm's packed formats with and without int8 activations (`:a8`), on the
# embedded SmolLM2 (issue 30). Needs llama-cpp-python in the environment. Writes the JSONs and logs
# beside this script, or into the directory given as its argument. Single stream: 16-bit and
# float32 in one run, the packed formats in another (each with the llama.cpp files of its formats),
# two rounds each; cpu-bench: one round each.
set -e
cd "${1:-$(dirname "$0")}"
bench() { python -m nvllm.tools.bench --llamacpp kv_unified=false "$@"; }
bench --workload single-stream --peers nvllm,llamacpp --llamacpp-weights f32,f16 \
    --nvllm-dtypes float32,bfloat16,float16 --rounds 2 --out ss-float.json 2>&1 | tee ss-float.log
bench --workload single-stream --peers nvllm,llamacpp --llamacpp-weights q8_0,q4_0,q4_1 \
    --nvllm-quantizations int8,int8:a8,int4,int4:a8,gguf,gguf:a8,gguf=q4_0,gguf=q4_0:a8 --rounds 2 \
    --out ss-packed.json 2>&1 | tee ss-packed.log
bench --workload cpu-bench --peers nvllm,llamacpp --llamacpp-weights f32,f16 \
    --nvllm-dtypes float32,bfloat16 --out cb-float.json 2>&1 | tee cb-float.log
bench --workload cpu-bench --peers nvllm,llamacpp --llamacpp-weights q8_0,q4_0,q4_1 \
    --nvllm-quantizations int8,int8:a8,int4:a8,gguf=q4_0,gguf=q4_0:a8 --out cb-packed.json 2>&1 | tee cb-packed.log
