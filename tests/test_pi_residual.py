"""The PI-residual PPO module (rllib_configs/pi_residual.py): it starts as the PI; its graph holds the PI."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.controllers import PIController
from envs.dispatch import allocate_to_phases
from envs.export_env import ExportControlEnv, ExportEnvConfig
from rllib_configs.loader import load_train_config
from rllib_configs.pi_residual import allocate_to_phases as allocate_torch
from rllib_configs.policy import deterministic_module

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "rllib_configs/export/ppo_residual.yaml"
CQL_CONFIG = REPO / "rllib_configs/export/cql_residual.yaml"
IQL_CONFIG = REPO / "rllib_configs/export/iql_residual.yaml"
ALLOC_CONFIG = REPO / "rllib_configs/export/ppo_alloc_warm.yaml"


def test_torch_allocation_is_the_dispatchers():
    rng = np.random.default_rng(0)
    total = rng.uniform(-500, 12000, 500)
    export = rng.uniform(-3000, 4000, (500, 3))
    avail = rng.uniform(-10, 5000, (500, 3)) * (rng.random((500, 3)) > 0.2)
    ours = allocate_torch(*(torch.as_tensor(x) for x in (total, export, avail))).numpy()
    np.testing.assert_allclose(ours, allocate_to_phases(total, export, avail), rtol=1e-12, atol=1e-9)


def _module_with_zero_correction(config: Path = CONFIG, dataset: Path | None = None):
    spec = load_train_config(config, dataset=None if dataset is None else str(dataset))
    env = ExportControlEnv(ExportEnvConfig(scenario="broken_clouds", episode_s=600, start_s=12 * 3600))
    module = spec.algo_config.get_rl_module_spec(env=env).build()
    with torch.no_grad():
        last = [m for m in module.pi.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_()
        last.bias.zero_()
    return env, module


@pytest.mark.parametrize(
    ("config", "tolerance_w"),
    [(CONFIG, 0.01), (CQL_CONFIG, 0.01), (IQL_CONFIG, 0.01), (ALLOC_CONFIG, 0.01)],
    ids=["ppo", "cql", "iql", "alloc"],
)
def test_greedy_targets_with_zero_correction_are_the_pis(config, tolerance_w, small_dataset, tmp_path):
    """Closed loop, 10 cloudy minutes: the module's greedy graph and PIController send the same targets.

    CQL's and IQL's squashed Gaussian cannot reach the bounds exactly: its PI action is held 1e-6 inside
    them (0.004 W; RLlib holds a logged action as far inside, rllib_configs/pi_residual.py). The
    learned allocation is the PI's at preference 0 (its config starts at the rule, preference_bias 1).
    """
    if config == ALLOC_CONFIG:
        text = config.read_text()
        assert "preference_bias: 1.0" in text
        config = tmp_path / "alloc_at_the_pi.yaml"
        config.write_text(text.replace("preference_bias: 1.0", "preference_bias: 0.0"))
    offline = config in (CQL_CONFIG, IQL_CONFIG)
    env, module = _module_with_zero_correction(config, small_dataset if offline else None)
    net, pi = deterministic_module(module), PIController()
    obs, _ = env.reset(seed=0)
    worst, moved = 0.0, 0.0
    for _ in range(600):
        with torch.no_grad():
            ours = (net(torch.as_tensor(obs[None])).numpy()[0].astype(np.float64) + 1.0) * 3750.0
        theirs = pi.act(obs[None].astype(np.float64))[0]
        worst, moved = max(worst, float(np.abs(ours - theirs).max())), max(moved, float(theirs.max()))
        obs, *_ = env.step((theirs / 3750.0 - 1.0).astype(np.float32))
    assert moved > 500.0, "the window must make the PI act"
    assert worst < tolerance_w, f"greedy targets differ from the PI's by up to {worst:.3f} W"


@pytest.mark.parametrize("config", [CQL_CONFIG, IQL_CONFIG], ids=["cql", "iql"])
def test_a_logged_zero_watts_where_the_pi_commands_zero_teaches_no_correction(config, small_dataset):
    """The logs hold 0 W (the action bound) on all three phases in about half the seconds. Where the PI in
    the module also commands 0 W, the log-likelihood of that logged action (what IQL's actor loss weighs,
    through RLlib's squashed Gaussian) must not pull the correction anywhere: its PI action sits exactly as
    far inside the bound as RLlib holds the logged one. 1e-4 inside, against RLlib's 1e-6, it pulled the
    mean 2.3 pre-tanh units down, and residual IQL learned to command nothing."""
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.models.base import ENCODER_OUT

    from rllib_configs.pi_residual import pi_targets

    _, module = _module_with_zero_correction(config, small_dataset)
    env = ExportControlEnv(ExportEnvConfig(scenario="clear", episode_s=600, start_s=2 * 3600))  # a night
    env.reset(seed=0)
    obs = np.stack([env.step(np.full(3, -1.0, np.float32))[0] for _ in range(300)])  # nothing commanded
    x = torch.as_tensor(obs)
    rows = (pi_targets(x.double(), module.residual.kp, module.residual.ki) <= 0.0).all(1)
    assert rows.sum() >= 100, "states where the PI commands 0 W on every phase"
    inputs = module.pi(module.pi_encoder({Columns.OBS: x})[ENCODER_OUT]).detach().requires_grad_(True)
    dist = module.get_train_action_dist_cls().from_logits(inputs)
    logp = dist.logp(torch.full((len(obs), 3), -1.0))[rows]
    (grad,) = torch.autograd.grad(logp.sum(), inputs)
    # d logp / d mean = (logged - mean) / std^2 in pre-tanh units: the offset the logged 0 W pulls toward
    offset = (grad[rows, :3] * torch.exp(2.0 * inputs[rows, 3:])).abs().max().item()
    assert offset < 0.05, f"a logged 0 W pulls the mean {offset:.3f} pre-tanh units from the PI's 0 W"


def test_a_checkpoint_loads_where_its_normalization_file_is_gone(small_dataset, tmp_path):
    """A module keeps the statistics it read in its constructor arguments: its checkpoint loads on a machine
    without the file (a run trained on the GPU machine, a dataset since deleted), with the same buffers."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    norm = tmp_path / "normalization.json"
    shutil.copy(small_dataset / "normalization.json", norm)
    spec = load_train_config(IQL_CONFIG, dataset=str(small_dataset))
    mc = dict(spec.algo_config.model_config)
    mc["pi_residual"] = {**mc["pi_residual"], "normalization": str(norm)}
    spec.algo_config.rl_module(model_config=mc)
    env = ExportControlEnv(ExportEnvConfig(scenario="broken_clouds", episode_s=600, start_s=12 * 3600))
    module = spec.algo_config.get_rl_module_spec(env=env).build()
    module.save_to_path(tmp_path / "module")
    norm.unlink()
    loaded = RLModule.from_checkpoint(tmp_path / "module")
    assert loaded.residual.normalization == str(norm) and loaded.residual.normalization_stats is not None
    assert torch.equal(loaded.obs_mean, module.obs_mean) and torch.equal(loaded.obs_std, module.obs_std)
    assert not torch.equal(module.obs_std, torch.ones_like(module.obs_std))


def test_exploration_starts_at_the_residual_scale():
    env, module = _module_with_zero_correction()
    obs, _ = env.reset(seed=0)
    out = module.forward_exploration({"obs": torch.as_tensor(obs[None])})["action_dist_inputs"]
    log_std = out[0, 3:].detach().numpy()
    np.testing.assert_allclose(np.exp(log_std), 0.02, rtol=1e-6)


def test_bad_residual_settings_name_the_field(tmp_path):
    from envs.config import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.read_text().replace("residual_scale: 0.02", "residual_scale: fast"))
    with pytest.raises(ConfigError, match="pi_residual.residual_scale"):
        load_train_config(bad)
    site = tmp_path / "site.yaml"  # the shipped site with a smaller action bound
    shipped = (REPO / "envs/sites/default.yaml").read_text()
    site.write_text(shipped.replace("max_power_per_phase_w: 7500.0", "max_power_per_phase_w: 5000.0"))
    text = CONFIG.read_text()
    assert "  env_config:\n" in text
    bad.write_text(text.replace("  env_config:\n", f"  env_config:\n    site: {site}\n", 1))
    with pytest.raises(ConfigError, match="max_power_per_phase_w.*5000"):
        load_train_config(bad)


