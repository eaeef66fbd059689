"""Where the data files are: a folder given, an environment variable, or the package's copy."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def checked_name(name: object, what: str) -> str:
    """A dataset's name, which must be a string (``TypeError`` naming ``what`` else)."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a dataset name (a str); got {name!r}")
    return name


def data_folder(data_home: str | os.PathLike | None, env: str, kind: str):
    """``data_home``, else ``$env``, else the package's ``data/<kind>`` (a Traversable)."""
    if data_home is not None:
        return Path(data_home)
    if os.environ.get(env):
        return Path(os.environ[env])
    return resources.files("sparsegen") / "data" / kind


def find_file(folder, filename: str, *, required: bool = True) -> Path | None:
    """``folder/filename``, plain or gzipped (``.gz``); ``FileNotFoundError`` when neither is
    there and ``required``, else None."""
    for candidate in (filename, filename + ".gz"):
        path = folder / candidate
        if path.is_file():
            return Path(str(path))
    if required:
        raise FileNotFoundError(f"{filename} (or {filename}.gz) not found under {folder}")
    return None
