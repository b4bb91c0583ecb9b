#!/bin/bash
# The same four benches as ../int8-activations (its run.sh, run again into this directory), after
# the weights and KV cache moved into 2 MiB pages and the many-row int8-activation panels lost
# their gathers (issue 30). Needs llama-cpp-python in the environment.
set -e
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/../int8-activations/run.sh" "$here"
