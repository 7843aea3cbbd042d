"""auto.json kept current while `search.auto` runs: the plan, the stage running, each
stage's planned and used seconds and what it decided, and each run of the command."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from search.records import write_auto
from trainable.checkpoint import remove_temp_files


class Record:
    """auto.json, kept current: the plan, the stage running, each stage's seconds, and each
    run of the command (its start-up and wall time; a --resume adds a run).

    A heartbeat adds the running stage's time every few seconds, so a kill loses at most
    that much of the account, and a resume knows how much of the deadline is left. A resume
    also removes the temp files that the killed runs' writes left half-done, so it ends
    with the files an uninterrupted run writes.
    """

    def __init__(self, folder: Path, data: dict[str, Any], started: float, startup_s: float):
        self.folder, self.data = folder, data
        self.started = started
        if data.get("runs"):  # a resume, before this run writes anything
            remove_temp_files(folder)
        self.run = {"startup_s": round(startup_s, 1), "wall_s": round(time.time() - started, 1)}
        data.setdefault("runs", []).append(self.run)
        self.lock = threading.Lock()
        self.running: str | None = None
        self.since = 0.0
        self.stop = threading.Event()
        threading.Thread(target=self._heartbeat, daemon=True).start()

    def _heartbeat(self) -> None:
        while not self.stop.wait(2.0):
            self.save()

    def _account(self) -> None:
        """Add the running stage's time since the last account (under the lock)."""
        now = time.time()
        self.run["wall_s"] = round(now - self.started, 1)
        if self.running:
            entry = self.data["stages"][self.running]
            entry["used_s"] = round(entry.get("used_s", 0.0) + now - self.since, 2)
            self.since = now

    def used(self) -> float:
        """Seconds the stages have used, over every run: what the deadline counts."""
        with self.lock:
            self._account()
            return sum(stage.get("used_s", 0.0) for stage in self.data["stages"].values())

    def start(self, stage: str, planned: float) -> None:
        with self.lock:
            self.running, self.since = stage, time.time()
            self.data["stages"].setdefault(stage, {}).update(status="running", planned_s=round(planned, 1))
            self.data["running"] = stage
        self.save()

    def finish(self, stage: str, **facts: Any) -> None:
        with self.lock:
            self._account()
            self.data["stages"][stage].update(status="done", **facts)
            self.running, self.data["running"] = None, None
        self.save()

    def save(self) -> None:
        with self.lock:
            self._account()
            write_auto(self.folder, self.data)

    def close(self) -> None:
        self.stop.set()
        self.save()


def total_seconds(record: dict[str, Any]) -> tuple[float, float]:
    """(wall seconds of every run of the command, start-up seconds among them) from auto.json."""
    runs = record.get("runs", [])
    return sum(r["wall_s"] for r in runs), sum(r["startup_s"] for r in runs)
