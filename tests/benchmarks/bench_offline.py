"""Offline learner updates/s: RLlib BC, CQL and IQL against a plain torch loop (a script, not a test).

    .venv/bin/python tests/benchmarks/bench_offline.py [--algos bc,cql,iql] [--device cpu|cuda] [--seed 0]

It generates its own small dataset (``gridrl data generate`` + ``data build`` of the PI's logs, ``--days`` x
``--hours``) into ``--work``, then for each algorithm, in this one process on this one machine:

* **rllib**: the config users train (rllib_configs/export/<algo>.yaml, its offline_data and evaluation
  settings as they are) built as an algorithm in this process (local learner, no Tune) and timed over
  ``--iters`` training iterations after one warm-up iteration (which pays for reading and preparing the
  data, reported apart); the evaluation episodes are timed apart, so updates/s is the learner's;
* **plain**: a torch loop with the same networks (RLlib's default modules: the policy an MLP encoder
  ``fcnet_hiddens`` plus a linear head, each Q network RLlib's two-stream encoder with its fusion stack; the
  parameter counts are compared and printed), the same losses, batch size and optimisers,
  on the same dataset held in memory as tensors, normalised once, minibatches drawn by ``torch.randint``.

It prints a table (updates/s of each and their ratio; the issue's target is >= 0.5) with the load average
before and after, then one JSON line. ``--device cuda`` puts both learners on the GPU (RLlib:
``learners(num_gpus_per_learner=1)``); run it once with ``cpu`` and once with ``cuda`` for GPU-vs-CPU
figures. No GPU is needed for ``cpu``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

ALGOS = ("bc", "cql", "iql")


# ----------------------------------------------------------------------------------------------- dataset
def make_dataset(work: Path, days: int, hours: float, seed: int) -> Path:
    """The PI's simulated logs, built into a dataset (reused when ``work`` already holds it: a machine without
    polars, such as the lent GPU machine, runs on a dataset built elsewhere and copied into ``work``)."""
    ds = work / f"dataset_d{days}_h{hours:g}_s{seed}"
    if not (ds / "manifest.json").is_file():
        from offline_data.build import BuildConfig, build
        from offline_data.generate import GenerateConfig, generate

        raw = work / f"raw_d{days}_h{hours:g}_s{seed}"
        if not raw.exists():
            generate(
                GenerateConfig(
                    days=days, hours=hours, start_hour=9.0, seed=seed, defects=0.0, scenario="broken_clouds"
                ),
                raw,
            )
        build(raw, ds, BuildConfig(), seed=seed, progress=False)
    return ds


def load_arrays(ds: Path) -> dict[str, np.ndarray]:
    """The train split in memory, ``obs``/``new_obs`` normalised with the dataset's statistics."""
    import pyarrow.parquet as pq

    from envs.normalization import ObsNormalizer

    table = pq.read_table(ds / "train", columns=["obs", "actions", "rewards", "new_obs", "terminateds"])
    norm = ObsNormalizer.load(ds / "normalization.json")

    def stack(col: str) -> np.ndarray:
        return np.stack(table.column(col).to_numpy(zero_copy_only=False)).astype(np.float32)

    return {
        "obs": norm(stack("obs")).astype(np.float32),
        "new_obs": norm(stack("new_obs")).astype(np.float32),
        "actions": stack("actions"),
        "rewards": table.column("rewards").to_numpy().astype(np.float32),
        "terminateds": table.column("terminateds").to_numpy().astype(np.float32),
    }


# ----------------------------------------------------------------------------------------------- plain torch
def _mlp(torch: Any, i: int, hidden: list[int], o: int) -> Any:
    layers, d = [], i
    for h in hidden:
        layers += [torch.nn.Linear(d, h), torch.nn.ReLU()]
        d = h
    return torch.nn.Sequential(*layers, torch.nn.Linear(d, o))


