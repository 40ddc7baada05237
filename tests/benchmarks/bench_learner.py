"""Learner updates/s on CPU vs GPU, for the network updates gridrl's configs run (plain torch).

Not a test. RLlib itself cannot be installed on the lent GPU machine (no network there, and a Ray wheel is
larger than what may be carried), so this reproduces the *update* of RLlib's default torch modules with
the sizes of rllib_configs/export/: PPO (policy and value MLPs 30-128-128, minibatch 400, Adam, clipped
surrogate + value loss) and SAC/CQL (actor and twin Q MLPs 256-256, batch 256 / 1024). It prints updates/s
per device and the GPU/CPU ratio measured in the same run. Needs torch and numpy only.

    python tests/benchmarks/bench_learner.py [--seconds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn


def mlp(i: int, hidden: list[int], o: int, act: type = nn.Tanh) -> nn.Sequential:
    layers, d = [], i
    for h in hidden:
        layers += [nn.Linear(d, h), act()]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, o))


def ppo_step(dev: torch.device, batch: int) -> tuple[callable, int]:
    pi, vf = mlp(30, [128, 128], 6).to(dev), mlp(30, [128, 128], 1).to(dev)
    opt = torch.optim.Adam([*pi.parameters(), *vf.parameters()], lr=3e-4)
    obs, act = torch.randn(batch, 30, device=dev), torch.randn(batch, 3, device=dev)
    adv, ret, old_logp = torch.randn(batch, device=dev), torch.randn(batch, device=dev), torch.randn(batch, device=dev)

    def step() -> None:
        mean, log_std = pi(obs).chunk(2, -1)
        dist = torch.distributions.Normal(mean, log_std.clamp(-5, 2).exp())
        ratio = (dist.log_prob(act).sum(-1) - old_logp).exp()
        surrogate = torch.min(adv * ratio, adv * ratio.clamp(0.8, 1.2))
        loss = -surrogate.mean() + 0.5 * (vf(obs).squeeze(-1) - ret).pow(2).mean() - 0.0 * dist.entropy().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, batch


def sac_step(dev: torch.device, batch: int) -> tuple[callable, int]:
    actor = mlp(30, [256, 256], 6, nn.ReLU).to(dev)
    qs = [mlp(33, [256, 256], 1, nn.ReLU).to(dev) for _ in range(2)]
    targets = [mlp(33, [256, 256], 1, nn.ReLU).to(dev) for _ in range(2)]
    opt_a = torch.optim.Adam(actor.parameters(), lr=3e-4)
    opt_q = torch.optim.Adam([p for q in qs for p in q.parameters()], lr=3e-4)
    obs, nxt = torch.randn(batch, 30, device=dev), torch.randn(batch, 30, device=dev)
    act, rew = torch.rand(batch, 3, device=dev) * 2 - 1, torch.randn(batch, 1, device=dev)

    def sample(o: torch.Tensor) -> torch.Tensor:
        mean, log_std = actor(o).chunk(2, -1)
        return torch.tanh(mean + log_std.clamp(-5, 2).exp() * torch.randn_like(mean))

    def step() -> None:
        with torch.no_grad():
            a2 = sample(nxt)
            tq = torch.min(*[t(torch.cat([nxt, a2], -1)) for t in targets])
            y = rew + 0.98 * tq
        q_loss = sum((q(torch.cat([obs, act], -1)) - y).pow(2).mean() for q in qs)
        opt_q.zero_grad()
        q_loss.backward()
        opt_q.step()
        a = sample(obs)
        a_loss = -torch.min(*[q(torch.cat([obs, a], -1)) for q in qs]).mean()
        opt_a.zero_grad()
        a_loss.backward()
        opt_a.step()
        with torch.no_grad():
            for q, t in zip(qs, targets):
                for p, tp in zip(q.parameters(), t.parameters()):
                    tp.mul_(0.995).add_(0.005 * p)

    return step, batch


def rate(make: callable, dev: torch.device, batch: int, seconds: float) -> dict:
    step, n = make(dev, batch)
    for _ in range(5):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            step()
        k += 10
        if dev.type == "cuda":
            torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"updates_per_s": k / dt, "samples_per_s": k * n / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (this laptop-class box: 2)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    cases = {"ppo minibatch 400": (ppo_step, 400), "sac batch 256": (sac_step, 256), "cql-size batch 1024": (sac_step, 1024)}
    out = {}
    for name, (make, batch) in cases.items():
        out[name] = {d.type: rate(make, d, batch, args.seconds) for d in devices}
        row = out[name]
        ratio = row["cuda"]["updates_per_s"] / row["cpu"]["updates_per_s"] if "cuda" in row else float("nan")
        print(f"{name:22s} cpu {row['cpu']['updates_per_s']:9.1f} upd/s"
              + (f"   gpu {row['cuda']['updates_per_s']:9.1f} upd/s   gpu/cpu {ratio:6.1f}x" if "cuda" in row else ""))
    print(json.dumps({"torch": torch.__version__, "cpu_threads": args.threads,
                      "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "results": out}))


if __name__ == "__main__":
    main()
