"""The promotion rule (envs/promotion.py) on controllers with known behaviour, and the forward model's trust.

In the simulator, on 5 validation windows of 15 minutes at midday (one per weather):
- no control (zero) exports far more than the PI: refused on export;
- the oracle (perfect foresight, envs/oracle.py: the lower bound on export) beats the PI: promoted;
- "full on" (every controllable watt on, always) cuts export more than the PI but by importing: refused on
  controlled import, since its wasted energy (export + import) rises too;
- the oracle commanding out of bounds once a minute: refused on safety violations, however good its export.

With the forward model (a site without a simulator): a model trained for a single iteration fails the seed's
criteria, so its trust falls below full (and below the rule's floor), and it promotes nothing.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from envs.controllers import PIController, ZeroController
from envs.dynamics.evaluate import FAILED_CAP, criteria_trust
from envs.oracle import OracleController
from envs.promotion import (
    VALIDATION_SEED_OFFSET,
    PromotionConfig,
    decide,
    judge_in_simulator,
    validation_days,
)
from envs.state_spec import FEAT

QUICK = PromotionConfig(days=5, hours=0.25, start_h=11.0)
_AVAIL_L = [FEAT[f"available_w_l{p}"] for p in (1, 2, 3)]


class FullOn:
    """Every phase's available controllable power, all the time: no export left, whatever it imports."""

    name = "full_on"

    def reset(self, batch: int = 1) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.clip(np.atleast_2d(obs)[:, _AVAIL_L], 0.0, None)


class OracleOutOfBounds(OracleController):
    """The oracle, but once a minute its phase-1 target is NaN (what the env counts as a safety violation:
    targets in W are clipped into the bounds on their way to [-1, 1], NaN is not)."""

    name = "oracle_out_of_bounds"

    def reset(self, batch: int = 1) -> None:
        self.k = 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        targets = super().act(obs)
        self.k += 1
        if self.k % 60 == 0:
            targets[:, 0] = np.nan
        return targets


def _metrics(export: float, imp: float, violations: int = 0) -> dict[str, float]:
    return {"export_kwh": export, "controlled_import_kwh": imp, "safety_violations": violations}


def test_the_rule_on_numbers():
    """Margin, import (or wasted energy), violations and trust, each on its own."""
    cfg = PromotionConfig()  # margin 5 %, import 1.1x, trust 0.8
    pi = _metrics(10.0, 1.0)
    assert decide(_metrics(9.4, 1.0), pi, cfg).promoted  # 6 % less
    refused = decide(_metrics(9.6, 1.0), pi, cfg)  # 4 % less: under the margin
    assert not refused.promoted and "at least 5 % lower" in refused.reason and "9.600 kWh" in refused.reason
    assert decide(
        _metrics(9.6, 1.0), pi, replace(cfg, margin_pct=3.0)
    ).promoted  # the margin is configuration
    # import 1.5x the PI's, but wasted energy 5 + 1.5 < 10 + 1: allowed; 4x with more waste: refused
    assert decide(_metrics(5.0, 1.5), pi, cfg).promoted
    more_waste = decide(_metrics(9.0, 4.0), pi, cfg)
    assert not more_waste.promoted and "controlled import is 3.97x" in more_waste.reason
    assert not decide(_metrics(5.0, 1.0, violations=1), pi, cfg).promoted
    untrusted = decide(
        _metrics(5.0, 1.0), pi, cfg, judge="forward model", trust=0.5, trust_detail={"why": "x"}
    )
    assert not untrusted.promoted and "not trusted: trust 0.50 < 0.8 (x)" in untrusted.reason
    assert not decide(_metrics(0.0, 0.0), _metrics(0.0, 0.0), cfg).promoted  # nothing to cut
    # the incumbent is named where it is not the PI (gridrl retrain: the old bundle's controller)
    old = decide(_metrics(9.0, 4.0), pi, cfg, name="the new", incumbent="the old controller")
    assert old.reason.startswith("the new does not beat the old controller in the simulator: ")
    assert "3.97x the old controller's" in old.reason and "the PI" not in old.reason
    assert "the PI" not in decide(_metrics(5.0, 1.0), pi, cfg, incumbent="the old controller").reason
    with pytest.raises(ValueError, match="margin_pct"):
        PromotionConfig(margin_pct=-1)
    with pytest.raises(ValueError, match="scenarios"):
        PromotionConfig(scenarios=("monsoon",))


def test_validation_days_are_every_weather_and_apart_from_the_evaluation_days():
    from scripts.evaluate import EVAL_SEED_OFFSET

    days = validation_days(PromotionConfig(), seed=3)
    assert (
        sorted(s for s, _ in days) == sorted(PromotionConfig().scenarios) and len({d for _, d in days}) == 5
    )
    assert days == validation_days(PromotionConfig(), seed=3) != validation_days(PromotionConfig(), seed=4)
    evaluation = {EVAL_SEED_OFFSET + s * 10_000 + d for s in range(100) for d in range(10)}
    assert not evaluation & {d for s in range(100) for _, d in validation_days(PromotionConfig(), s)}
    assert min(d for _, d in days) >= VALIDATION_SEED_OFFSET


