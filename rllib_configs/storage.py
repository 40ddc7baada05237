"""Storage paths: gridrl's default storage root, and runs and sweeps in a local directory or a URI every node
can reach (s3://, gs://, ...).

The default root of what gridrl keeps (raw logs, datasets, Serve's state and logs) is :func:`storage_path`:
``$GRIDRL_STORAGE``, else ``~/gridrl``; every layer that needs it imports it from here.

Runs and sweeps: Tune writes trials to a local path or a URI natively. gridrl's own small files beside them
(``gridrl_run.json``, sweep results, promotions) go through pyarrow's filesystems, so the same code serves
both; local paths are made absolute so that Ray workers in other working directories find them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs

STORAGE_ENV = "GRIDRL_STORAGE"


def storage_path() -> Path:
    """The one storage path: ``$GRIDRL_STORAGE`` or ``~/gridrl``."""
    return Path(os.environ.get(STORAGE_ENV) or Path.home() / "gridrl").expanduser()


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...`` as a string: URIs kept as URIs, local paths made absolute."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base).resolve().joinpath(*parts))


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def exists(path: str | Path) -> bool:
    fs, p = _fs(str(path))
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` (parents created)."""
    fs, p = _fs(str(path))
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def parent_and_name(path: str) -> tuple[str, str]:
    """(storage_path, name) for Tune's RunConfig."""
    parent, _, name = path.rstrip("/").rpartition("/")
    return parent, name
