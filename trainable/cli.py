"""What every command line of the project shares: one-line errors and exit code 2.

A user's mistake (a bad flag, a missing folder, a config that cannot be built) ends the
program with a single `error: ...` line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from trainable.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error instead of usage + error, and whole flag names only
    (an abbreviation, or a misspelt keyword of `search.api`, is refused, not guessed)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def sleep_when_waiting() -> None:
    """Let idle OpenMP threads sleep instead of spinning, unless OMP_WAIT_POLICY is set.

    The commands that keep a deadline call it when run as commands (an import from Python
    changes nothing), before torch is imported: the policy is read when its libraries load.
    On a CPU that other processes share, spinning threads take the cores the thread they wait
    for needs: with two CPU-bound processes on 2 cores a 40-image prediction took 3.7 s
    instead of 0.25 s, and steps stalled for seconds. Idle, small models train up to a
    quarter slower this way (20k params: 27%; 0.7 M: 2%); a GPU run should not notice.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def parse_duration(text: str) -> float:
    """'90m', '2h', '1h30m', '45s' or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not match or not any(match.groups()):
        raise UserError(f"--time-budget {text!r} is not a duration like 90m, 2h or 1h30m")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise UserError("--time-budget must be positive")
    return total


def format_duration(seconds: float) -> str:
    """A duration in the unit that reads: seconds under 2 minutes, minutes under 2 hours.

    >>> format_duration(42), format_duration(42 * 60), format_duration(3 * 3600 + 900)
    ('42 s', '42.0 min', '3.25 h')
    """
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


SUFFIXES = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_count(text: str) -> float:
    """A count that may end in k, M or G: '5M', '500k', '1.5M', '200000' (and 200_000).

    >>> parse_count("5M"), parse_count("500k"), parse_count("1.5m"), parse_count("200_000")
    (5000000.0, 500000.0, 1500000.0, 200000.0)
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)([kKmMgG]?)\s*", str(text).replace("_", "").replace(",", ""))
    if not match:
        raise ValueError(f"{text!r} is not a count like 5M, 500k or 200000")
    return float(match.group(1)) * SUFFIXES[match.group(2).lower()]


def short_count(count: Any, _position: Any = None) -> str:
    """A count as people read it, in three figures: the progress line's, the trial table's
    and the plots' axes (a matplotlib FuncFormatter takes it as it is). None or NaN -> '-'.

    >>> short_count(151234), short_count(4918602), short_count(9886), short_count(950), short_count(None)
    ('151k', '4.92M', '9.89k', '950', '-')
    """
    if count is None or count != count:  # NaN is the one value unequal to itself
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= scale:
            return f"{count / scale:.3g}{suffix}"
    return f"{count:.3g}"


def param_count(text: str) -> int:
    """argparse type of --param-budget: a whole, positive count ('5M', '500k', '200000')."""
    try:
        value = parse_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value != int(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole, positive number of parameters")
    return int(value)


def fail(message: str) -> NoReturn:
    """Print one `error:` line and exit 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_main(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> None:
    """Run a command's `main`, turning a UserError into `error: ...` and exit 2."""
    try:
        code = main(argv)
    except UserError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)
    # Python's shutdown runs full garbage collections over every object of the libraries
    # loaded (Ray, Tune, pyarrow, torch): 1.6 s after a `search.auto` on 2 idle cores, 3 s
    # on a busy machine, after the last stage and so past its deadline. Objects frozen at
    # exit are not scanned (the files are closed; the memory goes back to the system). At
    # exit only: a caller that goes on (a test, a notebook) keeps its garbage collector.
    atexit.unregister(gc.freeze)  # once, however many commands ran in this process
    atexit.register(gc.freeze)
    raise SystemExit(code or 0)


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read a JSON file, raising UserError with the path when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} is not valid JSON: {exc}") from None