def test_module_spec_errors_name_the_key(tmp_path):
    from envs.config import ConfigError

    for wrong, key in (("{module_class: rllib_configs.pi_residual.Nope}", "module_class"),
                       ("{module_class: rllib_configs.pi_residual.SPEC_X, extra: 1}", "rl_module_spec")):
        bad = tmp_path / "bad.yaml"
        good = "{module_class: rllib_configs.pi_residual.PIResidualPPOModule}"
        bad.write_text(CONFIG.read_text().replace(good, wrong))
        with pytest.raises(ConfigError, match=key):
            load_train_config(bad)


def test_a_relative_checkpoint_path_is_made_absolute(tmp_path, monkeypatch):
    """`gridrl benchmark --checkpoint out/run/checkpoint_000001` (relative) used to end in pyarrow's
    'URI has empty scheme': the module path handed to RLlib is absolute."""
    from rllib_configs.policy import MODULE_SUBDIR, module_path

    (tmp_path / "run" / "checkpoint_000001" / MODULE_SUBDIR).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    p = module_path("run/checkpoint_000001")
    assert p.is_absolute() and p == tmp_path / "run" / "checkpoint_000001" / MODULE_SUBDIR


def test_learned_allocation_is_the_pi_at_zero_and_fills_the_continuous_phase_first_at_one():
    from envs.state_spec import FEAT, N_FEATURES
    from rllib_configs.pi_residual import ResidualConfig, learned_targets, pi_targets

    cfg = ResidualConfig(allocation="learned", continuous_w=(0.0, 3000.0, 0.0))
    rng = np.random.default_rng(0)
    obs = torch.as_tensor(rng.normal(0.0, 800.0, (256, N_FEATURES)))
    for p in (1, 2, 3):
        obs[:, FEAT[f"available_w_l{p}"]] = torch.as_tensor(rng.choice([0.0, 1800.0, 3000.0, 7360.0], 256))
    pi = pi_targets(obs, cfg.kp, cfg.ki)
    assert float(pi.sum()) > 0 and float((pi[:, 0] > 0).double().mean()) > 0.2, "the PI must spread to L1 too"
    out = torch.zeros(256, 3)
    torch.testing.assert_close(learned_targets(obs, out, cfg), pi, rtol=0, atol=1e-9)
    out[:, 0] = 1.0  # prefer the continuous phase (L2): it takes what it can first, the total is the PI's
    ours = learned_targets(obs, out, cfg)
    torch.testing.assert_close(ours.sum(-1), pi.sum(-1))
    avail2 = obs[:, FEAT["available_w_l2"]]
    first = torch.minimum(pi.sum(-1), avail2.clamp(max=3000.0))  # served first; beyond 3000 W, by headroom
    assert bool((ours[:, 1] >= first - 1e-6).all())
    only = avail2 <= 3000.0  # the continuous device alone on its phase: exactly that
    torch.testing.assert_close(ours[only, 1], first[only])
    out[:, 0], out[:, 1] = 0.0, 1.0  # the total's correction: residual_scale of the per-phase bound
    shifted = obs.clone()  # the same as an export error 150 W higher: the PI's own clamps then apply
    shifted[:, FEAT["export_error_w"]] += 150.0 / cfg.ki
    torch.testing.assert_close(learned_targets(obs, out, cfg).sum(-1), pi_targets(shifted, cfg.kp, cfg.ki).sum(-1))
    out[:, 0] = 0.7  # without the total's correction: output 1 is ignored, the total stays the PI's
    alone = learned_targets(obs, out, dataclasses.replace(cfg, correct_total=False))
    torch.testing.assert_close(alone.sum(-1), pi.sum(-1))
    assert float((alone - pi).abs().max()) > 100.0, "the preference must still move the spread"


