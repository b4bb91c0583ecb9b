#!/usr/bin/env bash
# Install, offline, the wheels gpu_wheels.sh made (.whl/) and this checkout of nvllm into TARGET
# (a plain directory for PYTHONPATH), so that `import nvllm.conf` works under a plain python3:
# conf/ becomes the package nvllm.conf only through an install. Usage: gpu_install.sh TARGET
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TARGET=${1:?usage: gpu_install.sh TARGET}
WHEELS=${WHEEL_DIR:-.whl}
mkdir -p "$TARGET"
# --no-index --find-links: the build of nvllm finds setuptools among the carried wheels
"$PY" -m pip install -q --no-index --find-links "$WHEELS" --no-deps --no-compile --target "$TARGET" \
  "$WHEELS"/*.whl .
rm -rf build nvllm.egg-info  # the build's leftovers in the checkout
