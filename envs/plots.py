"""Plots of export-domain traces (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402


def plot_day(traces: dict[str, pl.DataFrame], path: Path, title: str) -> None:
    """One panel per controller: PV, base load, export per phase and commanded targets, over the day.

    Args:
        traces: controller name -> trace of one day (columns of envs/rollout.py).
        path: PNG to write.
        title: Figure title.
    """
    fig, axes = plt.subplots(len(traces), 1, figsize=(13, 2.8 * len(traces)), sharex=True, squeeze=False)
    for ax, (name, tr) in zip(axes[:, 0], traces.items()):
        hours = (tr["t"].to_numpy() + 0.0) / 3600.0
        step = max(1, tr.height // 4000)  # keep the PNG light: plot at most ~4000 points per line
        sl = slice(None, None, step)
        pv = sum(tr[f"pv_w_l{p}"].to_numpy() for p in (1, 2, 3))
        base = sum(tr[f"base_w_l{p}"].to_numpy() for p in (1, 2, 3))
        ax.plot(hours[sl], pv[sl] / 1e3, color="orange", lw=0.8, label="PV")
        ax.plot(hours[sl], base[sl] / 1e3, color="grey", lw=0.6, label="base load")
        for p, c in zip((1, 2, 3), ("tab:red", "tab:green", "tab:blue")):
            ax.plot(hours[sl], tr[f"export_w_l{p}"].to_numpy()[sl] / 1e3, color=c, lw=0.6, label=f"export L{p}")
            ax.plot(hours[sl], tr[f"target_w_l{p}"].to_numpy()[sl] / 1e3, color=c, lw=0.6, ls=":", label=f"target L{p}")
        ax.axhline(0.0, color="black", lw=0.5)
        ax.set_ylabel(f"{name}\nkW")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(ncol=9, fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("hours since the start of the window")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_cumulative_export(traces: dict[str, pl.DataFrame], path: Path, title: str) -> None:
    """Cumulative net export (kWh) per controller over the concatenated days."""
    fig, ax = plt.subplots(figsize=(10, 4))
    for name, tr in traces.items():
        net = sum(tr[f"export_w_l{p}"].to_numpy() for p in (1, 2, 3))
        ax.plot(np.arange(tr.height) / 3600.0, np.cumsum(np.clip(net, 0, None)) / 3.6e6, label=name)
    ax.set_xlabel("hours")
    ax.set_ylabel("cumulative export, kWh")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
