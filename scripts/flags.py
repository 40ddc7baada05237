"""Flag types that range-check a value where argparse parses it, so the error names the flag the user typed.

    p.add_argument("--days", type=int_at_least(1))
    p.add_argument("--hours", type=float_in(1 / 60, 24))

A bad value ends like any argparse error: ``gridrl simulate: error: argument --hours: must be within
[0.0167, 24], got 30`` and exit status 2, before any work starts. Checks that involve two flags (a window
that must fit in a day) are :func:`check_window`'s, and name both flags.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_at_least(lo: int) -> Callable[[str], int]:
    """An integer >= ``lo``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An integer within ``[lo, hi]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be within [{lo}, {hi}], got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def float_in(
    lo: float, hi: float = math.inf, lo_open: bool = False, label: str | None = None
) -> Callable[[str], float]:
    """A finite number within ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); ``label`` spells the range."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
        if not ok:
            left = "(" if lo_open else "["
            bounds = f"> {lo:g}" if hi == math.inf and lo_open else f">= {lo:g}"
            if hi != math.inf:
                bounds = f"within {label or f'{left}{lo:g}, {hi:g}]'}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


SEED = int_at_least(0)
"""``--seed``: a non-negative integer (NumPy's seed sequences take no negative seeds)."""
HOURS = float_in(1 / 60, 24, label="[1/60, 24] (one minute to a day)")
"""``--hours`` of a simulated day: one minute to 24 h."""
START_H = float_in(0, 24)
"""``--start-h``: a local hour of the day."""
PORT = int_in(1, 65535)
"""``--port``: a TCP port."""


def check_window(
    hours: float, start_h: float, hours_flag: str = "--hours", start_flag: str = "--start-h"
) -> str | None:
    """The message for a window that does not fit in a day (None if it fits), naming both flags."""
    if start_h + hours > 24 + 1e-9:
        return (
            f"{start_flag} {start_h:g} + {hours_flag} {hours:g} ends after midnight: the window must fit in "
            f"one day (start + hours <= 24)"
        )
    return None


class FlagError(ValueError):
    """A flag's value is refused after parsing (it depends on another flag or on a file); names the flag."""

    def __init__(self, flag: str, problem: str) -> None:
        self.flag, self.problem = flag, problem
        super().__init__(f"{flag}: {problem}")


def flag_error(exc: Exception, flags: dict[str, str]) -> FlagError | None:
    """A ConfigError about a field that came from a flag (``flags``: field -> flag), in the flag's name."""
    field = getattr(exc, "field", None)
    if getattr(exc, "source", None) == "command line" and field in flags:
        return FlagError(flags[field], exc.problem)  # type: ignore[attr-defined]
    return None


def command_parser(sub: argparse._SubParsersAction, name: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``gridrl NAME``, whose ``--help`` prints ``doc`` (its module's docstring) with the line
    breaks kept, listed under scripts/cli.py's one-line help."""
    from scripts.cli import COMMANDS

    return sub.add_parser(
        name, help=COMMANDS[name][1], description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_day_window(p: argparse.ArgumentParser) -> None:
    """``--hours`` and ``--start-h``: the window of each simulated day (checked by :func:`check_window`)."""
    p.add_argument("--hours", type=HOURS, default=24.0, help="hours of each day from --start-h (default 24)")
    p.add_argument("--start-h", type=START_H, default=0.0, help="local hour each day starts at (default 0)")


def add_scenario(
    p: argparse._ActionsContainer, what: str = "the days", default: str = "broken_clouds"
) -> None:
    """``--scenario`` (on a parser or a group): the weather of ``what``, from envs/profiles.py SCENARIOS or
    random (drawn per day)."""
    from envs.profiles import SCENARIOS

    p.add_argument(
        "--scenario", default=default, choices=[*SCENARIOS, "random"],
        help=f"weather of {what}; random: drawn per day (default {default})",
    )  # fmt: skip


def add_output(p: argparse.ArgumentParser, command: str) -> None:
    """``--out`` (required; written whole: envs/outputs.py staged_output) and ``--force``."""
    p.add_argument("--out", required=True, help="output directory (written whole at the end, or not at all)")
    p.add_argument(
        "--force", action="store_true", help=f"replace an earlier `gridrl {command}` result at --out"
    )


def add_ray(p: argparse.ArgumentParser) -> None:
    """``--address`` and ``--num-cpus``: where the command's Ray runs (cluster/local.py init_ray)."""
    p.add_argument("--address", help="Ray address (default: $RAY_ADDRESS or an embedded local Ray)")
    p.add_argument("--num-cpus", type=int_at_least(1), default=2, help="CPUs of the embedded Ray (default 2)")


def add_mlflow(p: argparse.ArgumentParser) -> None:
    """``--mlflow [URI]``, resolved by rllib_configs/tracking.py."""
    p.add_argument(
        "--mlflow", nargs="?", const="", default=None, metavar="URI",
        help="track in MLflow (Tune's MLflowLoggerCallback): to URI, or without one to a file store in "
             "<storage-path>/mlruns; needs mlflow (pip install gridrl[mlflow])",
    )  # fmt: skip