def _q_net(torch: Any, n_obs: int, n_act: int, hid: list[int], fusion: list[int]) -> Any:
    """RLlib 2.60's SAC/CQL/IQL Q network for Box spaces (SACCatalog, TorchMultiStreamEncoder): an obs MLP and
    an action MLP (``fcnet_hiddens``, ReLU out), a fusion stack where each layer also sees both embeddings
    (``fusionnet_hiddens``), an output layer of ``fcnet_hiddens[-1]`` units, then a linear Q head."""
    nn = torch.nn

    def enc(i: int) -> Any:
        layers, d = [], i
        for h in hid:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        return nn.Sequential(*layers)

    class Q(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act_enc, self.obs_enc = enc(n_act), enc(n_obs)
            e = 2 * hid[-1]
            dims = [e] + [h + e for h in fusion[:-1]]
            self.fusion = nn.ModuleList(nn.Linear(d, h) for d, h in zip(dims, fusion, strict=False))
            self.out = nn.Linear((fusion[-1] + e) if fusion else e, hid[-1])
            self.head = nn.Linear(hid[-1], 1)

        def forward(self, x: Any) -> Any:
            embeds = torch.cat([self.act_enc(x[:, n_obs:]), self.obs_enc(x[:, :n_obs])], -1)
            out = embeds
            for i, layer in enumerate(self.fusion):
                out = torch.relu(layer(embeds if i == 0 else torch.cat([out, embeds], -1)))
            if self.fusion:
                out = torch.cat([out, embeds], -1)
            return self.head(torch.relu(self.out(out)))

    return Q()


def _gauss_logp(torch: Any, mean: Any, log_std: Any, x: Any) -> Any:
    return (-0.5 * ((x - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def _squashed(torch: Any, logits: Any, eps: Any = None) -> tuple[Any, Any, Any, Any]:
    """RLlib's TorchSquashedGaussian on [-1, 1]: (mean, log_std, action sample, its log-prob)."""
    mean, log_std = logits.chunk(2, -1)
    log_std = log_std.clamp(-20.0, 20.0)  # RLlib's MIN/MAX_LOG_NN_OUTPUT
    u = mean + log_std.exp() * (torch.randn_like(mean) if eps is None else eps)
    logp = _gauss_logp(torch, mean, log_std, u) - (
        2.0 * (math.log(2.0) - u - torch.nn.functional.softplus(-2.0 * u))
    ).sum(-1)
    return mean, log_std, torch.tanh(u), logp


def _squashed_logp_of(torch: Any, mean: Any, log_std: Any, a: Any) -> Any:
    u = torch.atanh(a.clamp(-1.0 + 1e-6, 1.0 - 1e-6))
    return _gauss_logp(torch, mean, log_std, u) - (
        2.0 * (math.log(2.0) - u - torch.nn.functional.softplus(-2.0 * u))
    ).sum(-1)


def plain_step(
    algo: str, config: Any, n_obs: int, n_act: int, dev: Any
) -> tuple[Callable[[dict], None], int]:
    """(one update on a minibatch dict, number of parameters) of ``algo`` with the config's sizes and rates.

    The losses are RLlib 2.60's (bc: -log pi(a|s) of a diagonal Gaussian; cql: SAC + CQL(H) with
    ``num_actions`` random / current / next policy actions per row and twin Q; iql: expectile value loss,
    advantage-weighted log-likelihood, TD loss on V(s'), twin Q), computed once and backpropagated once.
    """
    import torch

    hid = list(config.model_config.get("fcnet_hiddens", [256, 256]))
    if algo == "bc":
        pi = _mlp(torch, n_obs, hid, 2 * n_act).to(dev)
        opt = torch.optim.Adam(pi.parameters(), lr=config.lr)

        def bc(b: dict) -> None:
            mean, log_std = pi(b["obs"]).chunk(2, -1)
            loss = -_gauss_logp(torch, mean, log_std, b["actions"]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        return bc, sum(p.numel() for p in pi.parameters())

    pi = _mlp(torch, n_obs, hid, 2 * n_act).to(dev)
    fusion = list(config.model_config.get("fusionnet_hiddens", [256, 256]))  # RLlib's DefaultModelConfig
    qs = [_q_net(torch, n_obs, n_act, hid, fusion).to(dev) for _ in range(2)]
    targets = [_q_net(torch, n_obs, n_act, hid, fusion).to(dev) for _ in range(2)]
    for q, t in zip(qs, targets, strict=False):
        t.load_state_dict(q.state_dict())
        t.requires_grad_(False)
    q_params = [p for q in qs for p in q.parameters()]
    n_params = sum(p.numel() for m in (pi, *qs, *targets) for p in m.parameters())
    gamma, tau = config.gamma, config.tau

    def polyak() -> None:
        with torch.no_grad():
            for q, t in zip(qs, targets, strict=False):
                for p, tp in zip(q.parameters(), t.parameters(), strict=False):
                    tp.mul_(1.0 - tau).add_(tau * p)

    def qmin(nets: list, o: Any, a: Any) -> Any:
        x = torch.cat([o, a], -1)
        return torch.min(nets[0](x), nets[1](x)).squeeze(-1)

    if algo == "cql":
        log_alpha = torch.zeros(1, device=dev, requires_grad=True)
        opt_pi = torch.optim.Adam(pi.parameters(), lr=config.actor_lr)
        opt_q = torch.optim.Adam(q_params, lr=config.critic_lr)
        opt_alpha = torch.optim.Adam([log_alpha], lr=config.alpha_lr)
        k = int(config.num_actions)
        target_entropy = -float(n_act)
        w, temp = config.min_q_weight, config.temperature

        def cql(b: dict) -> None:
            o, o2, a, r, d = b["obs"], b["new_obs"], b["actions"], b["rewards"], b["terminateds"]
            batch = o.shape[0]
            _, _, a_pi, logp_pi = _squashed(torch, pi(o))
            with torch.no_grad():
                _, _, a2, logp2 = _squashed(torch, pi(o2))
                y = r + gamma * (1.0 - d) * qmin(targets, o2, a2)  # deterministic backup (RLlib's default)
            alpha = log_alpha.exp()
            alpha_loss = -(log_alpha * (logp_pi.detach() + target_entropy)).mean()
            for q in qs:
                q.requires_grad_(False)
            actor_loss = (alpha.detach() * logp_pi - qmin(qs, o, a_pi)).mean()
            for q in qs:
                q.requires_grad_(True)
            x = torch.cat([o, a], -1)
            q_data = [q(x).squeeze(-1) for q in qs]
            o_rep, o2_rep = o.repeat_interleave(k, 0), o2.repeat_interleave(k, 0)
            a_rand = torch.rand(batch * k, n_act, device=dev) * 2.0 - 1.0
            with torch.no_grad():
                _, _, a_cur, lp_cur = _squashed(torch, pi(o_rep))
                _, _, a_nxt, lp_nxt = _squashed(torch, pi(o2_rep))
            density = math.log(0.5**n_act)
            critic = 0.0
            for q, qd in zip(qs, q_data, strict=False):
                cat = torch.cat(
                    [
                        q(torch.cat([o_rep, a_rand], -1)).view(batch, k) - density,
                        q(torch.cat([o_rep, a_nxt], -1)).view(batch, k) - lp_nxt.view(batch, k),
                        q(torch.cat([o_rep, a_cur], -1)).view(batch, k) - lp_cur.view(batch, k),
                    ],
                    1,
                )
                cql_term = torch.logsumexp(cat / temp, 1).mean() * w * temp - qd.mean() * w
                critic = critic + 0.5 * ((qd - y) ** 2).mean() + 0.5 * cql_term
            for opt in (opt_pi, opt_q, opt_alpha):
                opt.zero_grad()
            (actor_loss + critic + alpha_loss).backward()
            for opt in (opt_pi, opt_q, opt_alpha):
                opt.step()
            polyak()

        return cql, n_params

    # iql
    vf = _mlp(torch, n_obs, hid, 1).to(dev)
    n_params += sum(p.numel() for p in vf.parameters())
    opt_pi = torch.optim.Adam(pi.parameters(), lr=config.actor_lr)
    opt_q = torch.optim.Adam(q_params, lr=config.critic_lr)
    opt_v = torch.optim.Adam(vf.parameters(), lr=config.value_lr)
    expectile, beta = config.expectile, config.beta

    def iql(b: dict) -> None:
        o, o2, a, r, d = b["obs"], b["new_obs"], b["actions"], b["rewards"], b["terminateds"]
        with torch.no_grad():
            q_t = qmin(targets, o, a)
            v2 = vf(o2).squeeze(-1)
        v = vf(o).squeeze(-1)
        diff = q_t - v
        value_loss = (torch.where(diff > 0, expectile, 1.0 - expectile) * diff**2).mean()
        weight = torch.exp(beta * diff.detach()).clamp(max=100.0)
        mean, log_std = pi(o).chunk(2, -1)
        actor_loss = -(weight * _squashed_logp_of(torch, mean, log_std.clamp(-20.0, 20.0), a)).mean()
        y = r + gamma * (1.0 - d) * v2
        x = torch.cat([o, a], -1)
        critic = sum(0.5 * ((q(x).squeeze(-1) - y) ** 2).mean() for q in qs)
        for opt in (opt_pi, opt_q, opt_v):
            opt.zero_grad()
        (value_loss + actor_loss + critic).backward()
        for opt in (opt_pi, opt_q, opt_v):
            opt.step()
        polyak()

    return iql, n_params


def plain_rate(
    algo: str, config: Any, data: dict[str, np.ndarray], device: str, seconds: float, seed: int
) -> dict:
    import torch

    torch.manual_seed(seed)
    dev = torch.device(device)
    tensors = {k: torch.as_tensor(v, device=dev) for k, v in data.items()}
    n = len(data["rewards"])
    batch = int(config.train_batch_size_per_learner)
    step, n_params = plain_step(algo, config, data["obs"].shape[1], data["actions"].shape[1], dev)
    gen = torch.Generator(device=dev).manual_seed(seed)

    def update() -> None:
        idx = torch.randint(n, (batch,), device=dev, generator=gen)
        step({k: v[idx] for k, v in tensors.items()})

    for _ in range(3):
        update()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        update()
        k += 1
    sync()
    dt = time.perf_counter() - t0
    return {"updates_per_s": k / dt, "updates": k, "seconds": dt, "parameters": n_params}


# ----------------------------------------------------------------------------------------------- RLlib
def rllib_config(
    algo: str,
    ds: Path,
    seed: int,
    device: str,
    updates: int | None,
    data: str = "yaml",
    evaluation: bool = True,
) -> Any:
    from rllib_configs.loader import load_train_config
    from rllib_configs.runner import RunOptions, configure

    spec = load_train_config(ROOT / "rllib_configs" / "export" / f"{algo}.yaml", dataset=str(ds))
    opts = RunOptions(
        storage_path=Path(tempfile.gettempdir()), seed=seed, num_gpus_per_learner=1 if device == "cuda" else 0
    )
    config = configure(spec, opts)
    if not evaluation:
        config.evaluation(evaluation_interval=None)
        from rllib_configs.envs import make_export_env

        env = make_export_env(config.env_config)  # without evaluation RLlib wants the spaces given
        config.environment(observation_space=env.observation_space, action_space=env.action_space)
        env.close()
    if updates is not None:
        config.offline_data(dataset_num_iters_per_learner=updates)
    if data == "streaming":  # RLlib's own path, as the configs had it before InMemoryOfflineData
        from rllib_configs.offline import OrderedOfflineData

        config.offline_data(
            offline_data_class=OrderedOfflineData, map_batches_kwargs={"concurrency": 1, "num_cpus": 0}
        )
    return config


def rllib_rate(config: Any, iters: int) -> dict:
    t0 = time.perf_counter()
    algo = config.build_algo()
    build_s = time.perf_counter() - t0
    try:
        n_params = sum(p.numel() for p in algo.learner_group._learner.module["default_policy"].parameters())
        t0 = time.perf_counter()
        algo.train()  # the data pipeline starts (and materialises, where configured) here
        first_s = time.perf_counter() - t0
        per_iter = int(config.dataset_num_iters_per_learner)
        evaluate, eval_s = algo._run_one_evaluation, []

        def timed_evaluation(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return evaluate(*args, **kwargs)
            finally:
                eval_s.append(time.perf_counter() - t)

        algo._run_one_evaluation = timed_evaluation  # evaluation timed apart from the updates
        t0 = time.perf_counter()
        for _ in range(iters):
            algo.train()
        dt = time.perf_counter() - t0
    finally:
        algo.stop()
    updates, train_s = iters * per_iter, dt - sum(eval_s)
    return {
        "updates_per_s": updates / train_s,
        "updates_per_s_with_evaluation": updates / dt,
        "updates": updates,
        "seconds": dt,
        "evaluation_s_per_iteration": sum(eval_s) / iters,
        "updates_per_iteration": per_iter,
        "build_s": build_s,
        "first_iteration_s": first_s,
        "parameters": n_params,
    }


# ----------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algos", default=",".join(ALGOS), help="comma-separated subset of bc,cql,iql")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both learners run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--days", type=int, default=2, help="simulated days of PI logs in the dataset")
    ap.add_argument("--hours", type=float, default=2.0, help="hours per simulated day")
    ap.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "gridrl_bench_offline",
        help="folder for the generated logs and dataset (reused between runs)",
    )
    ap.add_argument("--iters", type=int, default=3, help="timed RLlib training iterations (after 1 warm-up)")
    ap.add_argument(
        "--updates",
        type=int,
        default=None,
        help="learner updates per RLlib iteration (default: the YAML's dataset_num_iters_per_learner)",
    )
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds of each plain loop")
    ap.add_argument(
        "--data",
        choices=("yaml", "streaming"),
        default="yaml",
        help="yaml: the configs' offline_data as they are (InMemoryOfflineData); streaming: RLlib's "
        "Ray Data streaming path instead (OrderedOfflineData, one pre-learner actor), for comparison",
    )
    ap.add_argument(
        "--no-evaluation",
        action="store_true",
        help="turn the configs' evaluation off (by default it runs as configured and is timed apart)",
    )
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads of both learners (1: what a Tune trial of `gridrl train` gets, Ray "
        "setting OMP_NUM_THREADS to its 1 CPU; 2 threads collapse when another process holds a core)",
    )
    args = ap.parse_args()
    algos = [a.strip().lower() for a in args.algos.split(",") if a.strip()]
    bad = [a for a in algos if a not in ALGOS]
    if bad:
        ap.error(f"--algos: unknown {bad}; choose from {', '.join(ALGOS)}")
    for flag in ("iters", "seconds", "days", "hours", "num_cpus", "threads"):
        if getattr(args, flag) <= 0:
            ap.error(f"--{flag.replace('_', '-')}: must be > 0")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no GPU here")
    torch.set_num_threads(args.threads)
    import ray

    from cluster.local import init_ray
    from rllib_configs.envs import register_rllib_envs

    args.work.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(args.work, args.days, args.hours, args.seed)
    data = load_arrays(ds)
    load_before = os.getloadavg()
    init_ray(num_cpus=args.num_cpus)
    register_rllib_envs()
    rows = {}
    try:
        for algo in algos:
            config = rllib_config(
                algo, ds, args.seed, args.device, args.updates, args.data, not args.no_evaluation
            )
            rl = rllib_rate(config, args.iters)
            pl = plain_rate(algo, config, data, args.device, args.seconds, args.seed)
            rows[algo] = {
                "batch": int(config.train_batch_size_per_learner),
                "rllib": rl,
                "plain": pl,
                "ratio": rl["updates_per_s"] / pl["updates_per_s"],
            }
            print(
                f"[bench_offline] {algo}: rllib {rl['updates_per_s']:.1f} upd/s, "
                f"plain {pl['updates_per_s']:.1f}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        ray.shutdown()
    load_after = os.getloadavg()
    print(
        f"\ndataset: {len(data['rewards'])} train rows ({ds}); offline data: {args.data}; "
        f"device {args.device}; torch threads "
        f"{torch.get_num_threads()}; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}"
    )
    print(
        f"{'algo':5s} {'batch':>5s} {'upd/iter':>8s} {'first iter s':>12s} {'eval s/iter':>11s} "
        f"{'rllib upd/s':>11s} {'(with eval)':>11s} {'plain upd/s':>11s} {'ratio':>6s}  params (rllib/plain)"
    )
    for algo, r in rows.items():
        rl = r["rllib"]
        print(
            f"{algo:5s} {r['batch']:5d} {rl['updates_per_iteration']:8d} {rl['first_iteration_s']:12.1f} "
            f"{rl['evaluation_s_per_iteration']:11.2f} {rl['updates_per_s']:11.2f} "
            f"{rl['updates_per_s_with_evaluation']:11.2f} {r['plain']['updates_per_s']:11.2f} "
            f"{r['ratio']:6.2f}  "
            f"{rl['parameters']}/{r['plain']['parameters']}"
        )
    print("ratio = rllib upd/s (evaluation time taken out) / plain upd/s; target >= 0.5")
    print(
        json.dumps(
            {
                "bench": "offline",
                "device": args.device,
                "seed": args.seed,
                "data": args.data,
                "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
                "torch_threads": torch.get_num_threads(),
                "train_rows": len(data["rewards"]),
                "loadavg_before": load_before,
                "loadavg_after": load_after,
                "results": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
