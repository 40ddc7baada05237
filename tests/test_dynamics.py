"""The forward dynamics model (envs/dynamics/): data contract, training, save/load, the model env, the
evaluator's metrics, and (smoke) training through the runner and PPO on the model env.

One small dataset per module: an hour of simulated PI logs around midday, built as ``gridrl data build``
builds it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.dynamics.data import load_split, lookahead
from envs.dynamics.evaluate import kstep_metrics
from envs.dynamics.model import ForwardModel, ModelConfig
from envs.dynamics.rollout import HISTORY_S, LoggedContext, ModelStepper, _features_batch, kernel_state
from envs.state_spec import CLOCK_FEATURES, FEAT, FEATURE_NAMES, N_SIGNALS, SIG
from rllib_configs.forward_model import ForwardModelSpec, Trainer, TrainingConfig

REPO = Path(__file__).resolve().parents[1]
TINY = ModelConfig(hidden=32, members=2, context=6)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from offline_data.build import BuildConfig, build
    from offline_data.generate import GenerateConfig, generate

    root = tmp_path_factory.mktemp("dyn")
    generate(
        GenerateConfig(days=1, hours=1.0, start_hour=10.0, seed=3, scenario="broken_clouds"), root / "raw"
    )
    build(root / "raw", root / "ds", BuildConfig(), progress=False)
    return root / "ds"


def _spec(dataset: Path, steps: int = 40, members: int = 2) -> ForwardModelSpec:
    return ForwardModelSpec(
        model=ModelConfig(hidden=32, members=members, context=6),
        training=TrainingConfig(
            dataset=str(dataset),
            steps_per_iter=steps,
            batch_size=64,
            val_windows=300,
            num_threads=1,
            device="cpu",
            lr=3e-3,
        ),
    )


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> tuple[Trainer, Path]:
    trainer = Trainer(_spec(dataset), seed=0)
    trainer.train_iteration()
    path = trainer.save(tmp_path_factory.mktemp("model") / "checkpoint_000001")
    return trainer, path


def test_windows_are_the_datasets_lookahead(dataset):
    """A k-second window of the split is the row's lookahead_actions and lookahead_obs (the data contract)."""
    import pyarrow.parquet as pq

    from envs.arrow import to_numpy_2d

    split = load_split(dataset, "train")
    k = lookahead(dataset)
    table = pq.read_table(dataset / "train")
    valid = table["lookahead_valid"].to_numpy()
    t = table["t"].to_numpy()
    row = int(np.flatnonzero(valid & (t == 100))[0])
    la_obs = to_numpy_2d(table["lookahead_obs"], len(FEATURE_NAMES))[row]
    la_act = np.asarray(table["lookahead_actions"][row].as_py(), np.float32).reshape(k, 3)
    i = int(np.flatnonzero(split.t == 100)[0])
    obs, act, nxt = split.window(np.array([i]), k)
    np.testing.assert_array_equal(act[0], la_act)
    np.testing.assert_array_equal(nxt[0, -1], la_obs)
    np.testing.assert_array_equal(obs[0, 1:], nxt[0, :-1])


def test_rollout_kernel_reproduces_logged_states(dataset):
    """Fed the logged signals, the rollout's feature kernel (from the logged history) gives the logged states:
    a model rollout's state is assembled exactly as envs/state_spec.py computes the real one."""
    split = load_split(dataset, "test")
    starts = split.rollout_starts(20, HISTORY_S)[:8]
    ctx = LoggedContext.from_split(split, starts, 20)
    kstate, ring = kernel_state(ctx.history)
    for t in range(1, 21):
        log = ctx.states[:, t]
        sig = np.zeros((len(starts), N_SIGNALS))
        for p in (1, 2, 3):
            sig[:, SIG[f"meter_export_w_l{p}"]] = log[:, FEAT[f"export_w_l{p}"]]
            sig[:, SIG[f"meter_pv_w_l{p}"]] = log[:, FEAT[f"pv_w_l{p}"]]
            for n in ("target", "acked", "available"):
                sig[:, SIG[f"{n}_w_l{p}"]] = log[:, FEAT[f"{n}_w_l{p}"]]
        missing = log[:, FEAT["meter_age_s"]] > 0
        sig[np.ix_(missing, [SIG[f"meter_{m}_w_l{p}"] for m in ("export", "pv") for p in (1, 2, 3)])] = np.nan
        sig[:, SIG["setpoint_w"]] = log[:, FEAT["setpoint_w"]]
        sig[:, SIG["time_s"]] = ctx.time_s + t
        out = np.empty((len(starts), len(FEATURE_NAMES)))
        _features_batch(sig, kstate, ring, out)
        # The clock features are replayed from the log (the dataset does not hold the site's place).
        own = [i for i, n in enumerate(FEATURE_NAMES) if n not in CLOCK_FEATURES]
        np.testing.assert_allclose(out[:, own], log[:, own], rtol=1e-5, atol=0.05)


