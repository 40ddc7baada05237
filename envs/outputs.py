"""Output folders: the one check a command runs on its ``--out``, and writing through a temporary folder.

Every command that writes a folder (``simulate``, ``data generate``, ``data build``, ``export``, ``edge``...)
checks it before doing any work, with :func:`check_output`:

* a path that exists and is not a folder (a file, a device) is refused;
* a path that cannot be written (its nearest existing parent is not a writable folder) is refused;
* an existing, non-empty folder is refused unless it holds this command's kind of output
  (:class:`OutputKind`, recognised by its files); a folder of the right kind is then replaced only with
  ``--force``, or updated where the command's purpose is to update it (a dataset rebuilt incrementally,
  a raw-log folder that gets more days).

The command then writes into a temporary sibling folder, ``.NAME.tmp-PID-NS``, which is renamed to
``NAME`` only once everything is written (:func:`staged_output`): a failed or interrupted run leaves the
previous folder as it was and nothing half-written beside it (the temporary folder, and any parent folder
the run created, are removed). The previous folder is moved aside, the new one renamed into place, and
only then is the old one deleted.

Every refusal is an :class:`OutputError` (a ValueError) whose message names the flag and the path, so a
command prints it and exits 2, never with a traceback. This module lives in ``envs/`` next to
``envs/config.py`` because it is shared infrastructure of every floor above (offline_data, tune, serve,
scripts) and imports nothing of gridrl.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class OutputError(ValueError):
    """An output path that a command refuses to write; the message names the flag and the path."""

    def __init__(self, path: str | Path, problem: str, flag: str = "--out") -> None:
        self.path, self.problem, self.flag = str(path), problem, flag
        super().__init__(f"{flag} {path}: {problem}")


@dataclass(frozen=True)
class OutputKind:
    """A kind of output folder, recognised by the entries a command always writes into it.

    Attributes:
        name: What the folder holds, in the user's words ("a gridrl dataset").
        entries: Files or folders that together mark the kind (all must exist).
        json_key: ``(file, key)``: ``file`` must be a JSON object with ``key`` (for kinds whose marker
            file name is shared with another kind, e.g. ``manifest.json``).
        any_entry: True: one of ``entries`` is enough (a raw-log folder with one stream so far).
    """

    name: str
    entries: tuple[str, ...]
    json_key: tuple[str, str] | None = None
    any_entry: bool = False

    def matches(self, folder: Path) -> bool:
        """Whether ``folder`` holds output of this kind."""
        present = [(folder / e).exists() for e in self.entries]
        if not (any(present) if self.any_entry else all(present)):
            return False
        if self.json_key is None:
            return True
        file, key = self.json_key
        try:
            data = json.loads((folder / file).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and key in data


def _nonempty(folder: Path) -> bool:
    try:
        return any(folder.iterdir())
    except PermissionError as exc:
        raise OutputError(folder, f"cannot be read ({exc.strerror})") from exc


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink():
        if p.parent == p:
            break
        p = p.parent
    return p


def check_output(
    out: str | Path,
    kind: OutputKind,
    force: bool = False,
    update: bool = False,
    flag: str = "--out",
) -> Path:
    """Check ``out`` as the output folder of a command writing ``kind`` (see the module docstring).

    Args:
        out: The path the user gave.
        kind: What the command writes.
        force: ``--force`` was given: a folder of this kind may be replaced.
        update: The command updates a folder of this kind by design (no ``--force`` needed).
        flag: The flag the path came from, for messages.

    Returns:
        ``out`` with ``~`` expanded and a symlink to a folder followed.

    Raises:
        OutputError: naming ``flag`` and the path.
    """
    out = Path(out).expanduser()
    if out.is_symlink() and out.resolve().is_dir():
        out = out.resolve()
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            what = "a broken link" if not out.exists() else "a file"
            raise OutputError(out, f"is {what}, not a folder; choose a folder path for {flag}", flag)
        if _nonempty(out):
            if not kind.matches(out):
                raise OutputError(
                    out,
                    f"is a non-empty folder that does not hold {kind.name}; refusing to write into it "
                    f"(choose an empty or new folder for {flag})",
                    flag,
                )
            if not (force or update):
                raise OutputError(
                    out,
                    f"already holds {kind.name}; pass --force to replace it, or choose another {flag}",
                    flag,
                )
        parent = out.parent
    else:
        parent = _nearest_existing(out.parent)
        if not parent.is_dir():
            raise OutputError(out, f"cannot be created: {parent} is a file, not a folder", flag)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(out, f"cannot be written: no write permission in {parent}", flag)
    probe = temp_sibling(parent / "probe", "probe")  # a folder made and removed: some file systems
    try:  # (/proc, read-only mounts) refuse what the permission bits allow
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise OutputError(
            out, f"cannot be written: creating a folder in {parent} failed ({exc.strerror})", flag
        ) from exc
    return out


def _make_parents(folder: Path, flag: str, out: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the ones created (deepest last)."""
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    created = []
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            _remove_created(created)
            raise OutputError(out, f"cannot be created: creating {p} failed ({exc.strerror})", flag) from exc
        created.append(p)
    return created


def _remove_created(created: list[Path]) -> None:
    for p in reversed(created):
        try:
            p.rmdir()  # only if still empty
        except OSError:
            break


def temp_sibling(out: Path, tag: str) -> Path:
    """A fresh name beside ``out`` for a temporary folder (``.NAME.TAG-PID-NS``)."""
    return out.parent / f".{out.name}.{tag}-{os.getpid()}-{time.time_ns()}"


def swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` by renames; the old folder is deleted only once the new one is in place."""
    old = None
    if out.exists():
        old = temp_sibling(out, "old")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_output(
    out: str | Path,
    kind: OutputKind,
    force: bool = False,
    update: bool = False,
    flag: str = "--out",
    commit: Callable[[Path, Path], None] = swap_in,
) -> Iterator[Path]:
    """Check ``out`` (:func:`check_output`), then yield an empty temporary folder to write into.

    On a normal exit ``commit(tmp, out)`` puts the result in place (default :func:`swap_in`: the temporary
    folder replaces ``out``; a command that adds to a folder passes its own, which must check everything
    before it moves anything); on any exception (or Ctrl-C), in the body or in ``commit``, the temporary
    folder is removed with any parent folder this call created, ``out`` is left as it was, and the
    exception propagates.

    Example::

        with staged_output(args.out, SIMULATE_OUTPUT, force=args.force) as tmp:
            simulate(..., out=tmp)
    """
    target = check_output(out, kind, force=force, update=update, flag=flag)
    created = _make_parents(target.parent, flag, target)
    tmp = temp_sibling(target, "tmp")
    try:
        tmp.mkdir()
    except OSError as exc:
        _remove_created(created)
        raise OutputError(
            target, f"cannot be written: creating a folder in {tmp.parent} failed ({exc.strerror})", flag
        ) from exc
    try:
        yield tmp
        commit(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise


__all__ = ["OutputError", "OutputKind", "check_output", "staged_output", "swap_in", "temp_sibling"]


def sha256_file(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes, read in chunks (``hashlib.file_digest``): bundles' and raw logs'
    file identities. OSError propagates (a caller names the file in its own terms)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