def test_the_learned_allocation_config_loads_and_needs_a_continuous_phase(tmp_path):
    from envs.config import ConfigError

    alloc = REPO / "rllib_configs/export/ppo_alloc_warm.yaml"
    spec = load_train_config(alloc)
    assert spec.algo_config.env_config["draw_phases"] is False
    bad = tmp_path / "bad.yaml"
    bad.write_text(alloc.read_text().replace("continuous_w: [3000.0, 0.0, 0.0]", "continuous_w: [0.0, 0.0, 0.0]"))
    with pytest.raises(ConfigError, match="continuous_w"):
        load_train_config(bad)


def test_a_preference_bias_of_one_starts_at_the_continuous_first_rule():
    from envs.controllers import ContinuousFirstPI
    from envs.state_spec import FEAT, N_FEATURES
    from rllib_configs.pi_residual import ResidualConfig, learned_targets

    cfg = ResidualConfig(allocation="learned", continuous_w=(3000.0, 0.0, 0.0), preference_bias=1.0)
    rng = np.random.default_rng(1)
    obs = rng.normal(0.0, 800.0, (128, N_FEATURES))
    for p in (1, 2, 3):
        obs[:, FEAT[f"available_w_l{p}"]] = rng.choice([0.0, 1800.0, 3000.0, 7360.0], 128)
    ours = learned_targets(torch.as_tensor(obs), torch.zeros(128, 3), cfg).numpy()
    rule = ContinuousFirstPI((3000.0, 0.0, 0.0))
    rule.reset(128)  # its integrator and last error, as the module reads them from the state
    rule.u = obs[:, [FEAT[f"target_w_l{p}"] for p in (1, 2, 3)]].sum(-1)
    rule.e_prev = obs[:, FEAT["export_error_w"]] - obs[:, FEAT["export_w_delta_1s"]]
    theirs = rule.act(obs)
    assert (theirs[:, 0] > 1.0).mean() > 0.3, "the rule must act on L1"
    np.testing.assert_allclose(ours, theirs, atol=1e-6)  # one spread: preference_spread at 1
    held = ContinuousFirstPI((3000.0, 0.0, 0.0), preference=0.0)  # a preference of 0 held all day: the PI
    pi = PIController()
    for c in (held, pi):  # the same integrator and last error as the rule above was given
        c.reset(128)
        c.u = obs[:, [FEAT[f"target_w_l{p}"] for p in (1, 2, 3)]].sum(-1)
        c.e_prev = obs[:, FEAT["export_error_w"]] - obs[:, FEAT["export_w_delta_1s"]]
    np.testing.assert_allclose(held.act(obs), pi.act(obs), atol=1e-9)


