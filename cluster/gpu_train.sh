#!/usr/bin/env bash
# Train one config on the lent GPU machine (16 cores, one GPU) and bring back the checkpoint: the budget that
# 2 cores cannot give in a session. Run there, from the working tree copied with .gpu/ carried
# (bash cluster/gpu_machine.sh prepare, here, first):
#
#   bash cluster/gpu_train.sh CONFIG SECONDS [RUNNERS] [SEED]
#
# installs Ray (cluster/gpu_machine.sh install), trains `gridrl train --config CONFIG --time-budget SECONDS`
# with RUNNERS env runners (default 14: 16 cores less the driver and the learner) and the learner on the GPU
# (ENVS=N in the environment: N envs per runner instead of the config's, for smaller, more frequent updates),
# then copies the last checkpoint (as a trial folder: checkpoint_NNNNNN/ beside params.json and progress.csv)
# and the run's gridrl_run.json to $OUT/<config stem>/ (default ./out/gpu_train), for gridrl benchmark / export
# here. Back here: unpack checkpoint_NNNNNN.tgz (the return drops deep folders), then run
# `python cluster/repickle_numpy1.py checkpoint_NNNNNN` (the device pickles with numpy 2, this venv has 1.26),
# and pass the checkpoint to gridrl benchmark.
set -euo pipefail
config=${1:?usage: bash cluster/gpu_train.sh CONFIG SECONDS [RUNNERS] [SEED]}
seconds=${2:?usage: bash cluster/gpu_train.sh CONFIG SECONDS [RUNNERS] [SEED]}
runners=${3:-14}
seed=${4:-0}
out=${OUT:-out/gpu_train}/$(basename "$config" .yaml)
bash "$(dirname "${BASH_SOURCE[0]}")/gpu_machine.sh" install
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p "$out"
nproc > "$out/machine.txt"; uptime >> "$out/machine.txt"; nvidia-smi -L >> "$out/machine.txt" 2>&1 || true
# One iteration = one fragment from every runner: RLlib refuses a train batch that the runners' fragments
# cannot make, so the batch is set to RUNNERS x envs per runner x fragment in a copy of the config.
derived=/tmp/gpu_train_config.yaml
name=gpu_$(date +%s)  # a new run each call: a warm machine keeps /tmp/gpu_runs
python3 - "$config" "$runners" "$derived" "${ENVS:-}" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
er = cfg.setdefault("env_runners", {})
if sys.argv[4]:
    er["num_envs_per_env_runner"] = int(sys.argv[4])
batch = int(sys.argv[2]) * er.get("num_envs_per_env_runner", 1) * er.get("rollout_fragment_length", 200)
cfg.setdefault("training", {})["train_batch_size_per_learner"] = batch
yaml.safe_dump(cfg, open(sys.argv[3], "w"), sort_keys=False)
print(f"train batch {batch} ({sys.argv[2]} runners)", file=sys.stderr)
PY
# The last stdout line is the JSON summary with the checkpoint (gridrl train's contract).
python3 -m scripts train --config "$derived" --time-budget "$seconds" --seed "$seed" \
  --num-env-runners "$runners" --num-cpus "$(nproc)" --storage-path /tmp/gpu_runs --name "$name" \
  > "$out/train.out" 2> "$out/train.err" || echo "gridrl train exited $? (see train.err)" >&2
ckpt=$(python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])['checkpoint'])" \
  "$out/train.out" 2>/dev/null || true)
if [ -z "$ckpt" ]; then  # no summary line: take the newest checkpoint on disk
  ckpt=$(ls -d /tmp/gpu_runs/"$name"/*/checkpoint_* 2>/dev/null | sort | tail -1)
fi
cp -r "$ckpt" "$out/"
cp "$(dirname "$ckpt")"/params.json "$(dirname "$ckpt")"/progress.csv "$out/" 2>/dev/null || true
# gridrl_run.json (the run's config and env, one level above the trial): gridrl benchmark / evaluate / export
# look for it in the checkpoint's folder or its parents and refuse a checkpoint without it.
cp "$(dirname "$(dirname "$ckpt")")"/gridrl_run.json "$out/"
# The device's return of $OUT drops folders nested too deep (the checkpoint's learner_group/ and env_runner/):
# the same checkpoint as one archive comes back whole (here: tar xzf checkpoint_NNNNNN.tgz -C <that folder>).
tar czf "$out/$(basename "$ckpt").tgz" -C "$out" "$(basename "$ckpt")"
grep '^\[train\]' "$out/train.err" | tail -3
du -sh "$out"
