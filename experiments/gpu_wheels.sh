#!/usr/bin/env bash
# Build here, where PyPI is reachable, every wheel nvllm needs that the GPU image lacks, into .whl/
# (git-ignored), for the device tool's carry: run(command="bash experiments/gpu_check.sh", carry=[".whl"]).
# The image (2026-11-28): Python 3.12, torch 2.11 (cu130), transformers 5.17, triton 3.6, pluggy,
# safetensors, numpy, matplotlib, pytest, no network. nvllm's imports it lacks: hydra-core,
# omegaconf, antlr4 (omegaconf's parser), xxhash (prefix hashing), gguf (GGUF loading), PyYAML;
# the tests add hypothesis (+ attrs, sortedcontainers); the report's pandas (+ pytz, tzdata) and
# tabulate and the server's prometheus_client are imported by test modules that `pytest -m gpu`
# collects (a module that fails to import fails the whole tests part). setuptools builds nvllm itself there
# (experiments/gpu_install.sh), so that the installed package has nvllm.conf.
# PY_VERSION / PLATFORM / WHEEL_DIR pick another target (the tests install a 3.11 set here).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${WHEEL_DIR:-.whl}
rm -rf "$DEST"
mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" --implementation cp \
  --platform "${PLATFORM:-manylinux2014_x86_64}" -d "$DEST" \
  hydra-core==1.3.2 omegaconf==2.3.0 PyYAML==6.0.2 xxhash==3.5.0 gguf==0.17.1 \
  hypothesis==6.135.0 attrs==25.3.0 sortedcontainers==2.4.0 setuptools==80.9.0 \
  pandas==2.2.3 pytz==2026.6 tzdata==2026.6 tabulate==0.10.0 prometheus_client==0.26.0
# omegaconf 2.3 pins antlr4-python3-runtime 4.9.3, published only as a source distribution: build it
"$PY" -m pip wheel -q --no-deps --no-binary antlr4-python3-runtime -w "$DEST" antlr4-python3-runtime==4.9.3
ls -l "$DEST"
du -sh "$DEST"
total=$(du -sm "$DEST" | cut -f1)
if [ "$total" -ge 64 ]; then echo "gpu_wheels: $DEST holds $total MiB; the device tool carries at most 64" >&2; exit 1; fi
