"""Benchmark of ``gridrl data build`` against a straightforward pandas implementation (a script, not a test).

    .venv/bin/python tests/benchmarks/bench_offline_data.py --work /tmp/gridrl_bench [--days 1,30]

For each input size it generates CSV logs of the PI with defects at 2 % (``gridrl data generate``; kept in
``--work`` and reused), then runs, each in its own subprocess (peak RSS = the child's ``ru_maxrss``):

* **polars**: offline_data.build.build, the real pipeline, in one process (one day partition in memory at a
  time), and again with worker processes for the per-day stages (``--workers`` default: the CPUs, <= 4);
* **pandas**: the same steps written the obvious pandas way: ``read_csv``, ``to_datetime``/``to_numeric``,
  the same row checks and repairs, ``merge_asof`` alignment, episodes with ``shift``/``cumsum``; every day's
  steps are concatenated in memory, split, and written with pyarrow.

Both call the same numeric kernels, which are the project's one definition of each: the feature kernel
(envs.state_spec.features_from_signals), the action scale (envs.actions.to_unit), the reward
(envs.reward.reward_from_power) and the array-to-Arrow conversion of the transitions. The report gives raw
rows per second of the whole build (imports and JIT loading timed apart), the speed-up, peak RSS (of the
process, and of the largest worker), the transitions each produced (they must agree) and an
extrapolation of each build time to 40 GB of logs, from bytes and seconds per day.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

FLOATS = {
    "meter_readings": [f"{p}_w_l{q}" for p in ("export", "pv") for q in (1, 2, 3)],
    "pi_state": ["setpoint_w", "error_w", "integral_w"]
    + [f"{p}_w_l{q}" for p in ("target", "available", "controlled") for q in (1, 2, 3)],
    "zigbee_commands": ["value_w"],
}
INTS = {"meter_readings": ["seq"], "pi_state": ["cycle"], "zigbee_commands": ["phase", "seq"]}
IMPLS = ("polars", "polars_workers", "pandas")


# ----------------------------------------------------------------------------------------------- pandas
def pandas_validate(pd, path: Path, stream: str, date: str):
    """One CSV partition -> (valid rows, quarantine rows, unknown-from rows for commands)."""
    from offline_data.validate import (
        JUMP_MS,
        KW_MAX,
        KW_RATIO,
        KW_WINDOW,
        MAX_METER_W,
        MAX_PI_W,
        _partition_window_ms,
    )

    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    df["_row"] = np.arange(len(df))
    cols = [c for c in df.columns if c != "_row"]
    truncated = not path.read_bytes().endswith(b"\n")
    reason = pd.Series([None] * len(df), dtype=object)
    column = pd.Series([None] * len(df), dtype=object)

    def flag(cond, r, c=None):
        hit = reason.isna() & cond.fillna(False).to_numpy()
        reason[hit] = r
        column[hit] = c

    if truncated:
        flag(pd.Series(df["_row"] == len(df) - 1), "truncated_line")
    typed = {}
    for c in cols:
        s = df[c].str.strip()
        if c in ("ts", "ack_ts"):
            t = pd.to_datetime(s, format="%Y-%m-%dT%H:%M:%S.%fZ", errors="coerce", utc=True)
            typed[c] = t
        elif c in FLOATS[stream] or c in INTS[stream]:
            typed[c] = pd.to_numeric(s, errors="coerce")
        elif c == "retry":
            typed[c] = s.str.lower().map({"true": True, "false": False, "1": True, "0": False})
        else:
            typed[c] = s
    for c in cols:
        if c != "ack_ts":
            flag(df[c].isna(), "missing_value", c)
    for c in cols:
        flag(df[c].notna() & typed[c].isna(), "non_numeric", c)
    for c in FLOATS[stream]:
        flag(~np.isfinite(typed[c].astype(float)) & typed[c].notna(), "nan_value", c)
    flag(pd.Series(df[cols].duplicated(keep="first").to_numpy()), "duplicate")
    out = pd.DataFrame({c: typed[c] for c in cols})
    for c in ("ts", "ack_ts"):
        if c in out:
            out[c + "_ms"] = (out[c].dt.tz_convert(None) - pd.Timestamp(0)) // pd.Timedelta(milliseconds=1)
            out = out.drop(columns=c)
    out["_row"], out["reason"], out["column"] = df["_row"], reason, column
    out["repaired"] = None
    ok = out[out["reason"].isna()].copy()
    if stream in ("meter_readings", "pi_state"):
        counter = INTS[stream][0]
        ok["_off"] = ok["ts_ms"] - ok[counter] * 1000
        prev = ok[counter].shift(1).fillna(ok[counter].iloc[0])
        ok["_era"] = (ok[counter] < prev - 100).cumsum()
        ok["_seg"] = (ok["_off"].diff().abs().fillna(0) > JUMP_MS).cumsum()
        seg = ok.groupby(["_era", "_seg"])["_off"].agg(["size", "median"]).reset_index()
        seg["_key"] = (seg["median"] / 1000).round()
        clusters = (
            seg.groupby(["_era", "_key"]).agg(size=("size", "sum"), cmed=("median", "median")).reset_index()
        )
        ref = clusters.sort_values("size", ascending=False).groupby("_era").first()["cmed"]
        seg["_ref"] = seg["_era"].map(ref)
        d = seg["median"] - seg["_ref"]
        seg["_shift"] = np.where(d.abs() > JUMP_MS, d.round(), 0).astype(np.int64)
        ok = ok.merge(seg[["_era", "_seg", "_shift"]], on=["_era", "_seg"], how="left")
        ok["ts_ms"] = ok["ts_ms"] - ok["_shift"]
        ok.loc[ok["_shift"] != 0, "repaired"] = "clock_jump"
        ok = ok.drop(columns=["_off", "_era", "_seg", "_shift"])
    ok = ok.sort_values(["ts_ms", "_row"], kind="stable").reset_index(drop=True)
    if stream == "meter_readings":
        vals = ok[FLOATS[stream]]
        ref = vals.rolling(KW_WINDOW, min_periods=1, center=True).median().abs().sum(axis=1)
        glitch = (vals.abs().sum(axis=1) * KW_RATIO < ref) & (vals.abs().max(axis=1) <= KW_MAX)
        ok.loc[glitch, FLOATS[stream]] = ok.loc[glitch, FLOATS[stream]] * 1000.0
        ok.loc[glitch, "repaired"] = (
            ok.loc[glitch, "repaired"].fillna("").map(lambda r: "unit_kw" if not r else r + ",unit_kw")
        )
    reason, column = ok["reason"].copy(), ok["column"].copy()
    lo, hi = _partition_window_ms(date)
    limit = MAX_METER_W if stream == "meter_readings" else MAX_PI_W
    if stream == "zigbee_commands":
        flag(ok["value_w"].lt(0) | ok["value_w"].gt(MAX_METER_W), "out_of_range", "value_w")
        flag(~ok["phase"].isin([1, 2, 3]), "out_of_range", "phase")
    else:
        for c in FLOATS[stream]:
            flag(ok[c].abs() > limit, "out_of_range", c)
    flag((ok["ts_ms"] < lo) | (ok["ts_ms"] >= hi), "outside_partition", "ts")
    ok["second"] = (ok["ts_ms"] + 500) // 1000 if stream == "meter_readings" else ok["ts_ms"] // 1000
    live = reason.isna()
    if stream != "zigbee_commands":
        flag(
            live & ok["second"].where(live).duplicated(keep="first") & ok["second"].where(live).notna(),
            "duplicate_second",
            "ts",
        )
    else:
        key = ok["slave_id"] + "#" + ok["seq"].astype("Int64").astype(str)
        flag(
            live & key.where(live).duplicated(keep="first") & key.where(live).notna(), "duplicate_seq", "seq"
        )
        mode = ok[reason.isna()].groupby("slave_id")["phase"].agg(lambda s: s.mode().iloc[0])
        flag(ok["phase"] != ok["slave_id"].map(mode), "phase_mismatch", "phase")
    ok["reason"], ok["column"] = reason.to_numpy(), column.to_numpy()
    allrows = pd.concat([ok, out[out["reason"].notna()]], ignore_index=True)
    quarantine = allrows[allrows["reason"].notna()][["_row", "reason", "column"]]
    valid = (
        allrows[allrows["reason"].isna()].sort_values(["ts_ms", "_row"], kind="stable").reset_index(drop=True)
    )
    valid = valid.astype({c: np.int64 for c in ["ts_ms", "second", *INTS[stream]]})
    unknown = None
    if stream == "zigbee_commands":
        a = allrows.sort_values("_row")
        a["_prev"] = a["ts_ms"].ffill()
        bad = a[a["reason"].notna() & ~a["reason"].isin(["duplicate", "duplicate_seq"])]
        unknown = pd.DataFrame(
            {
                "slave_id": bad["slave_id"],
                "second": (bad["ts_ms"].fillna(bad["_prev"]).fillna(0) // 1000).astype(np.int64),
            }
        )
    return valid, quarantine, unknown


def pandas_align(pd, meter, pi, cmds, unknown, cfg):
    """Same rules as offline_data/align.py, with merge_asof."""
    lo = int(min(meter["second"].min(), pi["second"].min()))
    hi = int(max(meter["second"].max(), pi["second"].max()))
    g = pd.DataFrame({"second": np.arange(lo, hi + 1, dtype=np.int64)})
    m = meter.drop_duplicates("second")[["second"] + FLOATS["meter_readings"]]
    m.columns = ["second"] + [f"meter_{c}" for c in FLOATS["meter_readings"]]
    g = g.merge(m, on="second", how="left")
    g["_m_last"] = g["second"].where(g["meter_export_w_l1"].notna()).ffill()
    p = pi.drop_duplicates("second").copy()
    p["_p_at"], p["_p_era"] = p["second"], p["second"] - p["cycle"]
    eras = pd.DataFrame({"_era": np.sort(p["_p_era"].unique())})
    g = pd.merge_asof(g, eras, left_on="second", right_on="_era", direction="backward")
    state = p[
        ["_p_at", "_p_era", "setpoint_w"]
        + [f"{x}_w_l{q}" for x in ("available", "controlled") for q in (1, 2, 3)]
    ]
    g = pd.merge_asof(
        g, state, left_on="second", right_on="_p_at", direction="backward", tolerance=cfg.max_pi_staleness_s
    )
    tgt = p[["_p_at", "_p_era"] + [f"target_w_l{q}" for q in (1, 2, 3)]].copy()
    tgt.columns = ["_t_at", "_t_era"] + [f"target_w_l{q}" for q in (1, 2, 3)]
    tgt["_t_at"] += 1
    g = pd.merge_asof(
        g, tgt, left_on="second", right_on="_t_at", direction="backward", tolerance=cfg.max_pi_staleness_s
    )
    restart = g["second"] == g["_era"]
    target_ok = (g["_t_era"] == g["_era"]) & g["_t_at"].notna()
    for q in (1, 2, 3):
        g[f"target_w_l{q}"] = np.where(restart, 0.0, np.where(target_ok, g[f"target_w_l{q}"], np.nan))
    g["_pi_ok"] = g["_p_at"].notna() & (g["_p_era"] == g["_era"])
    phases = cmds.groupby("slave_id")["phase"].first().to_dict()
    slaves = sorted(set(phases) | set(unknown["slave_id"].dropna()))
    acks = cmds[cmds["ack_ts_ms"].notna()]
    ev = [
        pd.DataFrame(
            {
                "slave_id": acks["slave_id"],
                "_e_at": -((-acks["ack_ts_ms"]) // 1000),
                "_prio": 1,
                "seq": acks["seq"],
                "_value": acks["value_w"],
            }
        )
    ]
    ev += [
        pd.DataFrame({"slave_id": s, "_e_at": eras["_era"], "_prio": 0, "seq": 0, "_value": 0.0})
        for s in slaves
    ]
    for s in slaves:
        u = unknown[(unknown["slave_id"] == s) | unknown["slave_id"].isna()]
        ev.append(pd.DataFrame({"slave_id": s, "_e_at": u["second"], "_prio": 2, "seq": 0, "_value": np.nan}))
    ev = pd.concat(ev, ignore_index=True)
    ev["_e_at"] = ev["_e_at"].astype(np.int64)
    ev = ev.sort_values(["slave_id", "_e_at", "_prio", "seq"]).groupby(["slave_id", "_e_at"]).tail(1)
    sums = {q: np.zeros(len(g)) for q in (1, 2, 3)}
    for s in slaves:
        e = ev[ev["slave_id"] == s][["_e_at", "_value"]].sort_values("_e_at")
        v = pd.merge_asof(g[["second"]], e, left_on="second", right_on="_e_at", direction="backward")[
            "_value"
        ]
        q = phases.get(s, 0)
        for ph in (q,) if q in sums else (1, 2, 3):
            sums[ph] = sums[ph] + (v.to_numpy() if q in sums else np.where(v.isna(), np.nan, 0.0))
    for q in (1, 2, 3):
        g[f"acked_w_l{q}"] = sums[q]
    changes = cmds[~cmds["retry"].astype(bool)].groupby("second").size().rename("changes")
    g = g.merge(changes, left_on="second", right_index=True, how="left")
    g["changes"] = g["changes"].fillna(0).astype(np.int64)
    age = g["second"] - g["_m_last"]
    g["_ok"] = (
        (age <= cfg.max_meter_staleness_s)
        & g["_pi_ok"]
        & g[[f"target_w_l{q}" for q in (1, 2, 3)]].notna().all(axis=1)
        & g[[f"acked_w_l{q}" for q in (1, 2, 3)]].notna().all(axis=1)
    )
    new_run = ~g["_ok"].shift(1, fill_value=False) | restart
    g["_run"] = (new_run & g["_ok"]).cumsum()
    g["_since"] = ((age == 0) & g["_ok"]).groupby(g["_run"]).cumsum()
    g["_keep"] = g["_ok"] & (g["_since"] > 0)
    g["_len"] = g.groupby(g["_run"].where(g["_keep"]))["second"].transform("size")
    out = g[g["_keep"] & (g["_len"] >= cfg.min_episode_s)].copy()
    out["episode"] = out["_run"].rank(method="dense").astype(np.int32) - 1
    out["time_s"] = out["second"].astype(float)
    return out


def pandas_build(raw: Path, out: Path) -> dict:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from envs.actions import to_unit
    from envs.reward import RewardWeights, reward_from_power
    from envs.site import load_site
    from envs.state_spec import N_FEATURES, features_from_signals
    from offline_data.align import SIGNAL_NAMES, AlignConfig
    from offline_data.rawio import discover
    from offline_data.transitions import STEPS_SCHEMA, fixed_list, transitions

    cfg, weights = AlignConfig(), RewardWeights()
    site = load_site(raw / "site.yaml")
    max_w = site.control.max_power_per_phase_w
    out.mkdir(parents=True)
    days = discover(raw)
    steps_all, quarantined = [], 0
    for date, streams in days.items():
        v = {}
        for name, files in streams.items():
            valid, q, unknown = pandas_validate(pd, files[0].path, name, date)
            q.to_parquet(out / f"quarantine_{name}_{date}.parquet")
            quarantined += len(q)
            v[name] = (valid, unknown)
        g = pandas_align(pd, v["meter_readings"][0], v["pi_state"][0], *v["zigbee_commands"], cfg)
        sig = g[list(SIGNAL_NAMES)].to_numpy(dtype=np.float64)
        ep = g["episode"].to_numpy()
        obs = np.empty((len(g), N_FEATURES))
        act = np.full((len(g), 3), np.nan)
        rew = np.full(len(g), np.nan)
        ctrl = g[[f"controlled_w_l{q}" for q in (1, 2, 3)]].to_numpy()
        for idx in g.groupby("episode").indices.values():
            lo, hi = idx[0], idx[-1] + 1
            obs[lo:hi] = features_from_signals(sig[lo:hi], site.latitude_deg, site.longitude_deg)
            act[lo : hi - 1] = to_unit(sig[lo + 1 : hi, 6:9], max_w)
            rew[lo : hi - 1] = reward_from_power(
                obs[lo + 1 : hi, 0:3], ctrl[lo + 1 : hi], g["changes"].to_numpy()[lo : hi - 1], weights
            )
        steps_all.append(
            (
                date,
                pa.table(
                    {
                        "second": g["second"].to_numpy(),
                        "episode": ep,
                        "obs": fixed_list(obs),
                        "actions": fixed_list(act),
                        "rewards": rew,
                    },
                    schema=STEPS_SCHEMA,
                ),
            )
        )
    seconds = np.concatenate([s["second"].to_numpy() for _, s in steps_all])
    n = len(seconds)
    cuts = (int(seconds[int(round(0.7 * n))]), int(seconds[int(round(0.85 * n))]))
    parts: dict[int, list] = {0: [], 1: [], 2: []}
    for date, steps in steps_all:
        for p, table in transitions(steps, date, 5, cuts).items():
            parts[p].append(table)
    rows = {}
    for p, name in enumerate(("train", "val", "test")):
        table = pa.concat_tables(parts[p])
        pq.write_table(table, out / f"{name}.parquet", row_group_size=262_144)
        rows[name] = table.num_rows
    return {"transitions": rows, "quarantined": quarantined}


# ------------------------------------------------------------------------------------------ measurement
def child(impl: str, raw: Path, out: Path) -> None:
    """One build in this process; imports and the JIT load of the shared kernels are timed apart."""
    t0 = time.perf_counter()
    import pandas  # noqa: F401

    from envs.state_spec import N_SIGNALS, features_from_signals
    from offline_data.build import BuildConfig, build

    features_from_signals(np.zeros((2, N_SIGNALS)), 48.0, 15.0)
    startup = time.perf_counter() - t0
    from offline_data.stages import default_workers

    workers = default_workers() if impl == "polars_workers" else 1
    t0 = time.perf_counter()
    if impl.startswith("polars"):
        m = build(raw, out, BuildConfig(), progress=False, workers=workers)
        result = {
            "transitions": m["stages"]["transitions"]["rows"],
            "quarantined": sum(c["rows_quarantined"] for c in m["counts"].values()),
            "rows_in": sum(c["rows_in"] for c in m["counts"].values()),
        }
    else:
        result = pandas_build(raw, out)
    result["seconds"] = time.perf_counter() - t0
    result["startup_seconds"] = startup
    result["workers"] = workers if impl != "pandas" else 1
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["worker_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def run_child(impl: str, raw: Path, out: Path) -> dict:
    subprocess.run(["rm", "-rf", str(out)], check=True)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", impl, "--raw", str(raw), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"{impl} build failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[0][len("RESULT ") :])


def raw_rows(raw: Path) -> int:
    return sum(sum(1 for _ in open(p, "rb")) - 1 for p in raw.glob("*/date=*/*.csv"))


def ensure_raw(work: Path, days: int, seed: int) -> Path:
    raw = work / f"raw_{days}d"
    if not (raw / "_defects").is_dir() or len(list((raw / "_defects").glob("*.jsonl"))) < days:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "scripts",
                "data",
                "generate",
                "--days",
                str(days),
                "--defects",
                "0.02",
                "--seed",
                str(seed),
                "--out",
                str(raw),
                "--quiet",
            ],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
    return raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--work",
        type=Path,
        default=Path(os.environ.get("GRIDRL_STORAGE", "/tmp")) / "bench_offline_data",
        help="folder for the generated logs (reused) and the builds",
    )
    ap.add_argument("--days", default="1,30", help="input sizes in days (default 1,30)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated logs")
    ap.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    ap.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.raw, args.out)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    report = []
    for days in (int(d) for d in args.days.split(",")):
        raw = ensure_raw(args.work, days, args.seed)
        nbytes = sum(p.stat().st_size for p in raw.glob("*/date=*/*"))
        rows = raw_rows(raw)
        res = {impl: run_child(impl, raw, args.work / f"out_{impl}_{days}d") for impl in IMPLS}
        entry = {"days": days, "raw_rows": rows, "raw_mb": round(nbytes / 2**20, 1)}
        for impl, r in res.items():
            entry[impl] = {
                "seconds": round(r["seconds"], 2),
                "rows_per_s": round(rows / r["seconds"]),
                "speedup_vs_pandas": round(res["pandas"]["seconds"] / r["seconds"], 2),
                "workers": r["workers"],
                "startup_seconds": round(r["startup_seconds"], 2),
                "peak_rss_mb": round(r["peak_rss_mb"]),
                "worker_peak_rss_mb": round(r["worker_peak_rss_mb"]),
                "transitions": r["transitions"],
                "extrapolated_40GB_hours": round(40 * 2**30 / nbytes * r["seconds"] / 3600, 2),
            }
        entry["same_transitions"] = all(
            r["transitions"] == res["pandas"]["transitions"] for r in res.values()
        )
        report.append(entry)
        print(json.dumps(entry), flush=True)
    (args.work / "bench_results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{'days':>4} {'raw MB':>7} {'raw rows':>9} {'build':>15} {'workers':>7} {'seconds':>8} "
        f"{'rows/s':>8} {'x pandas':>8} {'RSS MB':>6} {'worker RSS':>10} {'40 GB (h)':>9}"
    )
    for e in report:
        for impl in IMPLS:
            r = e[impl]
            print(
                f"{e['days']:>4} {e['raw_mb']:>7} {e['raw_rows']:>9} {impl:>15} {r['workers']:>7} "
                f"{r['seconds']:>8} {r['rows_per_s']:>8} {r['speedup_vs_pandas']:>8} {r['peak_rss_mb']:>6} "
                f"{r['worker_peak_rss_mb']:>10} {r['extrapolated_40GB_hours']:>9}"
            )
        print(f"     same transitions from every build: {e['same_transitions']}")


if __name__ == "__main__":
    main()
