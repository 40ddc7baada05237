"""Bad input, command by command: a clear refusal that names the file, field or row, and nothing the user
already has is changed (issue 21).

Every case runs the real command in this process (``scripts.cli.main``), on real files under a fresh
``home`` folder, and asserts:

* the exit status (2 for a refusal; argparse's own errors exit 2 as well);
* that stderr names what is wrong (the path, the flag or field, the row) and is not a traceback;
* that every file under ``home`` is unchanged, byte for byte, and that nothing was added beside them
  (no half-written output, no temporary folder left behind).

Per-row problems of raw logs (undecodable bytes, short and long rows, broken JSON Lines...) are not
refusals: the build quarantines the row with its original bytes, its file, its row and the reason;
``test_bad_rows_are_quarantined_with_their_bytes`` checks each of them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from envs.site import DEFAULT_SITE_PATH
from offline_data.build import BuildConfig, build
from offline_data.generate import GenerateConfig, generate
from scripts.cli import main

METER = "meter_readings/date=2025-06-01/part-0.csv"
PPO = Path(__file__).resolve().parents[1] / "rllib_configs" / "export" / "ppo.yaml"
UNWRITABLE = "/proc/gridrl-test/out"  # /proc takes no new folders, even for root


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Path]:
    """Real inputs, made once: raw logs (6 simulated minutes), their dataset, a PI bundle, another site."""
    root = tmp_path_factory.mktemp("templates")
    generate(GenerateConfig(days=1, hours=0.1, seed=2), root / "raw")
    build(root / "raw", root / "dataset", BuildConfig(), progress=False)
    assert main(["export", "--controller", "pi", "--out", str(root / "bundle")]) == 0
    other = DEFAULT_SITE_PATH.read_text().replace("name: default", "name: bigger")
    (root / "other_site.yaml").write_text(
        other.replace("max_power_per_phase_w: 7500.0", "max_power_per_phase_w: 9000.0")
    )
    return {p.name: p for p in root.iterdir()}


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` (hidden ones too) -> sha256 of its bytes, or 'dir'."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    return code, capsys.readouterr().err


@dataclass
class Ctx:
    home: Path
    t: dict[str, Path]

    def copy(self, name: str, as_: str | None = None) -> Path:
        src = self.t[name]
        dst = self.home / (as_ or name)
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
        return dst

    def file(self, name: str, text: str = "my notes\n") -> Path:
        p = self.home / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    def folder_of_mine(self, name: str) -> Path:
        self.file(f"{name}/thesis.txt", "keep me\n")
        return self.home / name


def fake_output(ctx: Ctx, name: str, entries: tuple[str, ...]) -> Path:
    """A folder holding what a previous run of a command writes (its recognised files)."""
    for e in entries:
        if "." in e:
            ctx.file(f"{name}/{e}", "{}")
        else:
            (ctx.home / name / e).mkdir(parents=True)
    return ctx.home / name


# --- the table: (id, setup(ctx) -> (argv, [fragments the message must hold])) ---
Case = tuple[str, Callable[[Ctx], tuple[list[str], list[str]]]]


def _sim(ctx, *extra, out=None):
    return [
        "simulate",
        "--controllers",
        "pi",
        "--hours",
        "0.02",
        "--out",
        str(out or ctx.home / "sim"),
        *extra,
    ]


SIMULATE: list[Case] = [
    ("out-is-a-file", lambda c: (_sim(c, out=c.file("sim.txt")), ["--out", "sim.txt", "is a file"])),
    ("out-under-a-file", lambda c: (_sim(c, out=c.file("f.txt") / "sub"), ["f.txt", "is a file"])),
    ("out-unwritable", lambda c: (_sim(c, out=UNWRITABLE), [UNWRITABLE, "cannot be"])),
    ("out-is-my-folder", lambda c: (_sim(c, out=c.folder_of_mine("mine")), ["mine", "does not hold"])),
    (
        "out-is-my-folder-force",
        lambda c: (_sim(c, "--force", out=c.folder_of_mine("mine")), ["mine", "does not hold"]),
    ),
    (
        "out-is-a-result-no-force",
        lambda c: (
            _sim(c, out=fake_output(c, "old", ("metrics.json", "traces", "day_000.png"))),
            ["--force"],
        ),
    ),
    ("hours-zero", lambda c: (_sim(c, "--hours", "0"), ["--hours", "0"])),
    ("hours-30", lambda c: (_sim(c, "--hours", "30"), ["--hours", "30"])),
    ("hours-nan", lambda c: (_sim(c, "--hours", "nan"), ["--hours"])),
    ("start-h-negative", lambda c: (_sim(c, "--start-h", "-1"), ["--start-h"])),
    (
        "window-past-midnight",
        lambda c: (_sim(c, "--start-h", "23", "--hours", "2"), ["--start-h", "--hours"]),
    ),
    ("days-zero", lambda c: (_sim(c, "--days", "0"), ["--days"])),
    ("days-not-a-number", lambda c: (_sim(c, "--days", "two"), ["--days", "two"])),
    ("seed-negative", lambda c: (_sim(c, "--seed", "-1"), ["--seed"])),
    (
        "unknown-controller",
        lambda c: (["simulate", "--controllers", "pi,magic", "--out", str(c.home / "s")], ["magic"]),
    ),
    (
        "no-controller",
        lambda c: (["simulate", "--controllers", ",", "--out", str(c.home / "s")], ["--controllers"]),
    ),
    ("unknown-scenario", lambda c: (_sim(c, "--scenario", "foggy"), ["--scenario", "foggy"])),
    ("site-missing", lambda c: (_sim(c, "--site", str(c.home / "nope.yaml")), ["nope.yaml", "not found"])),
    (
        "failed-run-removes-new-parents",
        lambda c: (
            _sim(c, "--site", str(c.home / "nope.yaml"), out=c.home / "new" / "deeper" / "sim"),
            ["nope.yaml"],
        ),
    ),
    (
        "site-unknown-key",
        lambda c: (
            _sim(c, "--site", str(c.file("s.yaml", DEFAULT_SITE_PATH.read_text() + "bogus: 1\n"))),
            ["s.yaml", "bogus"],
        ),
    ),
]


def _gen(ctx, *extra, out=None):
    return ["data", "generate", "--hours", "0.05", "--quiet", "--out", str(out or ctx.home / "raw"), *extra]


def _other_logs(c: Ctx) -> Path:
    """The user's raw folder holds 2025-06-01 generated with seed 2: seed 0 would overwrite it."""
    return c.copy("raw")