def test_availability_budgets_are_the_logged_energy_until_the_drop():
    """Per row and phase, the budget is acked_kwh_since_available at the last second before the logged
    availability dropped; none (inf) where the segment runs to the end of the log or the phase is off."""
    from envs.dynamics.data import SplitData

    n, f = 8, len(FEATURE_NAMES)
    obs = np.zeros((n, f), np.float32)
    av, kwh = FEAT["available_w_l1"], FEAT["acked_kwh_since_available_l1"]
    obs[:, av] = [3000, 3000, 3000, 0, 3000, 3000, 3000, 3000]  # one episode: a drop at row 3
    obs[:, kwh] = [0.1, 0.2, 0.3, 0.0, 0.05, 0.1, 0.15, 0.2]
    new_obs = np.roll(obs, -1, axis=0)
    new_obs[-1] = obs[-1]  # still available after the log's last row: no drop logged
    split = SplitData(obs, np.zeros((n, 3), np.float32), new_obs, np.zeros(n, np.int64), np.arange(n),
                      np.arange(n), ("e",))  # fmt: skip
    b = split.availability_budgets()[:, 0]
    np.testing.assert_allclose(b[:3], 0.3, rtol=1e-6)
    assert np.all(np.isinf(b[3:]))
    new_obs[-1, av] = 0.0  # the log shows the drop after its last row
    split._budgets = None
    np.testing.assert_allclose(split.availability_budgets()[4:, 0], 0.2, rtol=1e-6)