SUPERVISOR_CONFIG = REPO / "rllib_configs/export/ppo_supervisor.yaml"


def _supervisor_told_no_site():
    """The supervisor config without its outlook prior, which reads the site's features: a module for state
    vectors alone (the layout tests)."""
    import copy

    spec = load_train_config(SUPERVISOR_CONFIG)
    mc = copy.deepcopy(spec.algo_config.model_config)
    mc["pi_residual"]["prior"] = "none"
    spec.algo_config.rl_module(model_config=mc)
    return spec


def test_torch_preference_targets_are_the_controllers():
    """The supervisor's deployed graph (torch) spreads the PI's total as the env's PI did in training
    (numpy)."""
    from envs.controllers import pi_total_from_state, preference_targets
    from envs.state_spec import FEAT, N_FEATURES
    from rllib_configs.pi_residual import pi_targets, pi_total
    from rllib_configs.pi_residual import preference_spread as preference_torch

    rng = np.random.default_rng(2)
    obs = rng.normal(0.0, 900.0, (400, N_FEATURES))
    for p in (1, 2, 3):
        obs[:, FEAT[f"available_w_l{p}"]] = rng.choice([0.0, 1800.0, 3000.0, 4800.0, 7360.0], 400)
    pref = rng.uniform(-1.0, 1.0, 400)
    cont = rng.choice([0.0, 3000.0], (400, 3))
    ours = preference_targets(obs, pref, cont)
    o = torch.as_tensor(obs)
    total = pi_total(o, 0.3, 0.25)
    np.testing.assert_allclose(total.numpy(), pi_total_from_state(obs), rtol=1e-12, atol=1e-9)
    theirs = preference_torch(o, total, torch.as_tensor(pref)[:, None], torch.as_tensor(cont)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(ours.sum(-1), np.minimum(total.numpy(), obs[:, [FEAT[f"available_w_l{p}"]
                               for p in (1, 2, 3)]].clip(0).sum(-1)), atol=1e-6)  # fmt: skip
    spread = preference_targets(obs, np.zeros(400), cont)  # preference 0: the PI's own spread
    np.testing.assert_allclose(spread, pi_targets(o, 0.3, 0.25).numpy(), atol=1e-9)
    # The gate: a positive preference counts only while the PI's total is under gate_w, in both.
    gated = preference_targets(obs, pref, cont, gate_w=1500.0)
    theirs = preference_torch(o, total, torch.as_tensor(pref)[:, None], torch.as_tensor(cont), 1500.0)
    theirs = theirs.numpy()
    np.testing.assert_allclose(gated, theirs, rtol=1e-12, atol=1e-9)
    dropped = (pref > 0) & (total.numpy() >= 1500.0)
    assert 20 < dropped.sum() < 380, "the suite has rows on both sides of the gate"
    np.testing.assert_allclose(gated[dropped], spread[dropped], atol=1e-9)
    np.testing.assert_allclose(gated[~dropped], ours[~dropped], atol=1e-9)
    assert not np.allclose(ours[dropped], spread[dropped]), "ungated, those rows' preference moved the spread"


def test_the_gate_is_the_smallest_power_that_starts_a_heat_pump_or_an_ev():
    """envs/dispatch.py ``start_power_w``: what dispatch_row needs to start a device; inf without one."""
    from envs.config import from_mapping
    from envs.controllers import gated_w
    from envs.dispatch import start_power_w
    from envs.site import Site, load_site

    default = load_site(None)  # EV at 1,380 W minimum, heat pump of 1,800 W (starts at 90 %: 1,620 W)
    assert start_power_w(default) == 1380.0
    assert gated_w(default, 1.5) == 2070.0 and gated_w(default, 0.0) == np.inf
    raw = asdict(default)
    raw["slaves"] = [s for s in raw["slaves"] if s["kind"] != "ev_charger"]
    assert start_power_w(from_mapping(Site, raw, source="no EV")) == 0.9 * 1800.0
    raw["slaves"] = [s for s in raw["slaves"] if s["kind"] == "water_heater"]
    assert start_power_w(from_mapping(Site, raw, source="water heater only")) == np.inf


def test_the_supervisor_deploys_the_targets_of_its_greedy_preference():
    """``allocation: supervisor``: the env's action is one preference; the deployed graph (what gridrl
    benchmark, export, edge and Serve run) is the per-phase targets that preference gives, every second."""
    from envs.controllers import continuous_power, gated_w, preference_targets
    from envs.dispatch import start_power_w
    from envs.export_env import ExportControlVectorEnv
    from envs.site import SITE_FEATURE_NAMES, site_features
    from envs.state_spec import N_FEATURES

    spec = load_train_config(SUPERVISOR_CONFIG)
    env_config = {**spec.algo_config.env_config, "site_features": True}  # told its drawn sites
    venv = ExportControlVectorEnv(4, ExportEnvConfig.from_dict(env_config))
    assert venv.single_action_space.shape == (1,)
    module = spec.algo_config.get_rl_module_spec(
        spaces={"default_policy": (venv.single_observation_space, venv.single_action_space)}
    ).build()
    obs, _ = venv.reset(seed=0)
    for _ in range(40):  # into the morning: the PI acts
        obs, *_ = venv.step(np.zeros((4, 1), np.float32))
    assert obs.shape == (4, N_FEATURES + len(SITE_FEATURE_NAMES)), "each state is followed by its site's features"
    x = torch.as_tensor(obs)
    net = deterministic_module(module)
    with torch.no_grad():
        pref = module.forward_inference({"obs": x})["action_dist_inputs"][:, 0].double().clamp(-1, 1).numpy()
        with pytest.raises(ValueError, match="Policy.for_site"):
            net(x[:, :N_FEATURES])  # deployed on a state vector alone, it must be told its site
        ours = []
        theirs = []
        for i in range(4):  # deployed on member i's site: the state vector, its site's features in the graph
            site = venv.site_of(i)
            assert np.allclose(site_features(site), obs[i, N_FEATURES:])
            module.residual = replace(
                module.residual, site_features=tuple(float(f) for f in obs[i, N_FEATURES:]),
                continuous_w=tuple(continuous_power(site)), start_power_w=start_power_w(site),
            )
            ours.append(net(x[i : i + 1, :N_FEATURES]).double().numpy()[0])
            gate_w = gated_w(site, env_config["preference_gate"])  # the env's gate on that site
            cont = continuous_power(site)
            theirs.append(preference_targets(obs[i : i + 1], pref[i : i + 1], cont, gate_w=gate_w))
    assert len({tuple(o[N_FEATURES:]) for o in obs}) > 1, "the members' drawn sites differ"
    np.testing.assert_allclose(np.array(ours), np.concatenate(theirs) / 3750.0 - 1.0, atol=1e-5)
    assert module.forward_exploration({"obs": x})["action_dist_inputs"].shape == (4, 2)  # mean, log-std


def test_a_policy_is_told_the_layout_of_the_site_it_runs_on(tmp_path):
    """Policy.for_site: the learned allocations get the site's water heaters per phase (the site's master is
    configured with them); the PI-residual policy is unchanged."""
    import gymnasium as gym

    from envs.config import from_mapping
    from envs.dispatch import start_power_w
    from envs.site import Site, load_site, site_features
    from envs.site_sampler import random_site
    from rllib_configs.policy import Policy

    for trial in range(50):  # a drawn site with its water heater on another phase
        drawn = random_site(np.random.default_rng(trial), "drawn", None, True)
        phases = [s["phase"] for s in drawn["slaves"] if s["kind"] == "water_heater"]
        if phases and 1 not in phases:
            break
    other = from_mapping(Site, drawn, source="drawn")
    spec = _supervisor_told_no_site()
    action = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    spaces = {"default_policy": (ExportControlEnv().observation_space, action)}
    module = spec.algo_config.get_rl_module_spec(spaces=spaces).build()
    gate = module.residual.preference_gate
    with pytest.raises(ValueError, match="preference_gate"):  # trained with another gate than it deploys
        Policy(module, None, {"env_config": {"preference_gate": gate + 1}}, tmp_path).for_site(other)
    policy = Policy(module, None, {"env_config": {"preference_gate": gate}}, tmp_path)
    assert policy.for_site(load_site(None)).module.residual.continuous_w == (3000.0, 0.0, 0.0)
    cont = policy.for_site(other).module.residual.continuous_w
    assert cont[phases[0] - 1] > 0 and cont[0] == 0.0
    assert policy.module.residual.start_power_w == start_power_w(other)
    np.testing.assert_allclose(policy.module.residual.site_features, site_features(other))
    _, residual = _module_with_zero_correction()
    unchanged = Policy(residual, None, {}, tmp_path).for_site(other)
    assert unchanged.module.residual.continuous_w == (0.0, 0.0, 0.0)


def test_on_another_layout_the_networks_read_the_phases_in_the_training_sites_order(tmp_path):
    """envs/controllers.py phase_roles and phase_map, the module's phase_order: on a site whose water heater,
    EV and heat pump sit on other phases than the training site's, Policy.for_site has the networks read
    each phase's features where they learned those of the training site's phase with the same devices; the
    targets still go to the site's own phases. Before, a supervisor trained on the default site read a
    drawn site's heat pump phase as its water heater's."""
    import gymnasium as gym
    import yaml

    from envs.config import from_mapping
    from envs.controllers import gated_w, phase_map, phase_roles, preference_targets
    from envs.site import Site, load_site
    from envs.state_spec import FEAT, N_FEATURES, phase_permuted_columns
    from rllib_configs.policy import Policy

    default = load_site(None)
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "envs/sites/default.yaml").read_text())
    moved = {"water_heater": 3, "ev_charger": 1, "heat_pump": 2}
    for slave in data["slaves"]:
        slave["phase"] = moved[slave["kind"]]
    other = from_mapping(Site, data, source="moved")
    assert phase_roles(default) == (0, 1, 2) and phase_roles(other) == (2, 0, 1)
    assert phase_map(default, default) == (0, 1, 2) and phase_map(default, other) == (2, 0, 1)
    cols = phase_permuted_columns((2, 0, 1))
    assert cols[FEAT["available_w_l1"]] == FEAT["available_w_l3"] and cols[FEAT["pv_w"]] == FEAT["pv_w"]
    with pytest.raises(ValueError, match="permutation"):
        phase_permuted_columns((0, 0, 1))

    spec = _supervisor_told_no_site()
    action = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    spaces = {"default_policy": (ExportControlEnv().observation_space, action)}
    module = spec.algo_config.get_rl_module_spec(spaces=spaces).build()
    torch.manual_seed(0)
    for prm in module.parameters():  # a network that reads its inputs (a fresh head's outputs are ~0)
        torch.nn.init.normal_(prm, std=0.3)
    trained = {"env_config": {"preference_gate": module.residual.preference_gate}}
    policy = Policy(module, None, trained, tmp_path)
    rng = np.random.default_rng(0)
    obs = rng.uniform(0.0, 3000.0, (16, N_FEATURES)).astype(np.float32)
    x = torch.as_tensor(obs)
    with torch.no_grad():
        on_default = policy.for_site(default).module.greedy_preference(x[:, cols]).numpy()
        assert policy.module.residual.phase_order == (0, 1, 2)
        moved_pref = policy.for_site(other).module.greedy_preference(x).numpy()
        policy.module.residual = replace(policy.module.residual, phase_order=(0, 1, 2))
        before = policy.module.greedy_preference(x).numpy()
        targets = deterministic_module(policy.for_site(other).module)(x).double().numpy()
    np.testing.assert_allclose(moved_pref, on_default, atol=1e-6)
    assert np.abs(before - moved_pref).max() > 1e-3, "the test's states must tell the orders apart"
    gate_w = gated_w(other, policy.module.residual.preference_gate)  # the site's gate, as the env's
    theirs = preference_targets(obs, moved_pref[:, 0], np.array([0.0, 0.0, 3000.0]), gate_w=gate_w)
    np.testing.assert_allclose(targets, theirs / 3750.0 - 1.0, atol=1e-5)