GENERATE: list[Case] = [
    ("out-is-a-file", lambda c: (_gen(c, out=c.file("raw.txt")), ["--out", "raw.txt", "is a file"])),
    ("out-unwritable", lambda c: (_gen(c, out=UNWRITABLE), [UNWRITABLE, "cannot be"])),
    (
        "out-is-my-folder",
        lambda c: (_gen(c, out=c.folder_of_mine("mine")), ["mine", "does not hold raw logs"]),
    ),
    ("out-is-a-dataset", lambda c: (_gen(c, out=c.copy("dataset")), ["dataset", "does not hold raw logs"])),
    (
        "another-site",
        lambda c: (
            _gen(c, "--site", str(c.copy("other_site.yaml")), out=c.copy("raw")),
            ["site.yaml", "'default'", "'bigger'", "other_site.yaml"],
        ),
    ),
    (
        "logs-without-site-another-site",
        lambda c: (_raw_without_site(c), ["without site.yaml", "'default'", "'bigger'"]),
    ),
    (
        "a-day-held-with-other-logs",
        lambda c: (_gen(c, "--hours", "0.1", out=_other_logs(c)), [METER, "2025-06-01", "--force"]),
    ),
    (
        "another-format-same-day",
        lambda c: (
            _gen(c, "--hours", "0.1", "--seed", "2", "--format", "jsonl", out=c.copy("raw")),
            ["part-0.csv", "--force"],
        ),
    ),
    ("unknown-scenario", lambda c: (_gen(c, "--scenario", "foggy"), ["--scenario", "foggy"])),
    ("hours-zero", lambda c: (_gen(c, "--hours", "0"), ["--hours"])),
    ("hours-30", lambda c: (_gen(c, "--hours", "30"), ["--hours"])),
    ("start-hour-25", lambda c: (_gen(c, "--start-hour", "25"), ["--start-hour"])),
    (
        "window-past-midnight",
        lambda c: (_gen(c, "--start-hour", "23", "--hours", "2"), ["--start-hour", "does not fit"]),
    ),
    (
        "start-date-not-a-date",
        lambda c: (_gen(c, "--start-date", "2025-02-30"), ["--start-date", "2025-02-30"]),
    ),
    ("start-date-2024", lambda c: (_gen(c, "--start-date", "2024-12-31"), ["--start-date", "2025"])),
    (
        "days-past-2025",
        lambda c: (_gen(c, "--start-date", "2025-12-31", "--days", "2"), ["--start-date", "2025"]),
    ),
    ("defects-0.5", lambda c: (_gen(c, "--defects", "0.5"), ["--defects"])),
    ("days-zero", lambda c: (_gen(c, "--days", "0"), ["--days"])),
    ("format-xml", lambda c: (_gen(c, "--format", "xml"), ["--format", "xml"])),
    ("seed-negative", lambda c: (_gen(c, "--seed", "-1"), ["--seed"])),
    ("unknown-controller", lambda c: (_gen(c, "--controller", "magic"), ["--controller", "magic"])),
    (
        "dither-flag-for-the-plain-pi",
        lambda c: (_gen(c, "--dither-residual", "100"), ["--dither-residual", "dithered_pi"]),
    ),
    (
        "dither-gains-above-one",
        lambda c: (_gen(c, "--controller", "dithered_pi", "--dither-gains", "1.2,1.5"), ["--dither-gains"]),
    ),
    (
        "dither-residual-too-large",
        lambda c: (
            _gen(c, "--controller", "dithered_pi", "--dither-residual", "5000"),
            ["--dither-residual"],
        ),
    ),
    (
        "dither-hold-not-a-pair",
        lambda c: (_gen(c, "--controller", "dithered_pi", "--dither-hold", "5"), ["--dither-hold", "'5'"]),
    ),
    (
        "dither-hold-reversed",
        lambda c: (_gen(c, "--controller", "dithered_pi", "--dither-hold", "30,5"), ["--dither-hold"]),
    ),
    (
        "site-not-yaml",
        lambda c: (_gen(c, "--site", str(c.file("s.yaml", "name: [unclosed\n"))), ["s.yaml", "YAML"]),
    ),
]


def _raw_without_site(c: Ctx) -> list[str]:
    raw = c.copy("raw")
    (raw / "site.yaml").unlink()
    return _gen(c, "--site", str(c.copy("other_site.yaml")), out=raw)


def _build(ctx, *extra, raw=None, out=None):
    raw, out = raw or ctx.home / "raw", out or ctx.home / "ds"
    return ["data", "build", "--quiet", "--raw", str(raw), "--out", str(out), *extra]


def _raw_edit(c: Ctx, fn) -> Path:
    raw = c.copy("raw")
    fn(raw)
    return raw


def _every_row_too_long(raw: Path) -> None:
    path = raw / METER
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], *(line + ",1" for line in lines[1:])]) + "\n")


def _builds(ctx, *raws: Path) -> list[str]:
    """``gridrl data build`` of several raw folders."""
    return ["data", "build", "--quiet", "--raw", *map(str, raws), "--out", str(ctx.home / "ds")]


