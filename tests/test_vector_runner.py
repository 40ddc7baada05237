"""Vectorised sampling (issue 15): the batched simulator and VectorEnvRunner give RLlib the transitions
that single envs and RLlib's own loop give, and a vectorised PPO run trains, checkpoints, resumes and
evaluates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ENV_CONFIG = {"scenario": "random", "episode_s": 60, "normalization": "default"}


def test_vector_env_members_are_the_single_envs_seeded_seed_plus_i():
    from envs.export_env import ExportControlEnv, ExportControlVectorEnv

    cfg = {"scenario": "random", "episode_s": 90}
    n, seed = 3, 11
    venv = ExportControlVectorEnv(n, cfg)
    singles = [ExportControlEnv(cfg) for _ in range(n)]
    obs_v, _ = venv.reset(seed=seed)
    obs_s = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(singles)])
    np.testing.assert_array_equal(obs_v, obs_s)
    rng = np.random.default_rng(0)
    # two episodes: the second starts from the autoreset (NEXT_STEP), the singles from reset()
    for _episode in range(2):
        for t in range(90):
            a = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
            o_v, r_v, te_v, tr_v, _ = venv.step(a)
            steps = [e.step(a[i]) for i, e in enumerate(singles)]
            np.testing.assert_array_equal(o_v, np.stack([s[0] for s in steps]))
            np.testing.assert_array_equal(r_v, np.array([s[1] for s in steps]))
            assert list(tr_v) == [s[3] for s in steps] and list(tr_v) == [t == 89] * n
        o_v, r_v, *_ = venv.step(np.zeros((n, 3), np.float32))  # the autoreset step
        assert np.all(r_v == 0)
        np.testing.assert_array_equal(o_v, np.stack([e.reset()[0] for e in singles]))
    assert any(not np.array_equal(obs_v[0], obs_v[i]) for i in range(1, n)), "members must differ"


def test_site_draws_give_each_group_and_episode_its_own_site():
    from envs.export_env import ExportControlEnv, ExportControlVectorEnv

    venv = ExportControlVectorEnv(4, {"episode_s": 60, "site_draws": 2})
    venv.reset(seed=1)
    first = [sim.site for sim in venv._sims]
    assert len(first) == 2 and first[0] != first[1] and all(s != venv.site for s in first)
    pv = [sum(a.kwp for a in s.pv) for s in first]
    assert pv[0] != pv[1]
    for _ in range(61):  # the episode ends, the autoreset draws new sites
        venv.step(np.zeros((4, 3), np.float32))
    assert [sim.site for sim in venv._sims] != first
    venv.reset(seed=1)  # the same seed draws the same sites
    assert [sim.site for sim in venv._sims] == first
    single = ExportControlEnv({"episode_s": 60, "site_draws": 1})
    single.reset(seed=4)
    a = single.site
    single.reset(seed=5)
    assert a != single.site and a.control.max_power_per_phase_w == single.site.control.max_power_per_phase_w


def _runner(cls, num_envs: int, mode: str, seed: int = 3):
    from ray.rllib.algorithms.ppo import PPOConfig

    from rllib_configs.envs import EXPORT_ENV, register_rllib_envs

    register_rllib_envs()
    config = (
        PPOConfig()
        .environment(EXPORT_ENV, env_config=dict(ENV_CONFIG))
        .env_runners(num_env_runners=0, num_envs_per_env_runner=num_envs, gym_env_vectorize_mode=mode)
        .rl_module(model_config={"fcnet_hiddens": [16, 16]})
        .debugging(seed=seed)
    )
    return cls(config=config)


def _by_first_obs(episodes):
    return sorted(episodes, key=lambda e: (e.t_started, e.get_observations()[0].tobytes()))


@pytest.mark.parametrize("explore", [False, True], ids=["greedy", "exploring"])
def test_vector_runner_returns_the_episodes_of_rllibs_loop(explore):
    """Same seed, same weights, same torch seed: VectorEnvRunner over the batched simulator returns the
    episode chunks RLlib's SingleAgentEnvRunner returns over 4 single envs (gymnasium's sync vector env),
    across two sample() calls (continuation chunks) and an episode end (autoreset)."""
    import torch
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    from rllib_configs.vector_runner import VectorEnvRunner

    rllib = _runner(SingleAgentEnvRunner, 4, "sync")
    ours = _runner(VectorEnvRunner, 4, "vector_entry_point")
    ours.set_state(rllib.get_state(components="rl_module"))
    seen = []
    for call in range(4):  # 4 x 25 steps per env: 60-s episodes end inside, chunks continue across calls
        torch.manual_seed(call)
        a = _by_first_obs(rllib.sample(num_timesteps=100, explore=explore))
        torch.manual_seed(call)
        b = _by_first_obs(ours.sample(num_timesteps=100, explore=explore))
        assert [(len(e), e.t_started, e.is_done) for e in a] == [(len(e), e.t_started, e.is_done) for e in b]
        seen += [(e.is_truncated, e.t_started > 0) for e in b]
        for e1, e2 in zip(a, b, strict=True):
            np.testing.assert_allclose(e2.get_observations(), e1.get_observations(), atol=1e-6)
            np.testing.assert_allclose(e2.get_actions(), e1.get_actions(), atol=1e-6)
            np.testing.assert_allclose(e2.get_rewards(), e1.get_rewards(), atol=1e-9)
            for key in ("action_logp", "action_dist_inputs"):
                np.testing.assert_allclose(
                    e2.get_extra_model_outputs(key), e1.get_extra_model_outputs(key), atol=1e-5
                )
    assert (True, True) in seen and (False, True) in seen and (False, False) in seen  # ends, continuations
    m1, m2 = rllib.get_metrics(), ours.get_metrics()
    assert m2["num_episodes_lifetime"].peek() == m1["num_episodes_lifetime"].peek() == 4
    assert m2["episode_return_mean"].peek() == pytest.approx(m1["episode_return_mean"].peek(), rel=1e-6)


def test_vector_runner_falls_back_to_rllibs_loop_for_episodes():
    """sample(num_episodes=...) (evaluation) goes through RLlib's loop, and array sampling resumes after."""
    from rllib_configs.vector_runner import VectorEnvRunner

    runner = _runner(VectorEnvRunner, 2, "vector_entry_point")
    assert sum(len(e) for e in runner.sample(num_timesteps=30)) == 30
    episodes = runner.sample(num_episodes=2, explore=False)
    assert len(episodes) == 2 and all(len(e) == 60 and e.is_truncated for e in episodes)
    chunks = runner.sample(num_timesteps=30)
    assert sum(len(e) for e in chunks) == 30 and all(e.t_started == 0 for e in chunks)


