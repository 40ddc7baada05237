#!/usr/bin/env bash
# CityLearn trainings side by side on the lent GPU machine (16 cores, one GPU), each evaluated on its held-out
# weeks there: the simulated years that 2 cores cannot give in a session. Run there, from the working tree
# copied with .gpu/citylearn carried (bash cluster/gpu_machine.sh prepare-citylearn, here, first):
#
#   bash cluster/gpu_citylearn.sh SECONDS JOB [JOB ...]
#   JOB = NAME=CONFIG,SCHEMA,RUNNERS[,SEED]      SCHEMA: district (the 2022 district, carried) or mall (built
#                                                 there: gridrl citylearn build-schema, seed 0)
# e.g. bash cluster/gpu_citylearn.sh 330 ppo=rllib_configs/citylearn/ppo.yaml,district,10 \
#        sac=rllib_configs/citylearn/sac.yaml,district,3
#
# Every job is `gridrl citylearn train --config CONFIG --schema S --time-budget SECONDS --num-env-runners
# RUNNERS --evaluate` in its own embedded Ray (RUNNERS + 2 CPUs; the learner on the GPU, as gridrl train puts
# it when it sees one). Back in $OUT/NAME/ (default ./out/gpu_citylearn): the held-out evaluation
# (kpis.json, targets.json), progress.csv, the last stdout line (train.json) and train.err's [train] lines;
# machine.txt has the cores, the load before and after, and the GPU. Size the jobs' runners to the cores.
# Not yet run there: on 2026-12-08 the device could not be started in six tries (README, CityLearn).
set -euo pipefail
seconds=${1:?usage: bash cluster/gpu_citylearn.sh SECONDS NAME=CONFIG,SCHEMA,RUNNERS[,SEED] ...}
shift
[ $# -gt 0 ] || { echo "usage: bash cluster/gpu_citylearn.sh SECONDS NAME=CONFIG,SCHEMA,RUNNERS[,SEED] ..." >&2; exit 2; }
out=${OUT:-out/gpu_citylearn}
runs=/tmp/gpu_citylearn_runs/$(date +%s)  # a new folder each call: a warm machine keeps /tmp
bash "$(dirname "${BASH_SOURCE[0]}")/gpu_machine.sh" install-citylearn
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p "$out"
{ nproc; uptime; nvidia-smi -L 2>&1 || true; } > "$out/machine.txt"
schemas=/tmp/citylearn_schemas
pids=()
for job in "$@"; do
  name=${job%%=*}
  IFS=, read -r config schema runners seed <<< "${job#*=}"
  seed=${seed:-0}
  case "$schema" in
    district) schema=$schemas/citylearn_challenge_2022_phase_all_plus_evs ;;
    mall) [ -f "$schemas/mall/schema.json" ] || python3 -m scripts citylearn build-schema --out "$schemas/mall" \
            --seed 0 > /dev/null
          schema=$schemas/mall ;;
  esac
  mkdir -p "$out/$name"
  echo "$name: $config on $schema, $runners runners, seed $seed, ${seconds} s" | tee -a "$out/machine.txt"
  python3 -m scripts citylearn train --schema "$schema" --config "$config" --time-budget "$seconds" \
    --seed "$seed" --num-env-runners "$runners" --num-cpus $((runners + 2)) --storage-path "$runs" \
    --name "$name" --evaluate > "$out/$name/train.out" 2> "$out/$name/train.err" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
uptime >> "$out/machine.txt"
for job in "$@"; do
  name=${job%%=*}
  tail -1 "$out/$name/train.out" > "$out/$name/train.json" 2>/dev/null || true
  grep '^\[train\]' "$out/$name/train.err" | tail -5 > "$out/$name/train.lines" || true
  trial=$(ls -d "$runs/$name"/*/ 2>/dev/null | head -1)
  [ -n "$trial" ] || { echo "$name: no trial folder (see $out/$name/train.err)" >&2; continue; }
  cp "$trial"/progress.csv "$out/$name/" 2>/dev/null || true
  cp "$trial"/heldout/kpis.json "$trial"/heldout/targets.json "$out/$name/" 2>/dev/null \
    || echo "$name: no held-out evaluation (see $out/$name/train.err)" >&2
done
exit $status
