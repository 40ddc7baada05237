"""The offline supervisor (issue 17): logs of the PI with a dithered dispatch preference keep the PI's
total and state their bound; the learner recovers the preference each window held, refuses logs without
one, and writes an RLModule that loads like a trained supervisor and only ever splits the PI's total."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from envs.actions import to_watts
from envs.controllers import PreferenceDitherConfig, pi_total_from_state
from envs.site import load_site
from envs.state_spec import FEAT
from offline_data.build import BuildConfig, build
from offline_data.generate import GenerateConfig, generate, simulate_day

DATE = dt.date(2025, 6, 1)
DITHER = PreferenceDitherConfig(period_s=300)
CFG = GenerateConfig(days=2, hours=2.0, start_hour=10.0, seed=5, scenario="broken_clouds",
                     controller="dithered_preference", preference=DITHER)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline_supervisor")
    summary = generate(CFG, root / "raw")
    (root / "summary.json").write_text(json.dumps(summary))
    build(root / "raw", root / "dataset", BuildConfig(), seed=0, progress=False)
    return root


def test_dithered_preference_keeps_the_pis_total_and_states_its_bound(logs):
    record = json.loads((logs / "raw" / "_logging" / f"date={DATE}.json").read_text())
    assert record["controller"] == "dithered_preference" and record["bound"] == DITHER.bound()
    prefs = np.array(record["preferences"])
    assert prefs.shape == (CFG.episode_s // DITHER.period_s,)
    assert set(prefs) <= {-1.0, 0.0, 1.0} and len(set(prefs)) == 3

    site = load_site(None)
    trace, _ = simulate_day(CFG, site, DATE)  # the same seed: the same day and draws
    targets = trace.frame.select(f"target_w_l{p}" for p in (1, 2, 3)).to_numpy()
    obs = trace.obs[: len(targets)].astype(np.float64)
    # Every second the total is the PI's from the state, and every phase within [0, available].
    np.testing.assert_allclose(targets.sum(1), pi_total_from_state(obs), atol=1e-3)
    available = obs[:, [FEAT[f"available_w_l{p}"] for p in (1, 2, 3)]]
    assert (targets >= -1e-9).all() and (targets <= np.maximum(available, 0) + 1e-6).all()
    # The preference changed the split: the water heater's phase (L1) takes more under +1 than under -1.
    per_second = np.repeat(prefs, DITHER.period_s)[: len(targets)]
    share = targets[:, 0] / np.maximum(targets.sum(1), 1.0)
    busy = targets.sum(1) > 500
    assert share[busy & (per_second == 1)].mean() > share[busy & (per_second == -1)].mean() + 0.05


def test_the_preference_each_window_held_is_recovered_from_the_logged_targets(logs):
    from envs.dynamics.data import load_split
    from rllib_configs.offline_supervisor import OfflineSupervisorConfig, logged_preferences

    cfg = OfflineSupervisorConfig(period_s=DITHER.period_s)
    split = load_split(logs / "dataset", "train")
    got = logged_preferences(split, load_site(None), cfg, DITHER.gate)
    drawn = np.full(len(split), np.nan)
    for day in json.loads((logs / "summary.json").read_text())["days"]:
        rec = json.loads((logs / "raw" / "_logging" / f"date={day['date']}.json").read_text())
        t0 = int(day["time0"])
        inside = (split.time_s >= t0) & (split.time_s < t0 + CFG.episode_s)
        drawn[inside] = np.array(rec["preferences"])[(split.time_s[inside] - t0) // DITHER.period_s]
    known = ~np.isnan(drawn)
    assert known.mean() > 0.9
    moved = known & (got != 0)
    assert moved.sum() > 0.2 * known.sum()  # many windows did move the split ...
    assert (got[moved] == drawn[moved]).all()  # ... and a recovered preference is the one drawn
    assert ((got == 0) | ~known).sum() + moved.sum() == len(got)


def test_logs_without_a_dithered_preference_are_refused(small_dataset, tmp_path):
    """The PI's own logs hold preference 0 only: nothing can be learned about -1 or +1, and a head never
    fitted must not be chosen."""
    from rllib_configs.offline_supervisor import OfflineSupervisorConfig, train

    with pytest.raises(ValueError, match="dithered_preference"):
        train(small_dataset, tmp_path / "out", OfflineSupervisorConfig(epochs=1), seed=0)


def test_the_learned_supervisor_loads_as_a_policy_and_only_splits_the_pis_total(logs, tmp_path):
    from envs.dynamics.data import load_split
    from rllib_configs.offline_supervisor import OfflineSupervisorConfig, train
    from rllib_configs.policy import load_policy

    cfg = OfflineSupervisorConfig(period_s=DITHER.period_s, epochs=2)
    report = train(logs / "dataset", tmp_path / "a", cfg, seed=0)
    assert report["samples"]["train"] > 0
    assert sum(report["chosen_on_validation_states"].values()) == pytest.approx(1.0)
    site = load_site(None)
    policy = load_policy(tmp_path / "a" / "module").for_site(site)
    split = load_split(logs / "dataset", "test")
    obs = split.obs[::7]
    targets = to_watts(policy.act_unit(obs), site.control.max_power_per_phase_w)
    np.testing.assert_allclose(targets.sum(1), pi_total_from_state(obs), rtol=1e-3, atol=2.0)
    # Same seed, same module.
    train(logs / "dataset", tmp_path / "b", cfg, seed=0)
    again = load_policy(tmp_path / "b" / "module").for_site(site)
    np.testing.assert_array_equal(again.act_unit(obs), policy.act_unit(obs))


def test_retrain_learns_an_offline_supervisor_again_with_its_settings(logs, tmp_path):
    """gridrl retrain's policy stage (rllib_configs/finetune.py) on an offline supervisor: learned again on
    the (merged) dataset with its run's settings and the overrides; an unknown setting is named."""
    from rllib_configs.finetune import check_overrides, finetune, policy_run
    from rllib_configs.offline_supervisor import OfflineSupervisorConfig, train
    from rllib_configs.policy import load_policy

    cfg_dir = tmp_path / "configs"
    train(logs / "dataset", tmp_path / "first", OfflineSupervisorConfig(period_s=DITHER.period_s, epochs=1))
    ckpt, info = policy_run(tmp_path / "first" / "module")
    check_overrides(ckpt, info, {"margin": 0.5})
    with pytest.raises(KeyError, match="lr_typo"):
        check_overrides(ckpt, info, {"lr_typo": 1})
    out = finetune("policy", ckpt, logs / "dataset", tmp_path / "runs", cfg_dir, 1, 0, {"margin": 0.5})
    assert out["init"] == "relearned" and out["offline"]["settings"]["margin"] == 0.5
    assert out["offline"]["settings"]["period_s"] == DITHER.period_s  # the run's own settings kept
    load_policy(out["checkpoint"]).for_site(load_site(None))