@pytest.mark.smoke
def test_vectorised_ppo_trains_checkpoints_resumes_and_evaluates(tmp_path, ray_session):
    """The shipped PI-residual config (VectorEnvRunner, batched simulator), made small: 2 iterations,
    a resume to 3 from the checkpoint, then an evaluation against the PI on a held-out hour."""
    from rllib_configs.loader import load_train_config
    from rllib_configs.runner import RunOptions, run_training
    from rllib_configs.vector_runner import VectorEnvRunner
    from scripts.evaluate import evaluate_export

    def spec():
        s = load_train_config(REPO / "rllib_configs/export/ppo_residual.yaml")
        assert s.algo_config.env_runner_cls is VectorEnvRunner
        assert s.algo_config.gym_env_vectorize_mode == "vector_entry_point"
        s.algo_config.env_runners(num_envs_per_env_runner=8, rollout_fragment_length=32)
        s.algo_config.training(train_batch_size_per_learner=256, minibatch_size=128, num_epochs=1)
        s.algo_config.environment(env_config={**s.algo_config.env_config, "episode_s": 600})
        return s

    first = run_training(spec(), RunOptions(storage_path=tmp_path, stop_iters=2, seed=5, name="vec"))
    assert first["metrics"]["training_iteration"] == 2
    assert first["metrics"]["env_runners/num_env_steps_sampled_lifetime"] == 512
    # resume: the algorithm restored from its checkpoint trains on with the array runner
    from ray.rllib.algorithms.algorithm import Algorithm

    algo = Algorithm.from_checkpoint(first["checkpoint"])
    try:
        assert isinstance(algo.env_runner, VectorEnvRunner)
        result = algo.train()
        assert result["training_iteration"] == 3
        assert result["env_runners"]["num_env_steps_sampled_lifetime"] == 768  # counted on from 512
        resumed = algo.save(
            str(tmp_path / "vec" / "resumed")
        ).checkpoint.path  # beside the run's gridrl_run.json
    finally:
        algo.stop()
    results = evaluate_export(resumed, tmp_path / "eval", days=1, seed=0, baselines=["pi"],
                              scenario="broken_clouds", episode_s=600, start_s=12 * 3600)  # fmt: skip
    json.dumps(results)
    assert results["policy"]["safety_violations"] == 0
    # a residual of 75 W per phase on top of the PI, barely trained: within 20 % of the PI's export
    assert results["policy"]["export_kwh"] == pytest.approx(results["pi"]["export_kwh"], rel=0.2, abs=0.02)
    # gridrl benchmark on it: whole-day cases shrunk to 10 minutes, its site and one drawn site
    from scripts.cli import main

    out = tmp_path / "bench"
    argv = ["benchmark", "--checkpoint", resumed, "--sites", "1", "--scenarios", "clear,overcast",
            "--hours", "0.17", "--start-h", "12", "--seed", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "benchmark.json").read_text())
    assert [(c["site"], c["scenario"]) for c in report["cases"]] == [
        ("default", "clear"),
        ("default", "overcast"),
        ("site_2_0", "clear"),
        ("site_2_0", "overcast"),
    ]
    assert (out / "benchmark.png").is_file() and (out / "sites" / "site_2_0.yaml").is_file()
    assert report["summary"]["cases"] == 4 and report["summary"]["safety_violations"] == 0
    # --jobs: the same cases in the same order from worker processes
    from scripts.benchmark import run_cases

    sites = [None, str(out / "sites" / "site_2_0.yaml")]
    pooled = run_cases(resumed, tmp_path / "jobs", sites, ["clear"], 1, 2, 612, 12 * 3600, jobs=2)
    for case, serial in zip(pooled, report["cases"][::2], strict=True):
        assert (case["site"], case["scenario"]) == (serial["site"], serial["scenario"])
        assert case["export_kwh"] == serial["export_kwh"]
        assert case["controlled_import_kwh"] == serial["controlled_import_kwh"]


