"""TensorBoard logs of a training run hold its training metrics (Tune's TBXLoggerCallback, on by default).

A short real run (PPO on the export simulator, shrunk to 8 envs x 32 steps, 2 iterations) through the
runner, then its trial folder's ``events.out.tfevents.*`` read back without TensorFlow: the TFRecord framing
(length, CRCs) parsed here, each record decoded with tensorboardX's own ``Event`` protobuf.
"""

from __future__ import annotations

import json
import struct
from collections import defaultdict
from pathlib import Path

import pytest

from rllib_configs.loader import load_train_config
from rllib_configs.runner import RunOptions, run_training

REPO = Path(__file__).resolve().parents[1]
PREFIX = "ray/tune/"  # where TBXLoggerCallback puts every flattened result key


def _masked_crc(data: bytes) -> int:
    from tensorboardX.crc32c import crc32c

    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_scalars(path: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar summary in a TensorBoard event file (CRCs checked)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, dict[int, float]] = defaultdict(dict)
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        record = data[pos + 12 : pos + 12 + length]
        (record_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        assert length_crc == _masked_crc(header) and record_crc == _masked_crc(record), f"{path}: corrupt"
        pos += 16 + length
        event = Event.FromString(record)
        for value in event.summary.value:
            if value.HasField("simple_value"):
                scalars[value.tag][event.step] = value.simple_value
    return dict(scalars)


@pytest.mark.smoke
def test_tensorboard_event_files_hold_the_training_metrics(tmp_path, ray_session):
    spec = load_train_config(REPO / "rllib_configs/export/ppo.yaml")
    spec.algo_config.env_runners(num_envs_per_env_runner=8, rollout_fragment_length=32)
    spec.algo_config.training(train_batch_size_per_learner=256, minibatch_size=128, num_epochs=1)
    summary = run_training(spec, RunOptions(storage_path=tmp_path, stop_iters=2, seed=0))

    trial = Path(summary["trial_dir"])
    files = sorted(trial.glob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file in {trial}"
    scalars: dict[str, dict[int, float]] = {}
    for f in files:
        scalars.update(read_scalars(f))

    # Every iteration's reported metrics, as Tune wrote them to result.json beside the event file.
    results = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    assert [r["training_iteration"] for r in results] == [1, 2]
    learner = "learners/default_policy"
    for key in (
        f"{learner}/policy_loss",
        f"{learner}/vf_loss",
        f"{learner}/total_loss",
        "env_runners/num_env_steps_sampled_lifetime",
        "env_runners/reward_per_step_mean",
    ):
        tag = PREFIX + key
        assert tag in scalars, f"{tag} not in TensorBoard ({len(scalars)} tags, e.g. {sorted(scalars)[:5]})"
        got = scalars[tag]
        assert sorted(got) == [1, 2], f"{tag}: steps {sorted(got)}, want one per iteration"
        for r in results:
            want = r
            for part in key.split("/"):
                want = want[part]
            assert got[r["training_iteration"]] == pytest.approx(want, rel=1e-5, abs=1e-6), tag
    steps = scalars[PREFIX + "env_runners/num_env_steps_sampled_lifetime"]
    assert steps[2] > steps[1] > 0, steps  # the sampled steps grow: real training, not one value twice