def test_the_clear_sky_index_reads_the_weather_whatever_the_pv_size():
    """rllib_configs/pi_residual.py clear_sky_index: PV over the site's clear-sky PV (kWp x W/m2), the same
    on a site with twice the PV under the same sky; 0 before sunrise and for a missing PV reading; clipped."""
    from envs.site import SITE_FEATURE_NAMES, SITE_FEATURE_SCALE
    from envs.state_spec import FEAT, N_FEATURES
    from rllib_configs.pi_residual import CSI_MAX, clear_sky_index

    def state(kwp: float, sky: float, pv: float) -> np.ndarray:
        obs = np.zeros(N_FEATURES + len(SITE_FEATURE_NAMES), np.float32)
        obs[FEAT["clear_sky_w_m2"]], obs[FEAT["pv_w"]] = sky, pv
        obs[N_FEATURES + SITE_FEATURE_NAMES.index("pv_kwp")] = kwp / SITE_FEATURE_SCALE[0]
        return obs

    rows = [state(5.0, 800.0, 0.25 * 5 * 800), state(10.0, 800.0, 0.25 * 10 * 800),
            state(5.0, 800.0, 0.9 * 4000), state(5.0, 10.0, 40.0), state(5.0, 800.0, np.nan),
            state(5.0, 800.0, 3 * 4000)]  # fmt: skip
    csi = clear_sky_index(torch.as_tensor(np.stack(rows)))[:, 0].numpy()
    np.testing.assert_allclose(csi, [0.25, 0.25, 0.9, 0.0, 0.0, CSI_MAX], rtol=1e-6)