@pytest.mark.parametrize(
    "make, promoted, failed",
    [
        (ZeroController, False, "export reduction vs PI"),
        (OracleController, True, None),
        (FullOn, False, "controlled import vs PI"),
        (OracleOutOfBounds, False, "safety violations"),
    ],
    ids=["zero", "oracle", "full_on", "oracle_out_of_bounds"],
)
def test_simulator_judge_on_controllers_with_known_behaviour(make, promoted, failed):
    verdict = judge_in_simulator(make(), None, QUICK, seed=0, name="it")
    checks = {c["check"]: c for c in verdict.checks}
    assert verdict.promoted is promoted, verdict.reason
    assert verdict.judge == "simulator" and verdict.trust == 1.0 and len(verdict.cases) == QUICK.days
    assert sorted({c["scenario"] for c in verdict.cases}) == sorted(QUICK.scenarios)
    assert verdict.pi["export_kwh"] > 0  # the PI has export to cut on these windows
    if promoted:
        assert verdict.reason.startswith("it beats the PI") and all(c["passed"] for c in verdict.checks)
        assert verdict.candidate["export_kwh"] < verdict.pi["export_kwh"] * (1 - QUICK.margin_pct / 100)
    else:
        assert verdict.reason.startswith("it does not beat the PI") and not checks[failed]["passed"]
        assert [c["check"] for c in verdict.checks if not c["passed"]] == [failed]
    if make is FullOn:  # it does cut export: import is what refuses it
        assert checks["export reduction vs PI"]["value"] > 50


def test_criteria_trust_is_full_only_when_every_criterion_passes():
    from envs.dynamics.evaluate import _row

    ok = [_row("k-step MSE (normalised)", 0.05, "<", 0.1), _row("stable", 1.0, "==", 1.0)]
    assert criteria_trust(ok) == (1.0, "meets the seed's criteria")
    trust, why = criteria_trust([*ok[1:], _row("k-step MSE (normalised)", 0.25, "<", 0.1)])
    assert trust == pytest.approx(0.4) and "k-step MSE (normalised) 0.25" in why
    assert criteria_trust([_row("k-step MSE (normalised)", 0.1001, "<", 0.1)])[0] == FAILED_CAP  # never 1
    assert criteria_trust([_row("stable", 0.0, "==", 1.0), *ok])[0] == 0.0
    assert criteria_trust([])[0] == 0.0


@pytest.fixture(scope="module")
def one_iteration_model(small_dataset, tmp_path_factory):
    from envs.dynamics.model import ModelConfig
    from rllib_configs.forward_model import ForwardModelSpec, Trainer, TrainingConfig

    spec = ForwardModelSpec(
        model=ModelConfig(hidden=32, members=2, context=6),
        training=TrainingConfig(dataset=str(small_dataset), steps_per_iter=40, batch_size=64, val_windows=300,
                                num_threads=1, device="cpu", lr=3e-3),
    )  # fmt: skip
    trainer = Trainer(spec, seed=0)
    trainer.train_iteration()
    return trainer.save(tmp_path_factory.mktemp("fm") / "checkpoint_000001")


def test_trust_falls_for_a_model_trained_one_iteration(one_iteration_model, small_dataset, tmp_path):
    from envs.dynamics.evaluator import evaluate_with_model, judge_with_model

    cfg = PromotionConfig(model_windows=6, model_horizon_s=60)
    verdict = judge_with_model(ZeroController(), one_iteration_model, small_dataset, cfg, seed=0, name="it")
    parts = verdict.trust_detail
    # the seed's criteria are not met by one iteration, so the model's part (and the whole) is below full
    assert parts["model_criteria"] <= FAILED_CAP and verdict.trust <= parts["model_criteria"]
    assert verdict.trust < cfg.min_trust and not verdict.promoted and "not trusted" in verdict.reason
    assert verdict.judge == "forward model" and math.isfinite(verdict.candidate["export_kwh"])
    assert set(parts) >= {"ensemble_agreement", "model_criteria", "pi_calibration", "trust", "why"}
    # the estimate table's trust is the same measure: below full for every controller run through the model
    res = evaluate_with_model(None, str(one_iteration_model), str(small_dataset), tmp_path, windows=4,
                              horizon_s=60, baselines=("pi", "zero"))  # fmt: skip
    assert res["logged_pi"]["trust"] == 1.0
    assert all(
        res[n]["trust"] <= FAILED_CAP and res[n]["trust"] <= res[n]["trusted_share"] for n in ("pi", "zero")
    )
    # a candidate equal to the PI is never promoted, whatever the trust: no margin
    assert not judge_with_model(PIController(), one_iteration_model, small_dataset, cfg, seed=0).promoted