def test_the_choice_is_pessimistic_where_the_q_members_disagree(logs, tmp_path):
    """OfflineSupervisorModule.choose: +1 where every member gives it the same advantage over 0 above the
    margin; 0 (the PI's spread) where they disagree, or agree on too small a gain."""
    import torch

    from rllib_configs.offline_supervisor import OfflineSupervisorConfig, train
    from rllib_configs.policy import load_policy

    cfg = OfflineSupervisorConfig(period_s=DITHER.period_s, epochs=1, members=2, kappa=1.0, margin=0.1,
                                  baseline="pi")
    train(logs / "dataset", tmp_path / "a", cfg, seed=0)
    module = load_policy(tmp_path / "a" / "module").module
    x = torch.zeros(4, module.q_members[0][0].in_features)
    pi = torch.zeros(4)

    def heads(*advantages_of_plus_one: float) -> None:  # each member: Q = (0, 0, adv) for (-1, 0, +1)
        for member, adv in zip(module.q_members, advantages_of_plus_one, strict=True):
            last = member[-1]
            with torch.no_grad():
                last.weight.zero_()
                last.bias.copy_(torch.tensor([0.0, 0.0, adv]))

    heads(0.5, 0.5)
    assert module.choose(x, pi).tolist() == [1.0] * 4
    heads(0.05, 0.05)  # agreed, under the margin
    assert module.choose(x, pi).tolist() == [0.0] * 4
    heads(1.5, -0.5)  # mean 0.5, std 1.41: the pessimistic advantage is negative
    assert module.choose(x, pi).tolist() == [0.0] * 4
    # with the rule as the baseline (its preference per state), a sure gain moves off it, an unsure one not
    rule = torch.tensor([1.0, 1.0, -1.0, -1.0])
    heads(0.5, 0.5)  # +1 better than 0 and than -1 by 0.5, agreed: +1 everywhere
    assert module.choose(x, rule).tolist() == [1.0] * 4
    heads(-0.05, -0.05)  # +1 slightly worse than 0 and -1: under the margin, each state keeps the rule's
    assert module.choose(x, rule).tolist() == rule.tolist()
