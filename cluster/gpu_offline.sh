#!/usr/bin/env bash
# Offline training at honest budgets (issue 17: tens of thousands of learner updates, days on 2 cores) on the
# lent GPU machine, from a dataset generated and built there. Run there, from the working tree copied with
# .gpu/offline carried (bash cluster/gpu_machine.sh prepare-offline, here, first):
#
#   bash cluster/gpu_offline.sh CONFIG[,CONFIG...] SECONDS [UPDATES_PER_ITER] [SEED]
#
# 1. installs Ray, RLlib and polars (cluster/gpu_machine.sh install-offline);
# 2. generates DAYS (default 7) days of logs of the dithered PI (gridrl data generate --controller
#    dithered_pi --defects 0.01 --format parquet --seed DATA_SEED, default 0; the default site, random
#    weather from 2025-06-01) and builds the dataset (gridrl data build --seed DATA_SEED): the same commands,
#    and so the same dataset, as here (its manifest's split counts go into each log.txt, for comparison);
# 3. trains each CONFIG (rllib_configs/export/{iql,iql_residual,cql_residual,cql,bc}.yaml) for SECONDS
#    with the learner on the GPU and UPDATES_PER_ITER learner updates per iteration (default 500: each
#    iteration also runs one evaluation episode, which the GPU does not speed up). RLlib moves the target
#    networks once per iteration, so the copy of the config sets `tau` per iteration to what 0.005 per
#    update gives over the iteration's updates (1 - 0.995^N, CORL's rate). The configs train side by side,
#    each in its own embedded Ray on its share of the cores;
# 4. writes, per config, to $OUT/<config stem>/ (default ./out/gpu_offline): log.txt (the update count
#    first, then the machine, the dataset's transitions, the training lines and progress.csv) and the last
#    checkpoint's RLModule with the run's gridrl_run.json as checkpoint.tgz.partNN (15 MiB each: the device
#    returns at most 8 files of 16 MiB, none deeper than two folders).
# Back here: `cat checkpoint.tgz.part* | tar xz` in that folder, `python cluster/repickle_numpy1.py
# checkpoint_NNNNNN` (numpy 2 there, 1.26 here), then `gridrl benchmark --checkpoint checkpoint_NNNNNN`.
set -euo pipefail
usage="usage: bash cluster/gpu_offline.sh CONFIG[,CONFIG...] SECONDS [UPDATES_PER_ITER] [SEED]"
configs=${1:?$usage}
seconds=${2:?$usage}
updates=${3:-500}
seed=${4:-0}
root=${OUT:-out/gpu_offline}
days=${DAYS:-7}
data_seed=${DATA_SEED:-0}
bash "$(dirname "${BASH_SOURCE[0]}")/gpu_machine.sh" install-offline
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p "$root"
info=/tmp/gpu_offline_info.txt  # the machine and the dataset, copied into each log.txt
{ nproc; uptime; nvidia-smi -L 2>&1 || true; } > "$info"
ds=/tmp/gpu_offline_ds_${days}_${data_seed}
if [ ! -f "$ds/manifest.json" ]; then
  t0=$SECONDS
  python3 -m scripts data generate --controller dithered_pi --days "$days" --seed "$data_seed" --defects 0.01 \
    --format parquet --out "/tmp/gpu_offline_raw_${days}_${data_seed}" --force --quiet > /dev/null
  python3 -m scripts data build --raw "/tmp/gpu_offline_raw_${days}_${data_seed}" --out "$ds" \
    --seed "$data_seed" --quiet > /dev/null
  echo "dataset: $days days, seed $data_seed, built in $((SECONDS - t0)) s" | tee -a "$info"
fi
python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print({k: v for k, v in m.items() if 'split' in k or 'count' in k})" \
  "$ds/manifest.json" >> "$info" || true
# Each CONFIG in its own process and embedded Ray, side by side (16 cores; each learner is one process): the
# call's 10 minutes then hold one budget, not one per config.
train_one() {
  local config=$1 out=$root/$(basename "$1" .yaml)
  local derived=/tmp/gpu_offline_$(basename "$config") name=gpu_$(basename "$config" .yaml)_$(date +%s)
  mkdir -p "$out"
  python3 - "$config" "$updates" "$derived" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
n = int(sys.argv[2])
cfg.setdefault("offline_data", {})["dataset_num_iters_per_learner"] = n
tr = cfg.setdefault("training", {})
if "tau" in tr:  # per iteration in RLlib: 0.005 per update, compounded over the iteration's updates
    tr["tau"] = round(1.0 - 0.995 ** n, 6)
yaml.safe_dump(cfg, open(sys.argv[3], "w"), sort_keys=False)
print(f"{sys.argv[1]}: {n} updates per iteration, tau {tr.get('tau')}", file=sys.stderr)
PY
  python3 -m scripts train --config "$derived" --dataset "$ds" --time-budget "$seconds" --seed "$seed" \
    --num-cpus "$cpus" --storage-path /tmp/gpu_runs --name "$name" --checkpoint-every 1 \
    > /tmp/"$name".out 2> /tmp/"$name".err || echo "$config: gridrl train exited $?" >&2
  local ckpt
  ckpt=$(ls -d /tmp/gpu_runs/"$name"/*/checkpoint_* 2>/dev/null | sort | tail -1 || true)
  if [ -z "$ckpt" ]; then echo "$config: no checkpoint" >&2; tail -30 /tmp/"$name".err >&2; return; fi
  local trial iters
  trial=$(dirname "$ckpt")
  iters=$(python3 -c "import csv,sys; print(len(list(csv.DictReader(open(sys.argv[1])))))" "$trial/progress.csv")
  # At most 8 files of 16 MiB come back: one log and, as .tgz parts, the policy's RLModule (what gridrl
  # benchmark, evaluate and export load; not the learner's optimiser state) with the run's gridrl_run.json.
  { echo "{\"config\": \"$config\", \"seconds\": $seconds, \"iterations\": $iters, \"updates_per_iteration\": $updates, \"updates\": $((iters * updates)), \"checkpoint\": \"$(basename "$ckpt")\"}"
    cat "$info"
    grep '^\[train\]' /tmp/"$name".err; echo; cat "$trial/progress.csv"; } > "$out/log.txt"
  tar czf - -C "$trial" "$(basename "$ckpt")/learner_group/learner/rl_module" -C "$(dirname "$trial")" \
    gridrl_run.json | split -b 15m -d - "$out/checkpoint.tgz.part"
  head -1 "$out/log.txt"
  grep '^\[train\]' /tmp/"$name".err | tail -1 || true
}
n_configs=$(echo "${configs//,/ }" | wc -w)
cpus=$(( $(nproc) / n_configs ))
for config in ${configs//,/ }; do train_one "$config" & done
wait
du -sh "$root"/*
