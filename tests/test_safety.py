"""The safety wrapper: checks, timed fallbacks, deadline; a property test that nothing escapes the bounds."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from envs.actions import to_unit
from envs.config import ConfigError
from envs.controllers import PIController
from envs.normalization import ObsNormalizer
from envs.state_spec import FEAT, N_FEATURES
from serve.safety import SOURCES, VIOLATIONS, SafetyLimits, SafetyWrapper

MAX_W = 7500.0
NORM = ObsNormalizer.load()


class FakeClock:
    """Seconds that only move when the test says so."""

    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class ConstPolicy:
    """Returns a fixed action in [-1, 1]; optionally raises or pretends to be slow (with a fake timer)."""

    def __init__(self, action, raises: bool = False, timer: FakeClock | None = None, takes_s: float = 0.0):
        self.action, self.raises, self.timer, self.takes_s = action, raises, timer, takes_s

    def __call__(self, state):
        if self.timer is not None:
            self.timer.t += self.takes_s
        if self.raises:
            raise RuntimeError("policy crashed")
        return self.action


def normal_state(**overrides: float) -> np.ndarray:
    """The training mean with a plausible site: 1 kW surplus per phase, everything available."""
    x = NORM.mean.copy()
    for p in (1, 2, 3):
        x[FEAT[f"export_w_l{p}"]] = 1000.0
        x[FEAT[f"acked_w_l{p}"]] = 0.0
        x[FEAT[f"available_w_l{p}"]] = 3000.0
    x[FEAT["setpoint_w"]] = 0.0
    for k, v in overrides.items():
        x[FEAT[k]] = v
    return x


def wrapper(policy, clock=None, timer=None, **limits) -> SafetyWrapper:
    lim = SafetyLimits(max_power_per_phase_w=MAX_W, **limits)
    return SafetyWrapper(lim, NORM, policy, clock=clock or FakeClock(), timer=timer or FakeClock())


def test_a_well_behaved_policy_passes_unchanged():
    w = wrapper(ConstPolicy(np.array([-0.8, -0.8, -0.8])))
    d = w.decide(normal_state())
    assert d.source == "policy" and d.checks_fired == ()
    np.testing.assert_allclose(d.action_w, [750.0, 750.0, 750.0])


@pytest.mark.parametrize("kind", ["raises", "nan", "inf", "shape", "out_of_range", "slow"])
def test_a_violation_falls_back_to_the_pi_for_one_hour_then_retries(kind):
    clock, timer = FakeClock(), FakeClock()
    bad = {
        "raises": ConstPolicy(None, raises=True),
        "nan": ConstPolicy(np.array([0.0, np.nan, 0.0])),
        "inf": ConstPolicy(np.array([np.inf, 0.0, 0.0])),
        "shape": ConstPolicy(np.zeros(4)),
        "out_of_range": ConstPolicy(np.array([0.0, 1.5, 0.0])),
        "slow": ConstPolicy(np.zeros(3), timer=timer, takes_s=0.2),
    }[kind]
    w = wrapper(bad, clock, timer)
    if kind == "slow":  # one late answer costs one step; three in a row are a violation
        for _ in range(2):
            d = w.decide(normal_state())
            assert d.source == "fallback" and "policy_late" in d.checks_fired and d.fallback_until == -np.inf
    d = w.decide(normal_state())
    assert d.source == "fallback" and d.fallback_until == 3600.0
    assert [c for c in d.checks_fired if c in VIOLATIONS] == [
        {"raises": "policy_error", "slow": "policy_deadline"}.get(kind, "policy_output")
    ]
    w.policy = ConstPolicy(np.array([-0.5, -0.5, -0.5]))  # repaired: still not asked during the hour
    clock.t = 3599.0
    assert w.decide(normal_state()).source == "fallback"
    clock.t = 3600.0
    d = w.decide(normal_state())
    assert d.source == "policy" and d.checks_fired == ()


def test_a_timely_answer_resets_the_late_count():
    timer = FakeClock()
    policy = ConstPolicy(np.zeros(3), timer=timer, takes_s=0.2)
    w = wrapper(policy, timer=timer)
    for takes in (0.2, 0.2, 0.0, 0.2, 0.2, 0.0):
        policy.takes_s = takes
        d = w.decide(normal_state())
        assert "policy_deadline" not in d.checks_fired and d.fallback_until == -np.inf
        assert d.source == ("policy" if takes == 0.0 else "fallback")


def test_an_anomaly_must_persist_then_falls_back_for_24_hours():
    clock = FakeClock()
    w = wrapper(ConstPolicy(np.zeros(3)), clock, anomaly_z=20.0, anomaly_persist_s=10.0)
    spike = normal_state(pv_w_l1=NORM.mean[FEAT["pv_w_l1"]] + 25 * NORM.std[FEAT["pv_w_l1"]])
    for t in range(9):  # 9 s of a wild PV reading, then normal: no anomaly
        clock.t = float(t)
        assert w.decide(spike).source == "policy"
    clock.t = 9.0
    assert w.decide(normal_state()).source == "policy"
    for t in range(10, 21):  # held from t=10: fires at t=20
        clock.t = float(t)
        d = w.decide(spike)
    assert "anomaly" in d.checks_fired and d.source == "fallback" and d.fallback_until == 20.0 + 86400.0
    clock.t = 20.0 + 86399.0
    assert w.decide(normal_state()).source == "fallback"
    clock.t = 20.0 + 86400.0
    assert w.decide(normal_state()).source == "policy"


def test_an_invalid_state_is_never_acted_on_and_starts_the_24_hour_fallback():
    clock = FakeClock()
    w = wrapper(ConstPolicy(np.ones(3)), clock, max_rate_w_per_s=1000.0)
    w.decide(normal_state())  # full power asked; the rate limit lets the previous targets + 1 kW out
    for bad in (np.full(N_FEATURES, np.nan), np.zeros(29), "state", None, normal_state(export_w_l1=np.inf)):
        d = w.decide(bad)
        assert d.source == "safe" and d.checks_fired == ("state_invalid",)
        assert np.all(d.action_w >= 0.0) and np.all(d.action_w <= MAX_W)
    assert np.all(d.action_w == 0.0), "ramps down toward 0 W at the rate limit"
    clock.t = 100.0
    assert w.decide(normal_state()).source == "fallback" and w.timers.fallback_until == 86400.0


def test_rate_limit_bounds_the_policy_step():
    w = wrapper(ConstPolicy(np.full(3, -1.0)), max_rate_w_per_s=1000.0)
    first = w.decide(normal_state(target_w_l1=500.0, target_w_l2=2500.0, target_w_l3=0.0))
    np.testing.assert_allclose(first.action_w, [0.0, 1500.0, 0.0]), "after a start: from the state's targets"
    w.policy = ConstPolicy(np.ones(3))
    d = w.decide(normal_state(export_w_l1=7000.0, export_w_l2=7000.0, export_w_l3=7000.0))
    assert "rate_limit" in d.checks_fired
    np.testing.assert_allclose(d.action_w, [1000.0, 2500.0, 1000.0])


def test_phase_imbalance_scales_the_policy_down_to_the_allowed_spread():
    # L1 exports 3 kW; the policy loads 7.5 kW onto L2 only: predicted spread 3 - (-6.5) = 9.5 kW.
    state = normal_state(export_w_l1=3000.0, export_w_l2=1000.0, export_w_l3=1000.0)
    w = wrapper(ConstPolicy(np.array([-1.0, 1.0, -1.0])), max_phase_spread_w=4600.0, max_rate_w_per_s=None)
    d = w.decide(state)
    s = np.array([3000.0, 1000.0, 1000.0])
    pi_w = w.fallback.act(state[None])[0]  # not the PI's own spread: it is smaller here
    spread = np.ptp(s - d.action_w)
    assert "phase_imbalance" in d.checks_fired and d.source == "policy"
    assert spread <= max(4600.0, np.ptp(s), np.ptp(s - pi_w)) + 1e-6
    assert d.action_w[1] > 0, "scaled toward 0, not dropped"


def test_no_import_when_the_setpoint_is_positive():
    state = normal_state(export_w_l1=400.0, export_w_l2=300.0, export_w_l3=300.0, setpoint_w=500.0)
    w = wrapper(ConstPolicy(np.ones(3)), max_rate_w_per_s=None, max_phase_spread_w=None)
    d = w.decide(state)
    assert "no_import" in d.checks_fired
    assert d.action_w.sum() == pytest.approx(1000.0)
    d0 = wrapper(ConstPolicy(np.ones(3)), max_rate_w_per_s=None, max_phase_spread_w=None).decide(
        normal_state(export_w_l1=400.0, setpoint_w=0.0)
    )
    assert "no_import" not in d0.checks_fired, "a setpoint of 0 allows import"


def test_the_fallback_tracks_the_policy_for_a_bumpless_takeover():
    w = wrapper(ConstPolicy(np.array([-0.6, -0.6, -0.6])))
    d = w.decide(normal_state())
    assert isinstance(w.fallback, PIController)
    assert w.fallback.state()[0] == pytest.approx(d.action_w.sum())


def test_the_pi_as_policy_gives_the_pi_exactly():
    pi = PIController()

    def policy(x):
        return to_unit(pi.act(x[None])[0], MAX_W)

    w = wrapper(policy, max_rate_w_per_s=None, max_phase_spread_w=None)
    ref = PIController()
    for k in range(20):
        x = normal_state(export_w_l1=1000.0 + 100 * k)
        np.testing.assert_allclose(w.decide(x).action_w, np.clip(ref.act(x[None])[0], 0, MAX_W), rtol=1e-12)


def test_limits_are_typed_and_refuse_unknown_keys():
    with pytest.raises(ConfigError, match="max_rate"):
        SafetyLimits.from_dict({"max_power_per_phase_w": 7500.0, "max_rate": 5.0}, source="limits.yaml")
    with pytest.raises(ConfigError, match="anomaly_features"):
        SafetyLimits.from_dict({"max_power_per_phase_w": 7500.0, "anomaly_features": ["nope"]})
    lim = SafetyLimits(max_power_per_phase_w=7500.0, max_rate_w_per_s=None)
    assert SafetyLimits.from_dict(lim.to_dict()) == lim


# --- property test: whatever goes in, the action is finite and within the bounds

_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
_wild = st.one_of(st.just(0.0), st.floats(-2e6, 2e6), _floats)
_states = st.one_of(
    arrays(np.float64, N_FEATURES, elements=_wild, fill=_wild),
    st.builds(
        lambda v: normal_state() + v,
        arrays(np.float64, N_FEATURES, elements=st.floats(-5e4, 5e4), fill=st.just(0.0)),
    ),
    arrays(np.float64, st.integers(0, 40), elements=_wild, fill=_wild),
    st.sampled_from([None, "x", [], [[1.0] * N_FEATURES], object()]),
)
_outputs = st.one_of(
    arrays(np.float64, 3, elements=st.floats(-1, 1)),
    arrays(np.float64, st.sampled_from([(3,), (1, 3), (2,), (3, 3), (0,)]), elements=_wild),
    st.sampled_from(["raise", "slow", None, "abc", [1, 2, 3]]),
)
_limits = st.fixed_dictionaries(
    {
        "max_power_per_phase_w": st.floats(1.0, 2e4),
        "max_rate_w_per_s": st.one_of(st.none(), st.floats(1.0, 1e4)),
        "max_phase_spread_w": st.one_of(st.none(), st.floats(1.0, 1e4)),
        "anomaly_z": st.one_of(st.none(), st.floats(0.5, 50.0)),
        "anomaly_persist_s": st.floats(0.0, 5.0),
        "no_import": st.booleans(),
    }
)


class ScriptedPolicy:
    def __init__(self, timer: FakeClock):
        self.timer, self.next = timer, None

    def __call__(self, state):
        out = self.next
        if isinstance(out, str) and out == "raise":
            raise ValueError("boom")
        if isinstance(out, str) and out == "slow":
            self.timer.t += 1.0
            return np.zeros(3)
        return out


# 2,000 examples in the default tier (CI's time budget); GRIDRL_PROPERTY_EXAMPLES=10000 for a deeper run.
@settings(max_examples=int(os.environ.get("GRIDRL_PROPERTY_EXAMPLES", "2000")), deadline=None, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(
    limits=_limits, steps=st.lists(st.tuples(_states, _outputs, st.floats(0.0, 1e5)), min_size=1, max_size=3)
)
def test_property_no_out_of_bounds_or_nan_action(limits, steps):
    clock, timer = FakeClock(), FakeClock()
    policy = ScriptedPolicy(timer)
    w = SafetyWrapper(SafetyLimits(**limits), NORM, policy, clock=clock, timer=timer)
    for state, output, dt in steps:
        clock.t += dt
        policy.next = output
        d = w.decide(state)
        a = d.action_w
        assert a.shape == (3,) and a.dtype == np.float64
        assert np.all(np.isfinite(a)), a
        assert np.all(a >= 0.0) and np.all(a <= limits["max_power_per_phase_w"]), a
        assert d.source in SOURCES
        event(f"source={d.source}")
        for check in d.checks_fired:
            event(f"check={check}")