def test_a_supervisor_reading_only_the_clear_sky_index_ignores_the_rest_of_the_site():
    """pi_residual.site_inputs 'clear_sky_index': of the site features after the state vector the networks
    read only the index they give; 'all' reads them all (one more column each way than the state)."""
    import copy

    import gymnasium as gym

    from envs.site import SITE_FEATURE_NAMES, load_site, site_features
    from envs.state_spec import FEAT, N_FEATURES

    spec = load_train_config(SUPERVISOR_CONFIG)
    space = gym.spaces.Box(-np.inf, np.inf, (N_FEATURES + len(SITE_FEATURE_NAMES),), np.float32)
    action = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    obs = np.zeros((2, space.shape[0]), np.float32)
    obs[:, FEAT["clear_sky_w_m2"]], obs[:, FEAT["pv_w"]] = 700.0, 2000.0
    obs[:, N_FEATURES:] = site_features(load_site(None))
    obs[1, N_FEATURES + SITE_FEATURE_NAMES.index("wh_kwh")] *= 3  # another tank
    widths = {}
    for inputs in ("clear_sky_index", "all"):
        cfg = copy.deepcopy(spec.algo_config)
        mc = copy.deepcopy(cfg.model_config)
        mc["pi_residual"]["site_inputs"] = inputs
        cfg.rl_module(model_config=mc)
        module = cfg.get_rl_module_spec(spaces={"default_policy": (space, action)}).build()
        torch.manual_seed(0)
        for p in module.parameters():  # a network whose output depends on every input
            torch.nn.init.normal_(p, std=0.3)
        with torch.no_grad():
            mean = module.forward_inference({"obs": torch.as_tensor(obs)})["action_dist_inputs"][:, 0].numpy()
        widths[inputs] = module.catalog.observation_space.shape[0]
        same = np.isclose(mean[0], mean[1], rtol=1e-6, atol=0.0)  # rows of one batch: BLAS may round apart
        assert same == (inputs == "clear_sky_index"), (inputs, mean)
    assert widths == {"clear_sky_index": N_FEATURES + 1, "all": N_FEATURES + len(SITE_FEATURE_NAMES) + 1}