def test_a_policy_absorbing_more_than_the_log_loses_the_phase_earlier(trained, dataset):
    """Energy-accounted availability: with the logged phase 1 available to the end of a window and dropping
    right after, a budget of what the logged controller commanded to it in the window; a policy that takes
    the phase's full power loses its availability before the window ends, and its state says so through the
    state spec's kernel (headroom counters restart); no control keeps it as long as the log. Replaying the
    logged availability instead, the full-power policy keeps absorbing to the end."""
    trainer, _ = trained
    split = load_split(dataset, "test")
    horizon = 40
    starts = split.rollout_starts(horizon, HISTORY_S)
    ctx0 = LoggedContext.from_split(split, starts, horizon)
    av1 = FEAT["available_w_l1"]
    whole = np.flatnonzero((ctx0.states[:, :, av1] > 0).all(1))
    assert len(whole), "the test day has no window with phase 1 available throughout"
    starts = starts[whole[:: max(len(whole) // 4, 1)][:4]]

    def run(action: float, availability: str) -> np.ndarray:
        ctx = LoggedContext.from_split(split, starts, horizon)
        ctx.states[:, -1, av1] = 0.0  # the log's availability drops right after the window ...
        kwh = FEAT["acked_kwh_since_available_l1"]
        ctx.budget_kwh[:, :, 0] = ctx.states[:, -2, kwh][:, None]  # ... having taken this much
        stepper = ModelStepper(trainer.model.eval(), trainer.max_power_w, "mean", True, availability)
        stepper.reset(ctx)
        a = np.full((len(starts), 3), -1.0)
        a[:, 0] = action
        return np.stack([stepper.step(a)[0] for _ in range(horizon)], axis=1)  # (B, T, F)

    full = run(1.0, "energy")
    on = full[:, :-1, av1] > 0  # the log is available through step T - 1
    assert not on.all(1).any(), "a full-power policy kept phase 1 as long as the log"
    first_off = np.argmin(on, axis=1)
    assert (first_off < horizon - 1).all()
    b = np.arange(len(starts))
    for name in ("available_for_s_l1", "acked_kwh_since_available_l1"):
        assert np.all(full[b, first_off, FEAT[name]] == 0.0), name
    assert (run(-1.0, "energy")[:, :-1, av1] > 0).all(), "no control lost phase 1 before the log did"
    assert (run(1.0, "replay")[:, :-1, av1] > 0).all()


def test_replayed_balance_moves_export_by_what_the_policy_commands_differently(trained, dataset):
    """Log replay: export = logged export + logged acknowledged power - the rollout's acknowledged power, per
    phase (PV and the base load are the log's); with the model's own balance it is not."""
    trainer, _ = trained
    split = load_split(dataset, "test")
    starts = split.rollout_starts(20, HISTORY_S)[:: 50][:6]
    ex, ak = ([FEAT[f"{n}_w_l{p}"] for p in (1, 2, 3)] for n in ("export", "acked"))
    gaps = {}
    for balance in ("replay", "model"):
        ctx = LoggedContext.from_split(split, starts, 20)
        stepper = ModelStepper(trainer.model.eval(), trainer.max_power_w, "mean", True, "energy", balance)
        stepper.reset(ctx)
        fresh = ctx.states[:, 1:, FEAT["meter_age_s"]] == 0  # held readings are the kernel's, not the balance
        for t in range(20):
            state = stepper.step(np.full((len(starts), 3), -1.0))[0]
            log = ctx.states[:, t + 1]
            gap = state[:, ex] - (log[:, ex] + log[:, ak] - state[:, ak])
            gaps.setdefault(balance, []).append(np.abs(gap[fresh[:, t]]).max(initial=0.0))
    assert max(gaps["replay"]) < 1e-6 and max(gaps["model"]) > 1.0, gaps


def test_short_training_reduces_validation_loss(dataset):
    trainer = Trainer(_spec(dataset), seed=1)
    before = trainer.validate()
    after = trainer.train_iteration()
    # The head starts near zero change, i.e. near persistence, which is already a fair one-second guess.
    assert after["val_loss"] < 0.9 * before["val_loss"], (before, after)
    assert after["val_mse"] < before["val_mse"] and after["val_export_mae_w"] < before["val_export_mae_w"]


def test_open_loop_training_feeds_back_its_own_predictions(dataset):
    """rollout_steps: teacher-forced part = plain forward pass; the open-loop tail reads its own output."""
    spec = _spec(dataset, steps=5)
    spec = ForwardModelSpec(model=replace(spec.model, rollout_steps=3), training=spec.training)
    trainer = Trainer(spec, seed=2)
    b = trainer._batch()
    z, a, pv = b["z"][0], b["actions"][0], b["pv_next"][0]
    assert z.shape[1] == spec.model.context + 3
    m = trainer.model
    with torch.no_grad():
        teacher = m.open_loop(z, a, pv, 0, z.shape[1])
        np.testing.assert_allclose(teacher, m(z, a, members=[0], pv_next=pv)[0], atol=1e-5)
        tail = m.open_loop(z, a, pv, 0, spec.model.context)
        moved = z.clone()
        moved[:, spec.model.context :, m.learned] += 1.0  # logged values the open-loop tail must not read
        np.testing.assert_allclose(tail, m.open_loop(moved, a, pv, 0, spec.model.context), atol=1e-5)
    assert trainer.train_iteration()["train_loss"] > 0
    with pytest.raises(ValueError, match="rollout_steps"):
        ModelConfig(rollout_steps=2, inputs="all")


def test_save_and_load_give_identical_predictions(trained, dataset):
    trainer, path = trained
    loaded = ForwardModel.load(path)
    split = load_split(dataset, "test")
    starts = split.rollout_starts(10, HISTORY_S)[:16]
    for model in (trainer.model.eval(), loaded):
        stepper = ModelStepper(model, trainer.max_power_w, member="mean", replay=False)
        stepper.reset(LoggedContext.from_split(split, starts, 10))
        model.rollout = [stepper.step(split.actions[starts + t])[0] for t in range(10)]
    np.testing.assert_array_equal(np.stack(trainer.model.rollout), np.stack(loaded.rollout))
    assert loaded.feature_names == FEATURE_NAMES and loaded.extra["iteration"] == 1


def test_trainer_restore_continues_identically(trained, dataset):
    """Resume from a checkpoint = no interruption (optimiser and generator state are saved)."""
    trainer, path = trained
    a = Trainer(_spec(dataset), seed=0)
    a.restore(path)
    b = Trainer(_spec(dataset), seed=0)
    b.restore(path)
    ma, mb = a.train_iteration(), b.train_iteration()
    assert ma["train_loss"] == mb["train_loss"] and ma["val_loss"] == mb["val_loss"]


def test_model_roles_follow_the_state_spec():
    from tests.benchmarks.bench_dynamics import FEATURES

    assert tuple(FEATURES) == FEATURE_NAMES, "the benchmark's copy of the feature names is stale"
    n = len(FEATURE_NAMES)
    m = ForwardModel(FEATURE_NAMES, np.zeros(n), np.ones(n), np.ones(n), 3, 5, TINY)
    learned = [FEATURE_NAMES[i] for i in m.learned]
    assert learned == [f"{n}_w_l{p}" for n in ("export", "acked") for p in (1, 2, 3)]
    w = dict(zip(learned, m.loss_weight.tolist(), strict=True))
    assert w["export_w_l2"] == 5.0 and w["acked_w_l3"] == 3.0


def test_structured_head_moves_export_through_acknowledged_power():
    """Untrained, the structured head already has the site's sign: a full command raises the acknowledged
    power (within what is available) and lowers export one for one; a met command does not drift."""
    n = len(FEATURE_NAMES)
    m = ForwardModel(FEATURE_NAMES, np.zeros(n), np.ones(n), np.ones(n), 3, 5, TINY, action_scale_w=7500.0)
    for net in m.members:  # a head that outputs zeros: gate sigmoid(-1), no correction, u unchanged
        torch.nn.init.zeros_(net.head[-1].weight)
        torch.nn.init.zeros_(net.head[-1].bias)
    x = np.zeros((1, 1, n), np.float32)
    x[..., [FEAT[f"available_w_l{p}"] for p in (1, 2, 3)]] = 2000.0
    x[..., [FEAT[f"pv_w_l{p}"] for p in (1, 2, 3)]] = 3000.0
    x[..., [FEAT[f"export_w_l{p}"] for p in (1, 2, 3)]] = 2500.0  # base load 500 W, nothing controlled
    z = torch.as_tensor(x)
    with torch.no_grad():
        full, off = m(z, torch.ones(1, 1, 3))[0, 0, 0].numpy(), m(z, -torch.ones(1, 1, 3))[0, 0, 0].numpy()
    acked = full[3:]
    assert np.all(acked > 0) and np.all(acked <= 2000.0)
    np.testing.assert_allclose(full[:3], 2500.0 - acked, atol=1e-3)
    np.testing.assert_allclose(off, [2500.0] * 3 + [0.0] * 3, atol=1e-3)


def test_model_module_imports_without_ray_or_gymnasium():
    """The GPU box has torch alone: model.py and the benchmark must not pull in Ray or gymnasium."""
    import subprocess
    import sys

    code = (
        "import sys, importlib.util\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('ray', 'gymnasium', 'polars', 'envs'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.path.insert(0, 'tests/benchmarks')\n"
        "import bench_dynamics\n"
        "mod = bench_dynamics.load_model_module()\n"
        "n = len(bench_dynamics.FEATURES)\n"
        "print(len(mod.ForwardModel(bench_dynamics.FEATURES, [0]*n, [1]*n, [1]*n).learned))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "6"


def test_kstep_metrics_of_a_perfect_predictor_beat_persistence(trained, dataset):
    """The k-step score machinery itself: the trained model is finite and scored against persistence."""
    trainer, _ = trained
    split = load_split(dataset, "test")
    starts = split.rollout_starts(trainer.k, HISTORY_S)[::7]
    m = kstep_metrics(trainer.model, split, starts, trainer.max_power_w)
    assert m["windows"] == len(starts) and np.isfinite(m["mse"]) and m["persistence_mse"] > 0
    assert len(m["per_feature_mse"]) == len(FEATURE_NAMES)


def _env_config(trained, dataset) -> dict:
    return {
        "model": str(trained[1]),
        "dataset": str(dataset),
        "split": "test",
        "horizon_s": 60,
        "disagreement_threshold": 0.0,
        "member": "random",
    }


def test_model_env_passes_check_env(trained, dataset):
    from gymnasium.utils.env_checker import check_env

    from envs.dynamics.model_env import ExportModelEnv

    check_env(ExportModelEnv(_env_config(trained, dataset)), skip_render_check=True)


def test_model_env_is_registered_and_seeded(trained, dataset):
    """gym.make by id; two envs with the same seed give the same 50-step rollout, to the bit."""
    import gymnasium as gym

    from envs.dynamics.model_env import ENV_ID

    def run(seed: int) -> np.ndarray:
        env = gym.make(ENV_ID, config=_env_config(trained, dataset))
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(0)
        out = [obs]
        for _ in range(50):
            obs, r, term, trunc, info = env.step(rng.uniform(-1, 1, 3).astype(np.float32))
            out.append(np.append(obs, r))
            if term or trunc:
                obs, _ = env.reset()
        return np.concatenate(out)

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_model_env_stops_where_members_disagree(trained, dataset):
    from envs.dynamics.model_env import ExportModelEnv

    env = ExportModelEnv({**_env_config(trained, dataset), "disagreement_threshold": 1e-9})
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(np.ones(3, np.float32))
    assert truncated and not terminated and info["stopped_by_disagreement"] and info["disagreement"] > 1e-9


def test_evaluator_computes_the_simulators_metrics_of_record_on_a_trace():
    """The evaluator's trace of a simulated episode's states gives the metrics the simulator's trace gives:
    the same function (envs.metrics.metrics_of_record) on columns built from the state vector."""
    import envs.dynamics.evaluator as ev
    import envs.metrics
    from envs.export_env import ExportEnvConfig
    from envs.rollout import make_controller, rollout

    assert ev.metrics_of_record is envs.metrics.metrics_of_record
    tr = rollout(
        make_controller("pi", 7500),
        ExportEnvConfig(scenario="broken_clouds", episode_s=900, start_s=43200),
        seed=4,
    )
    ours = ev.metrics_of_record(
        ev.trace_from_states(tr.obs[None, 1:].astype(np.float64), tr.obs[None, 0], 60.0)
    )
    sim = envs.metrics.metrics_of_record(tr.frame)
    # The state holds meter readings (15 W noise per phase, held when missing) where the simulator's trace
    # holds the true powers, and acknowledged commands where it holds the slaves' ramped power.
    assert ours["export_kwh"] == pytest.approx(sim["export_kwh"], rel=0.05, abs=0.005)
    assert ours["peak_export_w"] == pytest.approx(sim["peak_export_w"], abs=100.0)
    assert ours["phase_imbalance_w"] == pytest.approx(sim["phase_imbalance_w"], rel=0.05)
    assert ours["oscillations_per_min"] == pytest.approx(sim["oscillations_per_min"], rel=0.25, abs=0.2)
    assert ours["safety_violations"] == sim["safety_violations"] == 0


def test_model_based_evaluation_of_baselines(trained, dataset, tmp_path):
    from envs.dynamics.evaluator import evaluate_with_model

    res = evaluate_with_model(
        None,
        str(trained[1].parent),
        str(dataset),
        tmp_path,
        seed=0,
        windows=4,
        horizon_s=60,
        baselines=("pi", "zero"),
    )
    assert set(res) == {"logged_pi", "pi", "zero"}
    assert (tmp_path / "model_based.json").is_file()
    for m in res.values():
        assert np.isfinite(m["export_kwh"]) and 0.0 <= m["trusted_share"] <= 1.0


@pytest.mark.smoke
def test_forward_model_trains_through_the_runner(dataset, tmp_path, ray_session):
    import yaml

    from rllib_configs.loader import load_train_config
    from rllib_configs.runner import RunOptions, run_training

    cfg = yaml.safe_load((REPO / "rllib_configs/export/forward_model.yaml").read_text())
    cfg["model"].update(hidden=32, members=2, context=6)
    cfg["training"].update(steps_per_iter=20, batch_size=32, val_windows=200, num_threads=1)
    path = tmp_path / "forward_model.yaml"
    path.write_text(yaml.safe_dump(cfg))
    spec = load_train_config(path, dataset=str(dataset))
    summary = run_training(spec, RunOptions(storage_path=tmp_path / "runs", stop_iters=2, seed=0))
    ckpt = Path(summary["checkpoint"])
    assert (ckpt / "model.pt").is_file() and summary["metrics"]["training_iteration"] == 2
    assert summary["metrics"]["learners/forward_model/val_loss"] > 0
    ForwardModel.load(ckpt)
    # --resume of a finished run reruns nothing and returns the same last checkpoint
    summary2 = run_training(
        spec, RunOptions(storage_path=tmp_path / "runs", stop_iters=2, seed=0, resume=True)
    )
    assert summary2["checkpoint"] == summary["checkpoint"] and summary2["metrics"]["training_iteration"] == 2


@pytest.mark.smoke
def test_ppo_trains_on_the_model_env(trained, dataset, tmp_path, ray_session):
    from rllib_configs.loader import load_train_config
    from rllib_configs.policy import load_policy
    from rllib_configs.runner import RunOptions, configure, run_training

    spec = load_train_config(
        REPO / "rllib_configs/export/ppo_model.yaml", dataset=str(dataset), model=str(trained[1])
    )
    assert spec.algo_config.env == "gridrl-export-model"
    spec.algo_config.environment(env_config={**spec.algo_config.env_config, "split": "test", "horizon_s": 60})
    spec.algo_config.training(train_batch_size_per_learner=240, minibatch_size=120, num_epochs=1)
    configure(spec, RunOptions(storage_path=tmp_path))  # the runner's own path, checked here once
    summary = run_training(spec, RunOptions(storage_path=tmp_path, stop_iters=1, seed=0, num_env_runners=0))
    assert summary["metrics"]["training_iteration"] == 1
    a = load_policy(summary["checkpoint"]).act_unit(load_split(dataset, "test").obs[:5])
    assert a.shape == (5, 3) and np.all(np.abs(a) <= 1.0)
    # the policy judged without a simulator: gridrl evaluate --model --dataset (CLI, JSON last line)
    from scripts.cli import main

    out = tmp_path / "model_based"
    argv = ["evaluate", "--checkpoint", summary["checkpoint"], "--model", str(trained[1]), "--dataset",
            str(dataset), "--windows", "3", "--horizon-s", "60", "--baselines", "pi,zero", "--out", str(out)]
    assert main(argv) == 0
    saved = json.loads((out / "model_based.json").read_text())["results"]
    assert set(saved) == {"policy", "pi", "zero", "logged_pi"}
    assert all(np.isfinite(m["export_kwh"]) for m in saved.values())
    no_dataset = ["evaluate", "--checkpoint", summary["checkpoint"], "--model", str(trained[1])]
    assert main([*no_dataset, "--out", str(out)]) == 2


def test_config_errors_name_the_key(dataset, tmp_path):
    import yaml

    from envs.config import ConfigError
    from rllib_configs.loader import load_train_config

    cfg = yaml.safe_load((REPO / "rllib_configs/export/forward_model.yaml").read_text())
    cfg["model"]["hiden"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="model.hiden"):
        load_train_config(path, dataset=str(dataset))
    with pytest.raises(ConfigError, match="training.dataset"):
        load_train_config(REPO / "rllib_configs/export/forward_model.yaml")
    with pytest.raises(ConfigError, match="model"):
        load_train_config(REPO / "rllib_configs/export/ppo_model.yaml", dataset=str(dataset))
    torch.set_num_threads(2)
