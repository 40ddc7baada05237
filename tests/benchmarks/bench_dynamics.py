"""Benchmark: forward-model training throughput (samples/s) and one-second stepping rate, CPU or GPU.

Not a test. Needs torch and numpy only (no Ray, no gymnasium): it loads envs/dynamics/model.py by its file
path, so it runs on a GPU box with torch alone. Data are synthetic with the real shapes (the spec's
features, 3 actions, ``--context`` seconds per window): throughput does not depend on the values.

    python tests/benchmarks/bench_dynamics.py [--devices cpu,cuda] [--seconds 20] [--batch 256]
        [--members 3] [--hidden 128] [--rollout-steps 5] [--threads 2] [--out FILE.json]

A *sample* is one training window (``--context`` teacher-forced seconds then ``--rollout-steps`` open-loop
ones, each a supervised one-second prediction) for one ensemble member; ``transitions_per_s`` = samples/s x
the window's length.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

MODEL_PY = Path(__file__).resolve().parents[2] / "envs" / "dynamics" / "model.py"
FEATURES = (
    [f"export_w_l{p}" for p in (1, 2, 3)]
    + ["export_w"]
    + [f"pv_w_l{p}" for p in (1, 2, 3)]
    + ["pv_w", "meter_age_s"]
    + ["export_w_mean_10s", "export_w_mean_60s", "export_w_delta_1s", "export_w_delta_5s", "pv_w_delta_5s"]
    + [f"{n}_w_l{p}" for n in ("target", "acked", "available") for p in (1, 2, 3)]
    + ["setpoint_w", "export_error_w", "phase_imbalance_w", "solar_time_sin", "solar_time_cos", "doy_sin", "doy_cos"]
    + ["clear_sky_w_m2", "clear_sky_next_1h_w_m2", "clear_sky_rest_kwh_m2"]
    + [f"available_for_s_l{p}" for p in (1, 2, 3)]
    + [f"acked_kwh_since_available_l{p}" for p in (1, 2, 3)]
    + ["pv_w_ewm_30min", "clear_sky_ewm_30min_w_m2"]
)  # the names of envs/state_spec.py (tests/test_dynamics.py checks they agree)


def load_model_module():
    spec = importlib.util.spec_from_file_location("gridrl_dynamics_model", MODEL_PY)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench_train(mod, dev: torch.device, args) -> dict:
    cfg = mod.ModelConfig(
        hidden=args.hidden, members=args.members, context=args.context, rollout_steps=args.rollout_steps
    )
    s = len(FEATURES)
    torch.manual_seed(0)
    model = mod.ForwardModel(FEATURES, np.zeros(s), np.ones(s), np.full(s, 0.1), 3, 5, cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    m, b, h, n_l = args.members, args.batch, args.context + args.rollout_steps, len(model.learned)
    # Host arrays moved to the device each step, as the trainer does.
    rng = np.random.default_rng(0)
    z_h = rng.standard_normal((m, b, h, s), dtype=np.float32)
    a_h = rng.uniform(-1, 1, (m, b, h, 3)).astype(np.float32)
    t_h = rng.standard_normal((m, b, h, n_l), dtype=np.float32)
    pv_h = rng.uniform(0, 3000, (m, b, h, 3)).astype(np.float32)

    def step() -> float:
        z, a, t, pv = (torch.as_tensor(x, device=dev) for x in (z_h, a_h, t_h, pv_h))
        return mod.train_step(model, opt, z, a, t, None, 1.0, pv_next=pv)

    for _ in range(args.warmup):
        step()
    _sync(dev)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        step()
        n += 1
    _sync(dev)
    dt = time.perf_counter() - t0
    samples = n * m * b / dt
    return {
        "steps": n,
        "seconds": dt,
        "samples_per_s": samples,
        "transitions_per_s": samples * h,
        "windows_per_s_all_members": n * b / dt,
    }


@torch.no_grad()
def bench_step(mod, dev: torch.device, args, batch: int) -> float:
    """One-second predictions per second for ``batch`` rollouts (what the model env and evaluator do)."""
    cfg = mod.ModelConfig(hidden=args.hidden, members=args.members, context=args.context)
    s = len(FEATURES)
    model = mod.ForwardModel(FEATURES, np.zeros(s), np.ones(s), np.full(s, 0.1), 3, 5, cfg).to(dev).eval()
    z = torch.randn(batch, args.context, s, device=dev)
    a = torch.zeros(batch, args.context, 3, device=dev)
    for _ in range(5):
        model(z, a)
    _sync(dev)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min(args.seconds, 5.0):
        model(z, a)[:, :, -1].cpu()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def bench_device(mod, dev: torch.device, args) -> dict:
    return {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or platform.machine(),
        "train": bench_train(mod, dev, args),
        "step_rate_batch1": bench_step(mod, dev, args, 1),
        "step_rate_batch1024": bench_step(mod, dev, args, 1024),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--devices",
        default="auto",
        help="comma-separated devices, measured in turn (default: cpu, and cuda when present)",
    )
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256, help="windows per step and member (forward_model.yaml)")
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--context", type=int, default=10)
    ap.add_argument("--rollout-steps", type=int, default=5, help="open-loop seconds per window (0 = off)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mod = load_model_module()
    auto = ["cpu", "cuda"][: 1 + torch.cuda.is_available()]
    devices = auto if args.devices == "auto" else args.devices.split(",")
    result = {
        "torch": torch.__version__,
        "threads": args.threads,
        "batch": args.batch,
        "members": args.members,
        "hidden": args.hidden,
        "context": args.context,
        "rollout_steps": args.rollout_steps,
        "runs": [bench_device(mod, torch.device(d), args) for d in devices],
    }
    runs = result["runs"]
    for r in runs[1:]:  # every device against the first (the CPU by default), measured in this run
        base = runs[0]
        r["vs_" + base["device"]] = {
            "train_samples_per_s": r["train"]["samples_per_s"] / base["train"]["samples_per_s"],
            "step_rate_batch1": r["step_rate_batch1"] / base["step_rate_batch1"],
            "step_rate_batch1024": r["step_rate_batch1024"] / base["step_rate_batch1024"],
        }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
