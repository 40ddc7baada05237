#!/usr/bin/env bash
# Ray 2.60, RLlib and gridrl on a GPU machine that has Python 3.12, torch (CUDA), numpy 2, numba, pyarrow
# and pyyaml but no Ray and no network (the lent device machine; ../shared/STACK.md has the facts).
#
#   here (with the package registry):  bash cluster/gpu_machine.sh prepare
#       downloads the cp312 wheels into .gpu/ (ignored by git) and re-zips Ray's without ray/jars (Java),
#       ray/dashboard/client (the web UI build) and ray/llm: about 48 MiB, under the device's 64 MiB carry.
#   there (the working tree copied, .gpu/ carried):
#       bash cluster/gpu_machine.sh install && export PYTHONPATH=/tmp/site:$PWD
#       installs them into /tmp/site (about 1.5 min); then run gridrl from the working tree, e.g.
#       python3 tests/benchmarks/bench_sampling.py (cluster/gpu_bench.sh runs the issue-15 figures).
#
# Not installed there: polars (gridrl data / evaluate / simulate need it; training and the benchmarks
# that generate no dataset do not), CityLearn, Serve's extras.
set -euo pipefail

GPU_DIR=${GPU_DIR:-.gpu}
SITE=${SITE:-/tmp/site}
RAY_VERSION=2.60.0
# Ray's runtime needs that the machine's image lacks (STACK.md, 2026-12-03), pinned to what .venv uses.
DEPS=(gymnasium==1.2.2 farama-notifications dm-tree lz4 ormsgpack tensorboardX pydantic pydantic-core
  annotated-types typing-inspection jsonschema referencing jsonschema-specifications rpds-py)

prepare() {
  mkdir -p "$GPU_DIR"
  local pip=(python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
    --platform manylinux_2_24_x86_64 --platform any -d "$GPU_DIR/dl")
  "${pip[@]}" "ray==$RAY_VERSION"
  "${pip[@]}" "${DEPS[@]}"
  python3 - "$GPU_DIR" "$RAY_VERSION" <<'EOF'
import pathlib, sys, zipfile
out, version = pathlib.Path(sys.argv[1]), sys.argv[2]
src = next((out / "dl").glob(f"ray-{version}-cp312-*.whl"))
skip = ("ray/jars/", "ray/dashboard/client/", "ray/llm/")
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out / "ray.zip", "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if not item.filename.startswith(skip):
            zout.writestr(item, zin.read(item.filename))
src.unlink()
EOF
  du -sh "$GPU_DIR"
}

install() {
  local t0=$SECONDS
  if [ -f "$SITE/ray/__init__.py" ]; then echo "already installed in $SITE"; return; fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$GPU_DIR"/dl/*.whl
  python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$GPU_DIR/ray.zip" "$SITE"
  chmod -R +x "$SITE/ray/core/src"  # zipfile drops the exec bits of raylet and gcs_server
  PYTHONPATH="$SITE:$PWD" python3 -c "import ray, ray.rllib, torch, numpy; print('ray', ray.__version__, 'torch', torch.__version__, \
'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__)"
  echo "installed in $((SECONDS - t0)) s"
}

case "${1:-}" in
  prepare) prepare ;;
  install) install ;;
  *) echo "usage: bash cluster/gpu_machine.sh {prepare|install}  (prepare here, install there)" >&2; exit 2 ;;
esac
