"""Atomic file writes: a kill at any moment leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

# When this process loaded its writer: a temp file older than this is no write of its own.
PROCESS_STARTED = time.time()
# `_atomic`'s temp names: mkstemp's prefix `.NAME.`, 8 random characters, suffix `.tmp`.
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def _atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared and read
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # atomic on POSIX within one filesystem
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temp_files(folder: str | Path, before: float = PROCESS_STARTED) -> list[Path]:
    """Remove the temp files of `_atomic` under `folder` last written before `before`: what
    writes killed midway left (the old file stands beside each). A resumed run calls it, so a
    killed run's leftovers do not stay for ever; its own writes are newer than its start.
    Returns what it removed."""
    removed = []
    for path in Path(folder).rglob(".*.tmp"):
        try:
            if TEMP_NAME.match(path.name) and path.is_file() and path.stat().st_mtime < before:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            pass  # its writer renamed it meanwhile (a killed run's worker still stopping)
    return removed


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save `state` to `path` through a temp file and a rename."""
    import torch  # here, not at the top: JSON and CSV writers should not pay for importing torch

    _atomic(Path(path), lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` onto the CPU, safely.

    `weights_only=True`: only tensors and plain containers and values load, so a model
    folder from someone else cannot run code. Every checkpoint here holds only those
    (weights, optimizer state, RNG states as tensors, the config and history as plain values).
    """
    import torch

    return torch.load(Path(path), map_location="cpu", weights_only=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    _atomic(Path(path), lambda handle: handle.write(text.encode()))


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    _atomic(Path(path), lambda handle: handle.write(text.encode()))


def copy_file(source: str | Path, path: str | Path) -> None:
    """Copy `source` to `path` atomically (a kill leaves the old copy or the new one)."""
    data = Path(source).read_bytes()
    _atomic(Path(path), lambda handle: handle.write(data))
