#!/usr/bin/env bash
# gridrl's one entry point for a fresh machine (Python 3.11 + pip):
#   bash scripts/dev.sh main   create .venv if missing, install, run the main job on a local embedded Ray
#   bash scripts/dev.sh test   create .venv if missing, install, run the default test suite
#   bash scripts/dev.sh setup  only create/update .venv
# Extra arguments after the verb go to the job (main) or to pytest (test).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3

setup() {
  if [ ! -x "$venv/bin/python" ]; then
    echo "[gridrl] creating $venv"
    "$py" -m venv "$venv"
  fi
  # Reinstall only when the dependency set changed (stamp = hash of pyproject.toml and this script).
  stamp="$venv/.gridrl-installed"
  want="$(cat pyproject.toml scripts/dev.sh | sha256sum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[gridrl] installing the pinned stack into $venv (first time: a few minutes)"
    "$venv/bin/python" -m pip install --quiet --upgrade "pip>=24" setuptools wheel
    # 1) Ray 2.60 + torch + the rest, resolved together (pyproject.toml pins them).
    "$venv/bin/python" -m pip install --quiet -e ".[dev]"
    # 2) CityLearn without its gymnasium<=0.28.1 pin; its runtime deps came with step 1.
    "$venv/bin/python" -m pip install --quiet --no-deps "citylearn==3.0.2"
    # 3) Refuse a silently downgraded stack.
    "$venv/bin/python" - <<'PY'
import importlib.metadata as m
want = {"ray": "2.60.0", "gymnasium": "1.2.2", "citylearn": "3.0.2"}
bad = {k: m.version(k) for k, v in want.items() if m.version(k) != v}
if bad:
    raise SystemExit(f"gridrl setup: wrong versions installed {bad}, wanted {want}")
if int(m.version("numpy").split(".")[0]) >= 2:
    raise SystemExit("gridrl setup: numpy>=2 was installed; ray.rllib needs numpy<2 with pyarrow<26")
PY
    echo "$want" > "$stamp"
  fi
}

verb="${1:-main}"; shift || true
case "$verb" in
  setup) setup ;;
  main)  setup; exec "$venv/bin/gridrl" pipeline "$@" ;;
  test)  setup; exec "$venv/bin/python" -m pytest "$@" ;;
  *) echo "usage: bash scripts/dev.sh {main|test|setup} [args...]" >&2; exit 2 ;;
esac
