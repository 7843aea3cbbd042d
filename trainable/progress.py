"""Progress of a long loop (a prediction, a test pass, decoding images) that says nothing
when it is short: a tqdm bar on a terminal, else a line every `every_s` seconds (a log file,
a notebook, a Ray worker), in both cases only once the loop has run `delay_s` seconds."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Steps:
    """`with Steps(total, "predict") as steps: ... steps.update(n)`."""

    def __init__(self, total: int, label: str, unit: str = "images", delay_s: float = 2.0, every_s: float = 10.0,
                 out: TextIO | None = None):
        self.total, self.label, self.unit = total, label, unit
        self.delay_s, self.every_s = delay_s, every_s
        self.out = out or sys.stderr
        self.done = 0
        self.started = self.printed = time.monotonic()
        self.bar: Any = None
        if getattr(self.out, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit=unit.rstrip("s") or unit, file=self.out, delay=delay_s,
                            leave=False, dynamic_ncols=True)

    def update(self, count: int = 1) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        now = time.monotonic()
        if now - self.started >= self.delay_s and now - self.printed >= self.every_s:
            self.printed = now
            rate = self.done / max(1e-9, now - self.started)
            print(f"{self.label}: {self.done:,} of {self.total:,} {self.unit} ({rate:,.0f}/s)", file=self.out,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Steps":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
