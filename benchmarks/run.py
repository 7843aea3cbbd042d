"""Run the benchmarks and print a table; write results.json.

    python -m benchmarks.run --data-dir /tmp/cifar10-jpeg --out bench/
    python -m benchmarks.run --quick --only data_pipeline --out bench/

Every figure is a ratio or a rate taken in one run on one machine (shared machines are
noisy: compare numbers from the same results.json, not across runs).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from trainable.checkpoint import write_json
from trainable.cli import ArgumentParser, run_main
from trainable.errors import UserError

BENCHMARKS = ("data_pipeline", "train_step", "overhead", "search_efficiency", "gpu", "soak", "fidelity", "pareto", "latency", "warm")


def runner(name: str) -> Callable[..., dict[str, Any]]:
    import importlib

    return importlib.import_module(f"benchmarks.{name}").run


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.4f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)[:100]
    return str(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for results.json (and plots)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, help="run only this benchmark (repeatable)")
    parser.add_argument("--data-dir", help="ImageFolder of real images (CIFAR-10 JPEGs); default: synthetic data")
    args = parser.parse_args(argv)
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise UserError(f"--data-dir {args.data_dir} does not exist")
    out = Path(args.out)
    from benchmarks.common import machine

    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    results: dict[str, Any] = {"machine": info, "quick": args.quick, "benchmarks": {}}
    for name in args.only or BENCHMARKS:
        print(f"\n== {name}", flush=True)
        start = time.time()
        kwargs = {"out": out} if name in ("search_efficiency", "soak", "fidelity", "pareto", "warm") else {}
        result = runner(name)(args.data_dir, args.quick, **kwargs)
        result["benchmark_seconds"] = time.time() - start
        results["benchmarks"][name] = result
        width = max(len(k) for k in result)
        for key, value in result.items():
            print(f"  {key:<{width}}  {format_value(value)}", flush=True)
        write_json(out / "results.json", results)  # after each: a long run keeps what it measured
    print(f"\nwrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    run_main(main)