def _two_versions_of_a_day(c: Ctx) -> list[str]:
    """A second folder holds the same day's meter file with one row less: another version of it."""
    raw, raw2 = c.copy("raw"), c.copy("raw", "raw2")
    lines = (raw2 / METER).read_text().splitlines(keepends=True)
    (raw2 / METER).write_text("".join(lines[:-1]))
    return _builds(c, raw, raw2)


def _folders_of_two_sites(c: Ctx) -> list[str]:
    raw, raw2 = c.copy("raw"), c.copy("raw", "raw2")
    shutil.copyfile(c.t["other_site.yaml"], raw2 / "site.yaml")
    return _builds(c, raw, raw2)


def _serve_log_folder(c: Ctx) -> Path:
    """The top of a Serve log folder (decisions/ and raw/<site>/), where its raw/<site> was meant."""
    logs = c.home / "logs"
    c.file("logs/decisions/date=2025-06-01/part-r1.parquet", "not read")
    shutil.copytree(c.t["raw"], logs / "raw" / "sim-site")
    return logs


def _dataset_of_another_site(c: Ctx) -> list[str]:
    raw, ds = c.copy("raw"), c.copy("dataset")
    shutil.copyfile(c.t["other_site.yaml"], raw / "site.yaml")
    return _build(c, raw=raw, out=ds)


BUILD: list[Case] = [
    (
        "out-is-a-file",
        lambda c: (_build(c, raw=c.copy("raw"), out=c.file("ds.txt")), ["--out", "ds.txt", "is a file"]),
    ),
    ("out-unwritable", lambda c: (_build(c, raw=c.copy("raw"), out=UNWRITABLE), [UNWRITABLE, "cannot be"])),
    (
        "out-is-my-folder",
        lambda c: (
            _build(c, raw=c.copy("raw"), out=c.folder_of_mine("mine")),
            ["mine", "does not hold a gridrl dataset"],
        ),
    ),
    (
        "out-is-the-raw-folder",
        lambda c: (
            _build(c, raw=c.copy("raw"), out=c.home / "raw"),
            ["raw", "does not hold a gridrl dataset"],
        ),
    ),
    (
        "out-is-a-bundle",
        lambda c: (
            _build(c, raw=c.copy("raw"), out=c.copy("bundle")),
            ["bundle", "does not hold a gridrl dataset"],
        ),
    ),
    (
        "dataset-of-another-site",
        lambda c: (_dataset_of_another_site(c), ["'default'", "'bigger'", "--force"]),
    ),
    ("raw-missing", lambda c: (_build(c, raw=c.home / "nope"), ["nope", "not found"])),
    ("raw-is-a-file", lambda c: (_build(c, raw=c.file("raw.txt")), ["raw.txt", "is a file"])),
    ("raw-is-empty", lambda c: (_build(c, raw=c.folder_of_mine("empty")), ["empty", "no partitions"])),
    ("raw-second-missing", lambda c: (_builds(c, c.copy("raw"), c.home / "nope"), ["nope", "not found"])),
    (
        "raw-two-versions-of-a-day",
        lambda c: (_two_versions_of_a_day(c), [f"raw2/{METER}", f"raw/{METER}", "another version"]),
    ),
    ("raw-folders-of-two-sites", lambda c: (_folders_of_two_sites(c), ["raw2", "'bigger'", "'default'"])),
    ("raw-is-a-dataset", lambda c: (_build(c, raw=c.copy("dataset")), ["dataset", "is a gridrl dataset"])),
    (
        "raw-is-a-serve-log-folder",
        lambda c: (_build(c, raw=_serve_log_folder(c)), ["logs", "Serve decision-log", "raw/sim-site"]),
    ),
    (
        "partition-not-a-date",
        lambda c: (
            _build(
                c,
                raw=_raw_edit(
                    c,
                    lambda r: shutil.copytree(
                        r / "meter_readings/date=2025-06-01", r / "meter_readings/date=2025-13-45"
                    ),
                ),
            ),
            ["date=2025-13-45", "not date=YYYY-MM-DD"],
        ),
    ),
    (
        "partition-is-a-file",
        lambda c: (
            _build(c, raw=_raw_edit(c, lambda r: (r / "pi_state/date=2025-06-02").write_text("x"))),
            ["pi_state/date=2025-06-02", "is a file"],
        ),
    ),
    (
        "stream-is-a-file",
        lambda c: (
            _build(
                c,
                raw=_raw_edit(c, lambda r: (shutil.rmtree(r / "pi_state"), (r / "pi_state").write_text("x"))),
            ),
            ["pi_state", "is a file"],
        ),
    ),
    (
        "missing-column",
        lambda c: (
            _build(
                c,
                raw=_raw_edit(
                    c, lambda r: pl.read_csv(r / METER, infer_schema=False).drop("seq").write_csv(r / METER)
                ),
            ),
            [METER, "'seq'", "missing column"],
        ),
    ),
    (
        "empty-file",
        lambda c: (_build(c, raw=_raw_edit(c, lambda r: (r / METER).write_text(""))), [METER, "empty"]),
    ),
    (
        "header-not-utf8",
        lambda c: (
            _build(
                c,
                raw=_raw_edit(
                    c, lambda r: (r / METER).write_bytes(b"ts,s\xffq\n" + (r / METER).read_bytes())
                ),
            ),
            [METER, "header", "UTF-8"],
        ),
    ),
    (
        "parquet-not-parquet",
        lambda c: (
            _build(
                c,
                raw=_raw_edit(
                    c, lambda r: (r / METER.replace(".csv", ".parquet")).write_bytes(b"PAR1 not really")
                ),
            ),
            ["part-0.parquet", "Parquet"],
        ),
    ),
    (
        "every-row-too-long",
        lambda c: (_build(c, raw=_raw_edit(c, _every_row_too_long)), ["too_many_fields", METER, "row 0"]),
    ),
    ("split-two-parts", lambda c: (_build(c, "--split", "0.5,0.5", raw=c.copy("raw")), ["--split"])),
    ("split-not-numbers", lambda c: (_build(c, "--split", "a,b,c", raw=c.copy("raw")), ["--split", "a,b,c"])),
    ("lookahead-zero", lambda c: (_build(c, "--lookahead", "0", raw=c.copy("raw")), ["--lookahead"])),
    ("min-episode-one", lambda c: (_build(c, "--min-episode", "1", raw=c.copy("raw")), ["--min-episode"])),
    (
        "staleness-negative",
        lambda c: (_build(c, "--max-meter-staleness", "-1", raw=c.copy("raw")), ["--max-meter-staleness"]),
    ),
    ("workers-negative", lambda c: (_build(c, "--workers", "-1", raw=c.copy("raw")), ["--workers"])),
    ("seed-negative", lambda c: (_build(c, "--seed", "-2", raw=c.copy("raw")), ["--seed"])),
    (
        "config-unknown-key",
        lambda c: (
            _build(c, "--config", str(c.file("b.yaml", "lookahed: 3\n")), raw=c.copy("raw")),
            ["b.yaml", "lookahed"],
        ),
    ),
    (
        "config-negative-staleness",
        lambda c: (
            _build(
                c, "--config", str(c.file("b.yaml", "align: {max_pi_staleness_s: -1}\n")), raw=c.copy("raw")
            ),
            ["b.yaml", "max_pi_staleness_s"],
        ),
    ),
    (
        "site-missing",
        lambda c: (_build(c, "--site", str(c.home / "nope.yaml"), raw=c.copy("raw")), ["nope.yaml"]),
    ),
]