def _supervisor_at_its_rule(space, **pi_residual):
    """The supervisor config's module for observations ``space``, with ``pi_residual`` settings (and
    site_inputs 'outlook') and a zero network output: its greedy preference is its prior rule itself."""
    import copy

    import gymnasium as gym

    cfg = copy.deepcopy(load_train_config(SUPERVISOR_CONFIG).algo_config)
    mc = copy.deepcopy(cfg.model_config)
    mc["pi_residual"].update(site_inputs="outlook", **pi_residual)
    cfg.rl_module(model_config=mc)
    action = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    module = cfg.get_rl_module_spec(spaces={"default_policy": (space, action)}).build()
    for p in module.pi.parameters():
        torch.nn.init.zeros_(p)
    return module


def test_the_outlook_prior_starts_a_supervisor_at_the_rule():
    """pi_residual.prior 'outlook': with a zero network output the greedy preference is the outlook rule,
    +1 while the PV the day still brings (the last half hour's clear-sky index x kWp x the clear-sky kWh/m2
    left) is under prior_threshold x the site's tank kWh, -1 above it; the inputs follow the state and the
    site's file, and the prior refuses a policy that is not told its site."""
    import gymnasium as gym

    from envs.site import SITE_FEATURE_NAMES, load_site, site_features
    from envs.state_spec import FEAT, N_FEATURES
    from rllib_configs.pi_residual import outlook_inputs

    site = load_site(None)  # 8 kWp, tanks 8 + 5 kWh
    space = gym.spaces.Box(-np.inf, np.inf, (N_FEATURES + len(SITE_FEATURE_NAMES),), np.float32)
    obs = np.zeros((3, space.shape[0]), np.float32)
    obs[:, N_FEATURES:] = site_features(site)
    obs[:, FEAT["clear_sky_ewm_30min_w_m2"]] = 500.0
    obs[:, FEAT["clear_sky_rest_kwh_m2"]] = 4.0  # 32 kWh of clear-sky PV left: 2.46 x the tanks
    obs[:, FEAT["pv_w_ewm_30min"]] = [1000.0, 3600.0, 4000.0]  # clear-sky index 0.25, 0.9, 1.0
    got = outlook_inputs(torch.as_tensor(obs, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got[:, 0], [0.25, 0.9, 1.0], rtol=1e-6)
    np.testing.assert_allclose(got[:, 1], np.array([0.25, 0.9, 1.0]) * 32.0 / 13.0, rtol=1e-6)

    module = _supervisor_at_its_rule(space, prior="outlook", prior_threshold=2.0)
    with torch.no_grad():
        mean = module.forward_inference({"obs": torch.as_tensor(obs)})["action_dist_inputs"][:, 0].numpy()
    np.testing.assert_array_equal(mean, [1.0, -1.0, -1.0])  # 0.62 < 2; 2.2 and 2.5 > 2
    assert module.catalog.observation_space.shape[0] == N_FEATURES + len(SITE_FEATURE_NAMES) + 2
    module.residual = dataclasses.replace(module.residual, prior_dull=0.5)  # a dull day's preference below +1
    with torch.no_grad():
        mean = module.forward_inference({"obs": torch.as_tensor(obs)})["action_dist_inputs"][:, 0].numpy()
    np.testing.assert_array_equal(mean, [0.5, -1.0, -1.0])
    with pytest.raises(ValueError, match="prior_dull"):
        dataclasses.replace(module.residual, prior_dull=0.0)

    plain = gym.spaces.Box(-np.inf, np.inf, (N_FEATURES,), np.float32)
    with pytest.raises(ValueError, match="site_features: true"):
        _supervisor_at_its_rule(plain, prior="outlook")


def test_the_headroom_prior_counts_the_room_left_in_the_water_heaters_tank():
    """pi_residual.prior 'headroom': the outlook rule over the tanks' room left, the water heaters' tank less
    the energy acknowledged on their phases since available (at least HEADROOM_FLOOR of it), plus the heat
    pumps' tanks. A morning that filled the water heater turns the rule from +1 to -1 where the tank's size
    alone keeps it at +1; energy acknowledged on a phase without a water heater does not count."""
    import gymnasium as gym

    from envs.site import SITE_FEATURE_NAMES, load_site, site_features
    from envs.state_spec import FEAT, N_FEATURES
    from rllib_configs.pi_residual import HEADROOM_FLOOR, headroom_outlook, outlook_inputs

    site = load_site(None)  # 8 kWp; water heater 8 kWh on L1, heat pump tank 5 kWh
    space = gym.spaces.Box(-np.inf, np.inf, (N_FEATURES + len(SITE_FEATURE_NAMES),), np.float32)
    obs = np.zeros((4, space.shape[0]), np.float32)
    obs[:, N_FEATURES:] = site_features(site)
    obs[:, FEAT["clear_sky_ewm_30min_w_m2"]] = 500.0
    obs[:, FEAT["clear_sky_rest_kwh_m2"]] = 2.0  # 16 kWh of clear-sky PV left
    obs[:, FEAT["pv_w_ewm_30min"]] = 2000.0  # clear-sky index 0.5: 8 kWh expected
    obs[1, FEAT["acked_kwh_since_available_l1"]] = 4.0  # half the water heater's tank delivered
    obs[2, FEAT["acked_kwh_since_available_l1"]] = 20.0  # more than the tank: the floor
    obs[3, FEAT["acked_kwh_since_available_l2"]] = 6.0  # the EV's phase: not the water heater's room
    x = torch.as_tensor(obs, dtype=torch.float64)
    cont = (3000.0, 0.0, 0.0)
    rooms = np.array([8.0 + 5.0, 4.0 + 5.0, HEADROOM_FLOOR * 8.0 + 5.0, 8.0 + 5.0])
    np.testing.assert_allclose(headroom_outlook(x, cont).numpy()[:, 0], 8.0 / rooms, rtol=1e-6)
    np.testing.assert_allclose(outlook_inputs(x).numpy()[:, 1], 8.0 / 13.0, rtol=1e-6)  # the tanks' size

    module = _supervisor_at_its_rule(space, prior="headroom", prior_threshold=0.85)
    with torch.no_grad():
        mean = module.forward_inference({"obs": x.float()})["action_dist_inputs"][:, 0].numpy()
    np.testing.assert_array_equal(mean, [1.0, -1.0, -1.0, 1.0])  # 0.62, 0.89, 1.37, 0.62 against 0.85
    module.residual = dataclasses.replace(module.residual, prior="outlook")  # the tanks' size: +1 throughout
    with torch.no_grad():
        mean = module.forward_inference({"obs": x.float()})["action_dist_inputs"][:, 0].numpy()
    np.testing.assert_array_equal(mean, [1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="prior"):
        dataclasses.replace(module.residual, prior="room")
