#!/usr/bin/env bash
# Builds what bench/gpu/elastic.py needs on the lent GPU machine (Python 3.12, no internet, no stack services):
#   .whl/     the pipeline's runtime (Prefect, MLflow, boto3, FastAPI...) minus what the image has  (~56 MiB)
#   .whl2/    LMDeploy 0.18 and its extras, from ../shared/gpu/build-wheels.sh (bitsandbytes left out)  (~11 MiB)
#   .gpubin/  bin.tar.xz: SeaweedFS, Prometheus, Alertmanager, HAProxy (with the libraries it links)  (~48 MiB)
#   .gpu/     Alertmanager's templates (the Debian binary reads /usr/share/prometheus/alertmanager/*.tmpl)
# A call carries at most 64 MiB: `.whl` goes in one call, `.whl2 .gpubin .gpu` in the next (bench/gpu/README.md).
# Run from the repository root, with the stack installed here (`make install`): the binaries come from this machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
plat=(--only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
ver() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
# 1. resolve the runtime for Python 3.12 (versions pinned to this venv's), then drop what the image has
$PY -m pip install -q --dry-run --ignore-installed --report "$tmp/report.json" "${plat[@]}" --target "$tmp/t" \
  "prefect==$(ver prefect)" "mlflow==$(ver mlflow)" "boto3==$(ver boto3)" "fastapi==$(ver fastapi)" \
  "uvicorn==$(ver uvicorn)" "pydantic==$(ver pydantic)" openai typer psutil rich pyyaml httpx prometheus-client
skip=" numpy pandas pyarrow scipy scikit-learn matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing joblib
 threadpoolctl regex aiohttp yarl multidict frozenlist propcache aiosignal aiohappyeyeballs pygments pyyaml markupsafe
 psutil charset-normalizer "
$PY - "$tmp/report.json" "$skip" > "$tmp/want.txt" <<'PY'
import json, sys
skip = set(sys.argv[2].split())
for i in json.load(open(sys.argv[1]))["install"]:
    name = i["metadata"]["name"].lower().replace("_", "-")
    if name not in skip:
        print(f"{name}=={i['metadata']['version']}")
PY
rm -rf .whl .whl2 .gpubin .gpu && mkdir -p .whl .whl2 .gpubin .gpu
$PY -m pip download -q --no-deps "${plat[@]}" -d .whl -r "$tmp/want.txt"
# 2. trim: botocore keeps the S3/STS models only, MLflow drops its web UI (the bench uses the API)
$PY - <<'PY'
import glob, os, zipfile
def repack(path, drop):
    src, tmp = zipfile.ZipFile(path), path + ".tmp"
    kept = [i.filename for i in src.infolist() if not drop(i.filename)]
    keep, rec = set(kept), next(n for n in kept if n.endswith(".dist-info/RECORD"))
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        for n in kept:
            data = src.read(n)
            if n == rec:
                data = ("\n".join(l for l in data.decode().splitlines() if l.split(",")[0] in keep) + "\n").encode()
            out.writestr(src.getinfo(n), data)
    os.replace(tmp, path)
def botocore_extra(n):
    p = n.split("/")
    return len(p) > 3 and p[:2] == ["botocore", "data"] and p[2] not in {"s3", "sts", "sso", "sso-oidc"}
repack(glob.glob(".whl/botocore-*.whl")[0], botocore_extra)
repack(glob.glob(".whl/mlflow-[0-9]*.whl")[0], lambda n: n.startswith("mlflow/server/js/"))
PY
# 3. LMDeploy's set; the names the runtime set already has are not carried twice
bash ../shared/gpu/build-wheels.sh "$tmp/lmd" >/dev/null
for n in addict apache_tvm_ffi distro fire lmdeploy mmengine_lite openai_harmony partial_json_parser platformdirs \
         pybase64 pyzmq shortuuid termcolor xgrammar yapf; do cp "$tmp"/lmd/${n}-*.whl .whl2/; done
# 4. the binaries: Go builds are static; HAProxy gets its libraries and a wrapper setting LD_LIBRARY_PATH
mkdir -p "$tmp/bin/lib"
cp /usr/bin/prometheus /usr/bin/prometheus-alertmanager .venv/bin/weed "$tmp/bin/"
cp /usr/sbin/haproxy "$tmp/bin/haproxy.real"
ldd /usr/sbin/haproxy | awk '/=> \// {print $3}' | grep -v -E '/(libc|libm)\.so|ld-linux' | xargs -I{} cp -L {} "$tmp/bin/lib/"
cat > "$tmp/bin/haproxy" <<'EOF'
#!/bin/sh
d=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$d/haproxy.real" "$@"
EOF
chmod +x "$tmp/bin/haproxy"
tar -C "$tmp/bin" -cf - . | xz -9 -T0 > .gpubin/bin.tar.xz
cp -r /usr/share/prometheus/alertmanager .gpu/
du -sh .whl .whl2 .gpubin .gpu