def _export(ctx, *extra, out=None):
    return ["export", "--controller", "pi", "--out", str(out or ctx.home / "bundle"), *extra]


EXPORT: list[Case] = [
    ("out-is-a-file", lambda c: (_export(c, out=c.file("b.txt")), ["--out", "b.txt", "is a file"])),
    ("out-unwritable", lambda c: (_export(c, out=UNWRITABLE), [UNWRITABLE, "cannot be"])),
    (
        "out-is-my-folder",
        lambda c: (_export(c, out=c.folder_of_mine("mine")), ["mine", "does not hold a gridrl bundle"]),
    ),
    (
        "out-is-my-folder-force",
        lambda c: (
            _export(c, "--force", out=c.folder_of_mine("mine")),
            ["mine", "does not hold a gridrl bundle"],
        ),
    ),
    (
        "out-is-a-dataset-force",
        lambda c: (
            _export(c, "--force", out=c.copy("dataset")),
            ["dataset", "does not hold a gridrl bundle"],
        ),
    ),
    ("out-is-a-bundle-no-force", lambda c: (_export(c, out=c.copy("bundle")), ["bundle", "--force"])),
    (
        "checkpoint-missing",
        lambda c: (["export", "--checkpoint", str(c.home / "ckpt"), "--out", str(c.home / "b")], ["ckpt"]),
    ),
    (
        "unknown-controller",
        lambda c: (["export", "--controller", "mpc", "--out", str(c.home / "b")], ["--controller", "mpc"]),
    ),
    (
        "safety-unknown-key",
        lambda c: (_export(c, "--safety", str(c.file("l.yaml", "max_rate: 5\n"))), ["l.yaml", "max_rate"]),
    ),
    (
        "safety-not-a-mapping",
        lambda c: (_export(c, "--safety", str(c.file("l.yaml", "- 1\n"))), ["l.yaml", "mapping"]),
    ),
    (
        "metrics-with-a-baseline",
        lambda c: (_export(c, "--metrics", str(c.file("m.json", "{}"))), ["--metrics"]),
    ),
    (
        "metrics-not-json",
        lambda c: (
            [
                "export",
                "--checkpoint",
                str(c.home),
                "--metrics",
                str(c.file("m.json", "{oops")),
                "--out",
                str(c.home / "b"),
            ],
            ["m.json", "JSON"],
        ),
    ),
    (
        "parity-states-zero",
        lambda c: (
            ["export", "--checkpoint", "x", "--parity-states", "0", "--out", "b"],
            ["--parity-states"],
        ),
    ),
    ("seed-negative", lambda c: (_export(c, "--seed", "-1"), ["--seed"])),
    ("site-missing", lambda c: (_export(c, "--site", str(c.home / "nope.yaml")), ["nope.yaml"])),
]


def _edge(ctx, *extra, bundle=None, out=None):
    bundle, out = bundle or ctx.copy("bundle"), out or ctx.home / "edge"
    return ["edge", "--bundle", str(bundle), "--hours", "0.02", "--out", str(out), *extra]


def _tampered_bundle(c: Ctx) -> Path:
    b = c.copy("bundle")
    m = json.loads((b / "manifest.json").read_text())
    m["safety"]["max_rate_w_per_s"] = 1e9
    (b / "manifest.json").write_text(json.dumps(m))
    return b


