"""The proof's process harness: steps under caps, a hard deadline, and child processes that
are always ended. The five measurements are in `benchmarks.proof`; this holds what makes a
short GPU loan safe to spend on them (a proof can be cut short, never hang)."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from typing import Any, Callable

# Children (packing trials, compiled measurements) that must not outlive the proof.
CHILDREN: list[Any] = []


def end_children() -> None:
    """Terminate (then kill) every child process the proof started that is still alive."""
    for proc in list(CHILDREN):
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        CHILDREN.remove(proc)


def spawn(target: Any, args: tuple) -> Any:
    """A daemon child process (spawned: CUDA cannot be shared through fork), registered so
    that `end_children` can stop it whatever happens."""
    proc = multiprocessing.get_context("spawn").Process(target=target, args=args, daemon=True)
    proc.start()
    CHILDREN.append(proc)
    return proc


class ProofSteps:
    """Runs each step under its own cap; a failure or a cap is reported, never fatal.

    After each step proof.json is rewritten with everything so far (`on_step`), so a proof
    cut short by its deadline, or killed, keeps every finished step.
    """

    def __init__(self, on_step: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.results: dict[str, Any] = {}
        self.running: str | None = None
        self.on_step = on_step

    def run(self, name: str, cap: float, fn: Callable[[float], dict[str, Any]]) -> None:
        print(f"== {name} (cap {cap:.0f} s)", flush=True)
        self.running = name
        start = time.perf_counter()
        try:
            result = fn(cap)
        except Exception as exc:  # a proof reports what failed and goes on to the next step
            result = {"skipped": f"{type(exc).__name__}: {str(exc)[:300]}"}
        finally:
            end_children()
        result["step_seconds"] = round(time.perf_counter() - start, 1)
        result["within_cap"] = result["step_seconds"] <= cap
        self.results[name] = result
        self.running = None
        for key, value in result.items():
            print(f"  {key}: {value}", flush=True)
        if self.on_step:
            self.on_step(self.results)


class Budget:
    """A step's cap: a measurement starts only if one like the last still fits before it."""

    def __init__(self, cap: float, margin: float = 1.3):
        self.cap, self.margin = cap, margin
        self.start = time.perf_counter()
        self.last = 0.0

    def left(self) -> float:
        return self.cap - (time.perf_counter() - self.start)

    def fits(self, estimate: float | None = None) -> bool:
        return self.left() > self.margin * (self.last if estimate is None else estimate)

    def measure(self, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if not self.fits():
            return {"skipped": f"would not fit in the {self.left():.0f} s left of the cap"}
        start = time.perf_counter()
        result = fn()
        self.last = time.perf_counter() - start
        return result


class Watchdog:
    """Ends the proof at its hard deadline, whatever it is doing: writes what it has (the
    step that was running named), ends every child process, and exits (code 3)."""

    def __init__(self, seconds: float, write: Callable[[dict[str, Any]], None], steps: "ProofSteps"):
        self.write, self.steps = write, steps
        self.timer = threading.Timer(seconds, self.fire)
        self.timer.daemon = True

    def fire(self) -> None:
        self.write({"deadline_hit": True, "running_step": self.steps.running})
        print(f"\nproof deadline reached during {self.steps.running or 'start-up'}: wrote what was measured",
              flush=True)
        end_children()
        os._exit(3)
