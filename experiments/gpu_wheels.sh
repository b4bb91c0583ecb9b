#!/usr/bin/env bash
# Fetch (here, where PyPI is reachable) the pure-Python wheels nvllm needs that the GPU image lacks,
# into .whl/ (git-ignored), for `carry`. Python 3.12 is the GPU image's.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  -d .whl hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 PyYAML