EDGE: list[Case] = [
    ("out-is-a-file", lambda c: (_edge(c, out=c.file("e.txt")), ["--out", "e.txt", "is a file"])),
    ("out-unwritable", lambda c: (_edge(c, out=UNWRITABLE), [UNWRITABLE, "cannot be"])),
    (
        "out-is-my-folder",
        lambda c: (
            _edge(c, out=c.folder_of_mine("mine")),
            ["mine", "does not hold the results of gridrl edge"],
        ),
    ),
    (
        "out-is-a-simulate-result-force",
        lambda c: (
            _edge(c, "--force", out=fake_output(c, "sim", ("metrics.json", "traces", "day_000.png"))),
            ["sim", "does not hold"],
        ),
    ),
    (
        "out-is-a-result-no-force",
        lambda c: (
            _edge(c, out=fake_output(c, "old", ("metrics.json", "checks.json", "decisions.jsonl"))),
            ["old", "--force"],
        ),
    ),
    ("bundle-missing", lambda c: (_edge(c, bundle=c.home / "nope"), [str(Path("nope") / "manifest.json")])),
    ("bundle-tampered", lambda c: (_edge(c, bundle=_tampered_bundle(c)), ["manifest"])),
    (
        "site-other-power-limit",
        lambda c: (
            _edge(c, "--site", str(c.copy("other_site.yaml"))),
            ["other_site.yaml", "max_power_per_phase_w"],
        ),
    ),
    ("days-zero", lambda c: (_edge(c, "--days", "0"), ["--days"])),
    ("hours-zero", lambda c: (_edge(c, "--hours", "0"), ["--hours"])),
    (
        "window-past-midnight",
        lambda c: (_edge(c, "--start-h", "23", "--hours", "2"), ["--start-h", "--hours"]),
    ),
    ("log-max-mb-zero", lambda c: (_edge(c, "--log-max-mb", "0"), ["--log-max-mb"])),
    ("log-backups-negative", lambda c: (_edge(c, "--log-backups", "-1"), ["--log-backups"])),
    ("seed-negative", lambda c: (_edge(c, "--seed", "-1"), ["--seed"])),
]


def _train(ctx, *extra, config=PPO):
    return ["train", "--config", str(config), "--storage-path", str(ctx.home / "runs"), *extra]


TRAIN: list[Case] = [
    ("stop-iters-zero", lambda c: (_train(c, "--stop-iters", "0"), ["--stop-iters", "0"])),
    ("stop-iters-negative", lambda c: (_train(c, "--stop-iters", "-3"), ["--stop-iters", "-3"])),
    ("stop-timesteps-zero", lambda c: (_train(c, "--stop-timesteps", "0"), ["--stop-timesteps"])),
    ("time-budget-negative", lambda c: (_train(c, "--time-budget", "-5"), ["--time-budget"])),
    ("checkpoint-every-zero", lambda c: (_train(c, "--checkpoint-every", "0"), ["--checkpoint-every"])),
    ("num-cpus-zero", lambda c: (_train(c, "--num-cpus", "0"), ["--num-cpus"])),
    ("seed-negative", lambda c: (_train(c, "--seed", "-1"), ["--seed"])),
    (
        "unknown-domain",
        lambda c: (
            _train(c, config=c.file("ppo.yaml", PPO.read_text().replace("domain: export", "domain: exprot"))),
            ["ppo.yaml", "gridrl.domain", "exprot"],
        ),
    ),
    (
        "eval-days-zero",
        lambda c: (
            _train(
                c,
                config=c.file(
                    "ppo.yaml", PPO.read_text().replace("{domain: export}", "{domain: export, eval_days: 0}")
                ),
            ),
            ["ppo.yaml", "gridrl.eval_days"],
        ),
    ),
    ("config-missing", lambda c: (_train(c, config=c.home / "nope.yaml"), ["nope.yaml", "not found"])),
]


def _eval(ctx, *extra, out=None):
    ckpt = ctx.home / "no-checkpoint"
    return ["evaluate", "--checkpoint", str(ckpt), "--out", str(out or ctx.home / "eval"), *extra]


EVALUATE: list[Case] = [
    ("out-is-a-file", lambda c: (_eval(c, out=c.file("e.txt")), ["--out", "e.txt", "is a file"])),
    ("out-unwritable", lambda c: (_eval(c, out=UNWRITABLE), [UNWRITABLE, "cannot be"])),
    ("out-is-my-folder", lambda c: (_eval(c, out=c.folder_of_mine("mine")), ["mine", "does not hold"])),
    (
        "out-is-a-result-no-force",
        lambda c: (
            _eval(c, out=fake_output(c, "old", ("metrics.json", "cumulative_export.png"))),
            ["--force"],
        ),
    ),
    ("checkpoint-missing", lambda c: (_eval(c), ["no-checkpoint"])),
    (
        "model-without-dataset",
        lambda c: (
            _eval(c, "--model", str(c.home), out=fake_output(c, "old", ("model_based.json",))),
            ["--model", "--dataset"],
        ),
    ),
    ("days-zero", lambda c: (_eval(c, "--days", "0"), ["--days"])),
    ("hours-zero", lambda c: (_eval(c, "--hours", "0"), ["--hours"])),
    (
        "window-past-midnight",
        lambda c: (_eval(c, "--start-h", "23", "--hours", "2"), ["--start-h", "--hours"]),
    ),
    ("unknown-scenario", lambda c: (_eval(c, "--scenario", "foggy"), ["--scenario", "foggy"])),
    ("windows-zero", lambda c: (_eval(c, "--windows", "0"), ["--windows"])),
    ("seed-negative", lambda c: (_eval(c, "--seed", "-1"), ["--seed"])),
]


TUNE_SWEEP = Path(__file__).resolve().parents[1] / "tune" / "export" / "ppo.yaml"


def _tune(ctx, *extra, config=TUNE_SWEEP):
    return ["tune", "--config", str(config), "--storage-path", str(ctx.home / "sweeps"), *extra]


TUNE: list[Case] = [
    ("num-samples-zero", lambda c: (_tune(c, "--num-samples", "0"), ["--num-samples"])),
    ("max-concurrent-zero", lambda c: (_tune(c, "--max-concurrent", "0"), ["--max-concurrent"])),
    ("stop-iters-zero", lambda c: (_tune(c, "--stop-iters", "0"), ["--stop-iters"])),
    ("seed-negative", lambda c: (_tune(c, "--seed", "-1"), ["--seed"])),
    ("num-cpus-zero", lambda c: (_tune(c, "--num-cpus", "0"), ["--num-cpus"])),
    ("sweep-missing", lambda c: (_tune(c, config=c.home / "nope.yaml"), ["nope.yaml", "not found"])),
]


