#!/usr/bin/env bash
# The device command for bench/gpu/elastic.py (see bench/gpu/README.md): installs the carried wheels into the
# image's Python, unpacks the carried binaries (SeaweedFS, Prometheus, Alertmanager, HAProxy with its libraries),
# then runs the bench. Usage: bash bench/gpu/elastic-device.sh [elastic.py args...]; $OUT receives the results.
set -euo pipefail
for d in .whl .whl2; do
  if [ -d "$d" ] && [ ! -e "/tmp/llmops-installed$d" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$d"/*.whl && touch "/tmp/llmops-installed$d"
  fi
done
if [ -d .gpu/alertmanager ] && [ ! -d /usr/share/prometheus/alertmanager ]; then  # the Debian binary's templates
  mkdir -p /usr/share/prometheus && cp -r .gpu/alertmanager /usr/share/prometheus/
fi
if [ ! -x /opt/llmops-bin/prometheus ]; then
  mkdir -p /opt/llmops-bin && tar -C /opt/llmops-bin -xJf .gpubin/bin.tar.xz
fi
export PATH=/opt/llmops-bin:$PATH PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
haproxy -v | head -1; prometheus --version 2>&1 | head -1; weed version 2>&1 | head -1
python3 -c "import lmdeploy, torch; print('lmdeploy', lmdeploy.__version__, 'gpus', torch.cuda.device_count())"
python3 bench/gpu/elastic.py --out-dir "${OUT:-bench/results}" "$@" 2>&1 | tee "${OUT:-/tmp}/elastic.log"
