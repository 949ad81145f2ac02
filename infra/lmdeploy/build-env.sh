#!/usr/bin/env bash
# Builds the LMDeploy serving environment in a separate venv (default .venv-lmdeploy) on a CUDA host.
# Then set `serving.lmdeploy_python: .venv-lmdeploy/bin/python` and `serving.engine: lmdeploy`.
# Offline GPU hosts: carry the wheels instead (bench/gpu/README.md, ../shared/gpu/build-wheels.sh).
set -euo pipefail
venv=${1:-.venv-lmdeploy}
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -r "$(dirname "$0")/requirements.txt"
"$venv/bin/python" -c "import lmdeploy; print('lmdeploy', lmdeploy.__version__, 'ready in $venv')"