def _pipeline(ctx, *extra, out=None):
    return ["pipeline", "--out", str(out or ctx.home / "pipe"), *extra]


PIPELINE: list[Case] = [
    ("out-is-a-file", lambda c: (_pipeline(c, out=c.file("p.txt")), ["--out", "p.txt", "is a file"])),
    ("out-under-a-file", lambda c: (_pipeline(c, out=c.file("q.txt") / "run"), ["q.txt", "is a file"])),
    ("out-not-empty", lambda c: (_pipeline(c, out=c.folder_of_mine("mine")), ["mine", "not empty"])),
    ("seed-negative", lambda c: (_pipeline(c, "--seed", "-1"), ["--seed"])),
    ("num-cpus-zero", lambda c: (_pipeline(c, "--num-cpus", "0"), ["--num-cpus"])),
    ("profile-unknown", lambda c: (_pipeline(c, "--profile", "huge"), ["--profile", "huge"])),
]


def _retrain(ctx, *extra, bundle=None, logs=None, dataset=None, out=None):
    """``gridrl retrain`` on the templates: a PI bundle (it records no checkpoint), the raw logs as new logs,
    their dataset (the default site throughout)."""
    return [
        "retrain", "--bundle", str(bundle or ctx.copy("bundle")), "--logs", str(logs or ctx.copy("raw")),
        "--dataset", str(dataset or ctx.copy("dataset")), "--out", str(out or ctx.home / "rt"), *extra,
    ]  # fmt: skip


def _logs_of_another_site(c: Ctx) -> Path:
    raw = c.copy("raw", "new_logs")
    shutil.copyfile(c.t["other_site.yaml"], raw / "site.yaml")
    return raw


def _dataset_built_for_another_site(c: Ctx) -> Path:
    raw = c.copy("raw", "raw_big")
    shutil.copyfile(c.t["other_site.yaml"], raw / "site.yaml")
    build(raw, c.home / "ds_big", BuildConfig(), progress=False)
    return c.home / "ds_big"


RETRAIN: list[Case] = [
    (
        "bundle-records-no-checkpoint",
        lambda c: (_retrain(c), [str(c.home / "bundle" / "manifest.json"), "controller pi",
                                 "--policy-checkpoint"]),
    ),
    (
        "bundle-not-a-bundle",
        lambda c: (_retrain(c, bundle=c.folder_of_mine("mine")), ["--bundle", "mine", "manifest.json"]),
    ),
    ("logs-missing", lambda c: (_retrain(c, logs=c.home / "nope"), ["--logs", "nope", "not found"])),
    ("logs-a-dataset", lambda c: (_retrain(c, logs=c.copy("dataset", "d2")), ["d2", "is a gridrl dataset"])),
    (
        "logs-of-another-site",
        lambda c: (_retrain(c, logs=_logs_of_another_site(c)),
                   ["--logs", "new_logs", "'bigger'", "ds", "'default'"]),
    ),
    (
        "dataset-of-another-site",
        lambda c: (_retrain(c, dataset=_dataset_built_for_another_site(c)),
                   ["--dataset", "ds_big", "'bigger'", "bundle", "manifest.json", "max_power_per_phase_w"]),
    ),
    (
        "dataset-not-a-dataset",
        lambda c: (_retrain(c, dataset=c.folder_of_mine("nods")), ["nods", "not a gridrl dataset"]),
    ),
    (
        "policy-checkpoint-not-a-run",
        lambda c: (_retrain(c, "--policy-checkpoint", str(c.folder_of_mine("ckpt")),
                            "--model-checkpoint", str(c.home / "ckpt")),
                   ["ckpt", "not an RLlib checkpoint", "--policy-checkpoint"]),
    ),
    ("policy-set-malformed", lambda c: (_retrain(c, "--policy-set", "lr"), ["--policy-set", "'lr'", "KEY="])),
    ("out-not-empty", lambda c: (_retrain(c, out=c.folder_of_mine("mine")), ["--out", "mine", "not empty"])),
    ("out-is-a-file", lambda c: (_retrain(c, out=c.file("r.txt")), ["--out", "r.txt", "is a file"])),
    (
        "validation-window-past-midnight",
        lambda c: (_retrain(c, "--val-start-hour", "23", "--val-hours", "2"),
                   ["--val-start-hour", "--val-hours"]),
    ),
]  # fmt: skip

CITYLEARN: list[Case] = [
    (
        "evaluate-out-is-a-file",
        lambda c: (["citylearn", "evaluate", "--schema", str(c.home / "nope"), "--out", str(c.file("k.txt"))],
                   ["--out", "k.txt", "is a file"]),
    ),
    (
        "build-schema-out-is-a-file",
        lambda c: (["citylearn", "build-schema", "--out", str(c.file("s.txt"))], ["--out", "s.txt", "is a file"]),
    ),
    (
        "evaluate-schema-missing",
        lambda c: (["citylearn", "evaluate", "--schema", str(c.home / "nope"), "--out", str(c.home / "ev")],
                   ["schema", "nope"]),
    ),
    (
        "build-schema-site-missing",
        lambda c: (["citylearn", "build-schema", "--site", str(c.home / "no.yaml"), "--out", str(c.home / "s")],
                   ["no.yaml", "not found"]),
    ),
]  # fmt: skip


def _bench(ctx, *extra, out=None):
    ckpt = ctx.home / "no-checkpoint"
    return ["benchmark", "--checkpoint", str(ckpt), "--out", str(out or ctx.home / "bench"), *extra]


