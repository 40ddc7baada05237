"""How many actions per state a dataset holds: the action coverage that offline RL can improve from.

Logs of a deterministic PI hold one action per state: offline RL can then only clone it. Two measures,
both in W per phase, over the transitions of a built dataset (``obs``, ``actions``):

* **departure from the PI**: ``action - pi_target_from_state(obs)`` (envs/controllers.py): what was logged
  minus what the nominal PI would command in that very state. On the PI's own logs it is 0 to rounding; on
  a dithered PI's logs it holds the gain changes and the residual. Reported as std and mean |.| per phase,
  and the share of steps departing by more than 50 W;
* **spread per state bin**: the states are binned on three features that decide the PI's next target
  (export error, total previous target, total available power; quantile bins), and the std of the
  logged action per phase is taken within each bin that holds at least ``min_count`` steps, then
  averaged with the bins' step counts as weights. A bin's spread includes its own width, so compare
  datasets binned the same way (same ``bins``), not the number alone.

Both are given over all steps and over the *active* steps, where the PI or the logged action commands
power (at night both are 0 W and there is nothing to cover).

    .venv/bin/python -m offline_data.coverage DATASET [DATASET ...]   # JSON, one entry per dataset
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from envs.actions import N_ACTIONS, to_watts
from envs.arrow import to_numpy_2d
from envs.controllers import pi_target_from_state
from envs.site import load_site
from envs.state_spec import FEAT, N_FEATURES
from offline_data.split import SPLITS

DEPART_W = 50.0


def _bin_spread(obs: np.ndarray, act: np.ndarray, bins: int, min_count: int) -> dict:
    keys = [
        obs[:, FEAT["export_error_w"]],
        obs[:, [FEAT[f"target_w_l{p}"] for p in (1, 2, 3)]].sum(-1),
        obs[:, [FEAT[f"available_w_l{p}"] for p in (1, 2, 3)]].sum(-1),
    ]
    code = np.zeros(len(obs), np.int64)
    for k in keys:
        edges = np.unique(np.quantile(k, np.linspace(0, 1, bins + 1)[1:-1])) if len(k) else []
        code = code * (bins + 1) + np.searchsorted(edges, k, side="right")
    _, inv, counts = np.unique(code, return_inverse=True, return_counts=True)
    keep = counts[inv] >= min_count
    if not keep.any():
        return {"spread_w": [None] * 3, "bins_used": 0, "steps_in_bins": 0}
    inv, a = inv[keep], act[keep]
    n = np.bincount(inv)
    used = n > 0
    mean = np.stack([np.bincount(inv, a[:, p]) for p in range(3)], -1)[used] / n[used, None]
    sq = np.stack([np.bincount(inv, a[:, p] ** 2) for p in range(3)], -1)[used] / n[used, None]
    std = np.sqrt(np.clip(sq - mean**2, 0.0, None))
    w = n[used] / n[used].sum()
    return {
        "spread_w": [round(float(x), 2) for x in (std * w[:, None]).sum(0)],
        "bins_used": int(used.sum()),
        "steps_in_bins": int(keep.sum()),
    }


def _measures(obs: np.ndarray, act: np.ndarray, bins: int, min_count: int) -> dict:
    dev = act - pi_target_from_state(obs)
    return {
        "steps": int(len(obs)),
        "departure_std_w": [round(float(x), 2) for x in dev.std(0)] if len(obs) else [None] * 3,
        "departure_mean_abs_w": [round(float(x), 2) for x in np.abs(dev).mean(0)] if len(obs) else [None] * 3,
        "share_departing": round(float((np.abs(dev) > DEPART_W).any(-1).mean()), 4) if len(obs) else None,
        **_bin_spread(obs, act, bins, min_count),
    }


def action_coverage(obs: np.ndarray, actions_w: np.ndarray, bins: int = 8, min_count: int = 20) -> dict:
    """Both measures (module docstring) for state vectors ``obs`` (N, F) and logged targets (N, 3) W."""
    obs = np.asarray(obs, np.float64)
    act = np.asarray(actions_w, np.float64)
    active = (pi_target_from_state(obs).sum(-1) > 0) | (act.sum(-1) > 0)
    return {
        "all": _measures(obs, act, bins, min_count),
        "active": _measures(obs[active], act[active], bins, min_count),
        "bins_per_feature": bins,
        "min_count": min_count,
    }


def dataset_coverage(dataset: Path, bins: int = 8, min_count: int = 20) -> dict:
    """:func:`action_coverage` of every transition of a built dataset (all splits), actions in W by the
    dataset's site; with the manifest's ``logging`` (which controller logged it, and its bound)."""
    dataset = Path(dataset)
    manifest = json.loads((dataset / "manifest.json").read_text())
    max_w = load_site(manifest["config"]["site_resolved"]).control.max_power_per_phase_w
    obs, act = [], []
    for split in SPLITS:
        for path in sorted((dataset / split).glob("*.parquet")):
            t = pq.read_table(path, columns=["obs", "actions"])
            obs.append(to_numpy_2d(t["obs"], N_FEATURES))
            act.append(to_watts(to_numpy_2d(t["actions"], N_ACTIONS), max_w))
    if not obs:
        raise ValueError(f"{dataset}: no transitions under {', '.join(SPLITS)}")
    cov = action_coverage(np.concatenate(obs), np.concatenate(act), bins, min_count)
    logging = manifest.get("logging", {}).get("controllers", {})
    return {"dataset": str(dataset), "logged_by": {k: v["bound"] for k, v in logging.items()}, **cov}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m offline_data.coverage", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("datasets", nargs="+", type=Path)
    ap.add_argument("--bins", type=int, default=8, help="quantile bins per state feature (default 8)")
    ap.add_argument(
        "--min-count", type=int, default=20, help="fewest steps of a bin that counts (default 20)"
    )
    args = ap.parse_args(argv)
    try:
        out = [dataset_coverage(d, args.bins, args.min_count) for d in args.datasets]
    except (OSError, ValueError, KeyError) as exc:
        print(f"offline_data.coverage: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
