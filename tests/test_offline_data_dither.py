"""The dithered PI's logs (``gridrl data generate --controller dithered_pi``): within the bound they state,
and the same seed gives the same logs."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from envs.controllers import DitherConfig, PIConfig, PIController, pi_target_from_state
from envs.site import load_site
from offline_data.generate import GenerateConfig, generate, simulate_day
from offline_data.schemas import STREAMS

DATE = dt.date(2025, 6, 1)
DITHER = DitherConfig(gain_low=0.6, gain_high=1.4, gain_period_s=300, residual_w=250.0, hold_s=(3, 12))
CFG = GenerateConfig(
    days=1,
    hours=0.25,
    start_hour=11.0,
    seed=3,
    scenario="broken_clouds",
    controller="dithered_pi",
    dither=DITHER,
)
PHASES = [f"target_w_l{p}" for p in (1, 2, 3)]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("dither") / "raw"
    generate(CFG, out)
    return out


def test_dithered_logs_keep_within_their_stated_bound(raw):
    """The logged targets against the PI replayed on the same readings with the logged gains: never more
    than residual_w apart per phase, and the bound is reached (the dither is there)."""
    record = json.loads((raw / "_logging" / f"date={DATE}.json").read_text())
    assert record["controller"] == "dithered_pi" and record["bound"] == DITHER.bound()
    assert "[0.6, 1.4] x nominal" in record["bound"] and "250 W per phase" in record["bound"]
    gains = np.array(record["gain_factors"])
    assert gains.shape == (CFG.episode_s // DITHER.gain_period_s, 2)
    assert ((gains >= 0.6) & (gains <= 1.4)).all() and gains.std() > 0.05
    logged = pl.read_csv(raw / "pi_state" / f"date={DATE}" / "part-0.csv")
    targets = logged.select(PHASES).to_numpy()
    available = logged.select(f"available_w_l{p}" for p in (1, 2, 3)).to_numpy()

    trace, _ = simulate_day(CFG, load_site(None), DATE)  # the same seed: the same day, the same readings
    pi, nominal = PIController(), PIConfig()
    reference, output = np.empty_like(targets), np.empty(len(targets))
    for k in range(len(targets)):
        if k % DITHER.gain_period_s == 0:
            kp, ki = gains[k // DITHER.gain_period_s]
            pi.config = PIConfig(kp=nominal.kp * kp, ki=nominal.ki * ki)
        reference[k] = pi.act(trace.obs[k][None].astype(np.float64))[0]
        output[k] = pi.u[0]
    departure = np.abs(targets - reference)
    assert departure.max() <= DITHER.residual_w + 1e-6, departure.max()
    assert departure.max() > 0.9 * DITHER.residual_w
    active = (available > 0).any(0)
    assert (departure[:, active].std(0) > 50).all(), departure.std(0)
    assert (departure[output == 0] < 1e-6).all(), "the residual acts only while the PI commands power"
    assert (targets >= 0).all() and (targets <= np.maximum(available, reference) + 1e-6).all()
    # Against the nominal PI in the same state, the logs depart too: the coverage offline RL needs.
    nominal_dev = targets[:-1] - pi_target_from_state(trace.obs[: len(targets) - 1])
    assert np.abs(nominal_dev[:, active]).mean() > 30


def test_same_seed_same_logs(raw, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    generate(CFG, again)
    generate(replace(CFG, seed=4), other)
    files = [f"{s}/date={DATE}/part-0.csv" for s in STREAMS] + [f"_logging/date={DATE}.json"]
    for rel in files:
        assert (again / rel).read_bytes() == (raw / rel).read_bytes(), rel
    assert (other / files[1]).read_bytes() != (raw / files[1]).read_bytes()
    assert (
        json.loads((other / files[-1]).read_text())["gain_factors"]
        != json.loads((raw / files[-1]).read_text())["gain_factors"]
    )


def test_dithered_logs_widen_the_action_coverage_of_the_dataset(raw, tmp_path):
    """offline_data/coverage.py on built datasets: the PI's logs depart from the PI by 0 W (the measure
    recomputes the PI from the state alone), the dithered PI's by tens of watts, on the same day."""
    from offline_data.build import BuildConfig, build
    from offline_data.coverage import dataset_coverage

    generate(replace(CFG, controller="pi"), tmp_path / "pi")
    build(tmp_path / "pi", tmp_path / "ds_pi", BuildConfig(), progress=False)
    build(raw, tmp_path / "ds_dithered", BuildConfig(), progress=False)
    pi, dithered = dataset_coverage(tmp_path / "ds_pi"), dataset_coverage(tmp_path / "ds_dithered")
    assert list(pi["logged_by"]) == ["pi"] and dithered["logged_by"] == {"dithered_pi": DITHER.bound()}
    active = [i for i, s in enumerate(dithered["active"]["departure_std_w"]) if s]
    assert active and max(pi["active"]["departure_std_w"]) < 1.0
    assert min(dithered["active"]["departure_std_w"][i] for i in active) > 50.0
    assert dithered["active"]["share_departing"] > 0.3 > pi["active"]["share_departing"]