BENCHMARK: list[Case] = [
    ("out-is-a-file", lambda c: (_bench(c, out=c.file("b.txt")), ["--out", "b.txt", "is a file"])),
    ("out-is-my-folder", lambda c: (_bench(c, out=c.folder_of_mine("mine")), ["mine", "does not hold"])),
    (
        "out-is-a-result-no-force",
        lambda c: (_bench(c, out=fake_output(c, "old", ("benchmark.json",))), ["--force"]),
    ),
    ("checkpoint-missing", lambda c: (_bench(c), ["no-checkpoint"])),
    ("sites-negative", lambda c: (_bench(c, "--sites", "-1"), ["--sites"])),
    ("days-zero", lambda c: (_bench(c, "--days", "0"), ["--days"])),
    ("window-past-midnight", lambda c: (_bench(c, "--start-h", "20", "--hours", "6"), ["--start-h", "--hours"])),
    ("unknown-scenario", lambda c: (_bench(c, "--scenarios", "clear,foggy"), ["--scenarios", "foggy"])),
    ("seed-negative", lambda c: (_bench(c, "--seed", "-1"), ["--seed"])),
]


def _eval_model(ctx, *extra, out=None):
    ds, ckpt = str(ctx.home / "no-dataset"), str(ctx.home / "no-model")
    out = out or ctx.home / "em"
    return ["evaluate-model", "--checkpoint", ckpt, "--dataset", ds, "--out", str(out), *extra]


EVALUATE_MODEL: list[Case] = [
    ("out-is-a-file", lambda c: (_eval_model(c, out=c.file("e.txt")), ["--out", "e.txt", "is a file"])),
    ("out-is-my-folder", lambda c: (_eval_model(c, out=c.folder_of_mine("mine")), ["mine", "does not hold"])),
    (
        "out-is-a-result-no-force",
        lambda c: (_eval_model(c, out=fake_output(c, "old", ("model_metrics.json",))), ["--force"]),
    ),
    ("checkpoint-missing", lambda c: (_eval_model(c), ["no-model"])),
    ("rollouts-zero", lambda c: (_eval_model(c, "--rollouts", "0"), ["--rollouts"])),
    ("sim-hours-30", lambda c: (_eval_model(c, "--sim-hours", "30"), ["--sim-hours"])),
    (
        "sim-window-past-midnight",
        lambda c: (
            _eval_model(c, "--sim-start-h", "20", "--sim-hours", "6"), ["--sim-start-h", "--sim-hours"]
        ),
    ),
    ("split-unknown", lambda c: (_eval_model(c, "--split", "holdout"), ["--split", "holdout"])),
]

def _serve(ctx, *extra, bundle=None):
    bundle = bundle or ctx.copy("bundle")
    return ["serve", "--bundle", str(bundle), "--log-dir", str(ctx.home / "log"), *extra]


SERVE: list[Case] = [  # refused before Ray starts
    ("bundle-missing", lambda c: (_serve(c, bundle=c.home / "nope"), [str(Path("nope") / "manifest.json")])),
    ("bundle-tampered", lambda c: (_serve(c, bundle=_tampered_bundle(c)), ["manifest"])),
    ("mode-unknown", lambda c: (_serve(c, "--mode", "live"), ["--mode", "live"])),
    ("rollout-pct-150", lambda c: (_serve(c, "--rollout-pct", "150"), ["--rollout-pct", "150"])),
    ("port-70000", lambda c: (_serve(c, "--port", "70000"), ["--port", "70000"])),
    ("replicas-zero", lambda c: (_serve(c, "--replicas", "0"), ["--replicas"])),
    ("num-cpus-zero", lambda c: (_serve(c, "--num-cpus", "0"), ["--num-cpus"])),
    ("simulate-hours-zero", lambda c: (_serve(c, "--simulate-hours", "0"), ["--simulate-hours"])),
    ("scenario-unknown", lambda c: (_serve(c, "--scenario", "foggy"), ["--scenario", "foggy"])),
    ("start-hour-25", lambda c: (_serve(c, "--start-hour", "25"), ["--start-hour"])),
    ("seed-negative", lambda c: (_serve(c, "--seed", "-1"), ["--seed"])),
    (
        "config-unknown-key",
        lambda c: (_serve(c, "--config", str(c.file("s.yaml", "max_bundle: 3\n"))), ["s.yaml", "max_bundle"]),
    ),
    (
        "config-max-bundles-zero",
        lambda c: (_serve(c, "--config", str(c.file("s.yaml", "max_bundles: 0\n"))), ["max_bundles"]),
    ),
    (
        "config-site-id-bad",
        lambda c: (
            _serve(c, "--config", str(c.file("s.yaml", "sites: {'bad site': {mode: shadow}}\n"))),
            ["sites", "bad site"],
        ),
    ),
]

TABLE = [
    pytest.param(command, setup, id=f"{command}:{name}")
    for command, cases in (
        ("simulate", SIMULATE),
        ("data-generate", GENERATE),
        ("data-build", BUILD),
        ("export", EXPORT),
        ("edge", EDGE),
        ("train", TRAIN),
        ("evaluate", EVALUATE),
        ("evaluate-model", EVALUATE_MODEL),
        ("benchmark", BENCHMARK),
        ("tune", TUNE),
        ("pipeline", PIPELINE),
        ("retrain", RETRAIN),
        ("citylearn", CITYLEARN),
        ("serve", SERVE),
    )  # fmt: skip
    for name, setup in cases
]