def test_benchmark_summary_takes_the_worst_case_and_skips_cases_without_export():
    from scripts.benchmark import summarise

    def case(site, scenario, pol, pi, osc=2.0):
        red = 100 * (pi - pol) / pi if pi > 0 else float("nan")
        return {"site": site, "scenario": scenario, "export_kwh": {"policy": pol, "pi": pi, "oracle": 0.0},
                "export_reduction_pct": red, "controlled_import_kwh": {"policy": 1.0, "pi": 1.0},
                "wasted_kwh": {"policy": pol + 1.0, "pi": pi + 1.0}, "gap_closed": (pi - pol) / pi if pi else 0.0,
                "phase_imbalance_w": {"policy": 100.0, "pi": 100.0},
                "oscillations_per_min": {"policy": osc, "pi": 3.0}, "safety_violations": 0}  # fmt: skip

    s = summarise([case("a", "clear", 1.0, 2.0), case("a", "winter", 0.0, 0.0), case("b", "clear", 3.0, 2.0)])
    assert s["cases"] == 3 and s["cases_scored"] == 2 and s["cases_beating_pi"] == 1
    assert s["mean_export_reduction_pct"] == pytest.approx(0.0)  # +50 % and -50 %
    assert s["worst_case"] == {"site": "b", "scenario": "clear", "export_reduction_pct": -50.0}
    assert s["beats_pi_everywhere"] is False
    assert s["targets_met"] is False and not s["targets"]["worst_case_export_reduction_pct >= -2"]["ok"]
    good = summarise([case("a", "clear", 1.0, 2.0)])
    assert good["beats_pi_everywhere"] is True and good["targets_met"] is True
    # more command changes than the PI: one target missed, the verdict says no
    busy = summarise([case("a", "clear", 1.0, 2.0, osc=4.0)])
    assert busy["targets_met"] is False
    assert [k for k, t in busy["targets"].items() if not t["ok"]] == ["command_changes_per_min < PI's and < 10"]