@pytest.mark.parametrize("command, setup", TABLE)
def test_bad_input_is_refused_and_changes_nothing(command, setup, templates, tmp_path, capsys):
    ctx = Ctx(tmp_path / "home", templates)
    ctx.home.mkdir()
    argv, fragments = setup(ctx)
    before = tree(ctx.home)
    code, err = run_cli(argv, capsys)
    assert code == 2, f"exit {code}; stderr: {err[-1500:]}"
    assert "Traceback" not in err, err
    message = err[err.rfind("\ngridrl ") + 1 :]  # the error itself (argparse prints its usage above it)
    print(f"{command}: {message}")
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not named in: {message}"
    assert tree(ctx.home) == before, "the refused run changed or added files"


def test_the_table_covers_every_command():
    commands = {p.values[0] for p in TABLE}
    assert commands == {
        "simulate", "data-generate", "data-build", "export", "edge", "train", "evaluate", "evaluate-model",
        "benchmark", "tune", "pipeline", "retrain", "citylearn", "serve",
    }  # fmt: skip
    assert len(TABLE) >= 100


# --- per-row problems: quarantined with the original bytes, the file, the row and the reason ---

CSV_ROWS = {  # data row -> (what is written instead, reason)
    3: (lambda line: line.replace(b"2025", b"20\xff5", 1), "bad_encoding"),
    5: (lambda line: line + b",999", "too_many_fields"),
    7: (lambda line: line.rsplit(b",", 1)[0], "too_few_fields"),
    9: (lambda line: b"", "too_few_fields"),
    11: (lambda line: b'"' + line, "malformed_row"),
    13: (lambda line: line + b",", "too_many_fields"),
}
JSONL_ROWS = {
    2: (lambda line: line[: len(line) // 2], "not_json"),
    4: (lambda line: line.replace(b"2025", b"\xfe\xff25", 1), "bad_encoding"),
    6: (lambda line: b"[1, 2, 3]", "not_json"),
    8: (lambda line: b"", "not_json"),
}


def _corrupt(path: Path, rows: dict, header: bool) -> dict[int, bytes]:
    lines = path.read_bytes().split(b"\n")
    written = {}
    for row, (fn, _) in rows.items():
        i = row + int(header)
        lines[i] = written[row] = fn(lines[i])
    path.write_bytes(b"\n".join(lines))
    return written


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_bad_rows_are_quarantined_with_their_bytes(fmt, tmp_path, capsys):
    raw = tmp_path / "raw"
    generate(GenerateConfig(days=1, hours=0.1, seed=2, fmt=fmt), raw)
    stream, rows = ("meter_readings", CSV_ROWS) if fmt == "csv" else ("pi_state", JSONL_ROWS)
    rel = f"{stream}/date=2025-06-01/part-0.{fmt}"
    written = _corrupt(raw / rel, rows, header=fmt == "csv")
    before = tree(raw)
    code, err = run_cli(
        ["data", "build", "--quiet", "--raw", str(raw), "--out", str(tmp_path / "ds")], capsys
    )
    assert code == 0, err
    assert tree(raw) == before
    q = pl.read_parquet(tmp_path / "ds" / "quarantine" / stream / "date=2025-06-01.parquet")
    got = {r["row"]: r for r in q.iter_rows(named=True)}
    for row, (_, reason) in rows.items():
        assert got[row]["file"] == rel and got[row]["reason"] == reason, (row, got.get(row))
        assert got[row]["line"] == written[row], row  # the original bytes, undecodable ones included
    assert set(got) == set(rows), "only the broken rows are quarantined"
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    c = m["counts"][stream]
    assert c["rows_quarantined"] == len(rows) and c["rows_in"] == c["rows_used"] + len(rows)
    assert m["site"]["name"] == "default"


def test_force_replaces_only_output_of_the_same_kind(templates, tmp_path, capsys):
    """--force replaces an earlier bundle (whole, through a temporary folder); the folder's other kinds
    were refused above even with --force."""
    out = tmp_path / "bundle"
    shutil.copytree(templates["bundle"], out)
    (out / "stale.txt").write_text("from the old bundle")
    code, err = run_cli(["export", "--controller", "rbc", "--out", str(out), "--force"], capsys)
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["controller"] == "rbc"
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no temporary or old folder left


def test_generate_adds_days_and_leaves_held_ones_untouched(templates, tmp_path, capsys):
    raw = tmp_path / "raw"
    shutil.copytree(templates["raw"], raw)
    before = tree(raw)
    argv = ["data", "generate", "--hours", "0.1", "--seed", "2", "--days", "2", "--quiet", "--out", str(raw)]
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    after = tree(raw)
    assert {k: v for k, v in after.items() if k in before} == before  # day 1 and site.yaml as they were
    assert "meter_readings/date=2025-06-02/part-0.csv" in after
    code, err = run_cli([*argv[:-3], "--seed", "3", "--quiet", "--force", "--out", str(raw)], capsys)
    assert code == 0, err
    assert tree(raw)[METER] != before[METER]  # --force replaced the days it was asked to write


def test_staged_output_leaves_nothing_when_the_body_fails(tmp_path):
    """The temporary folder and the parents the call created go; an earlier result stays as it was."""
    from envs.outputs import OutputKind, staged_output

    kind = OutputKind("a test result", ("result.txt",))
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError), staged_output(out, kind) as tmp:
        (tmp / "result.txt").write_text("half")
        raise RuntimeError("disk full (simulated)")
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.txt").write_text("v1")
    with pytest.raises(KeyboardInterrupt), staged_output(out, kind, force=True) as tmp:
        (tmp / "result.txt").write_text("v2")
        raise KeyboardInterrupt
    assert tree(tmp_path) == {"out": "dir", "out/result.txt": hashlib.sha256(b"v1").hexdigest()}
    with staged_output(out, kind, force=True) as tmp:
        (tmp / "result.txt").write_text("v2")
    assert (out / "result.txt").read_text() == "v2" and [p.name for p in tmp_path.iterdir()] == ["out"]
