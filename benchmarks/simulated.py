"""Benchmark 12: the search's own parts at scale, on a simulated clock, in minutes on a CPU.

    python -m benchmarks.simulated --out bench/simulated                 # 20 seeds, 200 trials' worth
    python -m benchmarks.simulated --out bench/simulated-smoke --quick   # 2 seeds: a smoke run

The real searcher (`search.tune.searcher.BudgetedOptunaSearch` over an Optuna study) and the real
rung rule (`search.tune.rungs.RungScheduler.decide`) are driven without Ray: `WORKERS` trials run
at once, each epoch takes one unit of a simulated clock, and a trial's figure at epoch e of a
horizon H is a multi-fidelity Hartmann-6 function at fidelity z = e / H.

The function is written from its definition (Kandasamy et al., "Multi-fidelity Gaussian
process bandit optimisation", 2016, and BOCA, 2017): Hartmann-6 with its weights alpha
shifted by delta x (1 - z), so that low fidelities rank the six dimensions' optima
differently from the top one, plus noise that shrinks as z grows (short runs are noisy). Its
value is divided by the known maximum, 3.32237, so that 1.0 is the best config.

Methods, each on a seed stream of its own (none replays another's draws):
- random + FIFO: every trial to the horizon (the baseline);
- random + ASHA;
- TPE as before this round + ASHA: Optuna's TPE counting its own random start-up (10
  finished trials), stopped trials ranked by Optuna;
- TPE with the start-up counted in launched trials (`search.tune.sampler`) + ASHA;
- the same with a model of every rung (`search.tune.rung_model`) proposing past the start-up.

Reported per method, mean over seeds: the share of random + FIFO's epochs each needed to reach
random + FIFO's final best (at the horizon, scored without noise), and how many seeds reached it.
A two-objective variant (the figure against the params of a config whose width follows x5,
MO-ASHA at the rungs) scores each method by the hypervolume of its trials that reached the
horizon, at the epochs random + FIFO used.
"""

from __future__ import annotations

import heapq
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import optuna

from trainable.checkpoint import write_json
from trainable.cli import ArgumentParser, run_main
from trainable.model import count_params

WORKERS = 4
HORIZON, GRACE, REDUCTION = 9, 1, 3
FIFO_TRIALS = 200  # random + FIFO's trials: its epochs are the budget everyone is measured in
MAX_TRIALS = 600  # an ASHA method stops here if it has not reached the target
STREAMS = {"random_fifo": 1, "random_asha": 2, "tpe_asha_before": 3, "tpe_asha": 4, "rungs_asha": 5}
METHODS = tuple(STREAMS)

# Hartmann-6 (Dixon and Szego's constants).
ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8],
              [17, 8, 0.05, 10, 0.1, 14]])
P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                     [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])
MAXIMUM = 3.32237
# How the weights move at low fidelity (the 2016 paper's direction, 10x its size so that a
# one-epoch rung can mislead): the third optimum gains, the fourth loses.
DELTA = np.array([0.1, -0.1, 1.0, -1.0]) * 0.1
NOISE = 0.05  # the figure's noise at fidelity 0, falling linearly to 0.005 at the top


def hartmann(x: np.ndarray, fidelity: float) -> float:
    """The multi-fidelity Hartmann-6 at `x` in [0, 1]^6, scaled so that its maximum at z = 1 is 1.

    >>> round(hartmann(np.array([0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573]), 1.0), 4)
    1.0
    """
    alpha = ALPHA + DELTA * (1 - fidelity)
    return float(alpha @ np.exp(-(A * (x - P) ** 2).sum(axis=1))) / MAXIMUM


def space(trial: optuna.Trial) -> dict[str, Any]:
    """Six coordinates (kept as Optuna parameters) behind a tiny model config whose second
    stage widens with x5: the cost a two-objective search trades against the figure."""
    x = [trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(6)]
    return {"blocks": [1, 1], "widths": [8, 8 + 8 * int(x[5] * 15)]}


def sampler_for(method: str, seed: int) -> optuna.samplers.BaseSampler:
    from search.tune.sampler import LaunchedStartup

    stream = seed * 100 + STREAMS[method]
    if method.startswith("random"):
        return optuna.samplers.RandomSampler(seed=stream)
    if method == "tpe_asha_before":  # the same stream as the baseline's would replay its draws
        return optuna.samplers.TPESampler(seed=stream, n_startup_trials=10)
    return LaunchedStartup(optuna.samplers.TPESampler(seed=stream, n_startup_trials=0), seed=stream)


def simulate(method: str, seed: int, target: float | None = None, max_trials: int = MAX_TRIALS,
             pareto: bool = False, max_epochs: int | None = None) -> dict[str, Any]:
    """One search on the simulated clock; stops at `max_trials` launches, after `max_epochs`
    epochs, or once its best at the horizon reaches `target`. Returns its trace (epochs used,
    best so far) and, `pareto`, the (figure, params) of every trial that reached the horizon."""
    from ray.tune.schedulers import TrialScheduler

    from search.records import milestones
    from search.tune.costs import Costs
    from search.tune.rung_model import RungModel
    from search.tune.rungs import ParetoRungScheduler, RungScheduler
    from search.tune.searcher import BudgetedOptunaSearch

    rng = np.random.default_rng(seed * 100 + STREAMS[method] + 50)
    storage = optuna.storages.InMemoryStorage()
    directions = ["maximize", "minimize"] if pareto else ["maximize"]
    study = optuna.create_study(storage=storage, directions=directions, sampler=sampler_for(method, seed))
    startup = None if method.startswith("random") else 10
    costs = Costs("/nonexistent", 10, 32, "params") if pareto else None
    model = None
    if method == "rungs_asha":
        rungs_at = [m for m in milestones(GRACE, HORIZON, REDUCTION) if m < HORIZON] + [HORIZON]
        model = RungModel(space, rungs_at, directions, seed=seed * 100 + STREAMS[method])
    searcher = BudgetedOptunaSearch(study, storage, space, 10**9, 10, {"epochs": HORIZON, "seed": 0}, HORIZON,
                                    startup=startup, costs=costs, rung_model=model)
    rungs = None
    if "asha" in method:
        rungs = (ParetoRungScheduler(HORIZON, GRACE, REDUCTION, cost=costs.value) if pareto
                 else RungScheduler(HORIZON, GRACE, REDUCTION))
    running: list[tuple[int, int, str, int]] = []  # (finish time, order, trial id, epoch)
    coords: dict[str, np.ndarray] = {}
    configs: dict[str, dict[str, Any]] = {}
    launched = used = 0
    best, trace, finished = -np.inf, [], []

    def launch(now: int) -> None:
        nonlocal launched
        trial_id = f"t{launched}"
        launched += 1
        configs[trial_id] = searcher.suggest(trial_id)
        frozen = study.get_trials(deepcopy=False)[searcher.numbers[trial_id]]
        coords[trial_id] = np.array([frozen.params[f"x{i}"] for i in range(6)])
        heapq.heappush(running, (now + 1, launched, trial_id, 1))

    for _ in range(WORKERS):
        launch(0)
    while running:
        now, order, trial_id, epoch = heapq.heappop(running)
        used += 1
        fidelity = epoch / HORIZON
        value = hartmann(coords[trial_id], fidelity) + rng.normal(0, NOISE * (1 - fidelity) + 0.005)
        result = {"epoch": epoch, "val_acc": value, "status": "ok"}
        decision = (rungs.decide(trial_id, epoch, value, configs[trial_id]) if rungs else
                    TrialScheduler.STOP if epoch >= HORIZON else TrialScheduler.CONTINUE)
        if epoch < HORIZON and decision == TrialScheduler.CONTINUE:
            searcher.on_trial_result(trial_id, result)
            heapq.heappush(running, (now + 1, order, trial_id, epoch + 1))
        else:
            searcher.on_trial_complete(trial_id, result)
            if epoch >= HORIZON:
                true = hartmann(coords[trial_id], 1.0)  # scored without noise
                finished.append((true, float(costs.value(configs[trial_id])) if pareto else 0.0))
                if true > best:
                    best = true
                    trace.append((used, best))
            if target is not None and best >= target:
                break
            if launched < max_trials and (max_epochs is None or used < max_epochs):
                launch(now)
        if max_epochs is not None and used >= max_epochs:
            break
    who: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        name = t.user_attrs.get("proposed_by", "unknown")
        who[name] = who.get(name, 0) + 1
    return {"method": method, "seed": seed, "epochs": used, "launched": launched, "best": best, "trace": trace,
            "proposed_by": who, "finished": finished}


def epochs_to(trace: Sequence[tuple[int, float]], target: float) -> int | None:
    """The epochs used when the best first reached `target` (None: never)."""
    return next((used for used, best in trace if best >= target), None)


def run(seeds: Sequence[int], out: Path, progress: Callable[[str], None] = print) -> dict[str, Any]:
    rows = []
    for seed in seeds:
        start = time.time()
        fifo = simulate("random_fifo", seed, max_trials=FIFO_TRIALS)
        target, budget = fifo["best"], fifo["epochs"]
        row = {"seed": seed, "target": target, "fifo_epochs": budget}
        for method in METHODS[1:]:
            result = simulate(method, seed, target)
            reached = epochs_to(result["trace"], target)
            # Not reached: the share it used (a lower bound of what it would need).
            row[method] = {"share": (reached or result["epochs"]) / budget, "reached": reached is not None,
                           "launched": result["launched"], "best": result["best"],
                           "proposed_by": result["proposed_by"]}
        rows.append(row)
        progress(f"seed {seed}: target {target:.4f} in {budget} epochs; " + ", ".join(
            f"{m} {row[m]['share']:.2f}" + ("" if row[m]["reached"] else " (not reached)")
            for m in METHODS[1:]) + f" ({time.time() - start:.0f} s)")
    summary = {}
    for method in METHODS[1:]:
        shares = [r[method]["share"] for r in rows]
        # A seed that never reached the target counts with the share it used: the mean is then
        # a lower bound, and `reached` says how often that happened.
        summary[method] = {"mean_share": float(np.mean(shares)), "median_share": float(np.median(shares)),
                           "reached": sum(r[method]["reached"] for r in rows), "seeds": len(rows)}
    result = {"workers": WORKERS, "horizon": HORIZON, "grace": GRACE, "reduction_factor": REDUCTION,
              "fifo_trials": FIFO_TRIALS, "max_trials": MAX_TRIALS, "summary": summary, "runs": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", result)
    return result


PARETO_METHODS = ("random_fifo", "random_asha", "tpe_asha_before", "tpe_asha", "rungs_asha")
# The hypervolume's reference cost: a little above the widest config of `space`.
REFERENCE_PARAMS = 1.1 * count_params({"blocks": [1, 1], "widths": [8, 128]})


def run_pareto(seeds: Sequence[int], progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The two-objective variant: (figure, params) with MO-ASHA; each method's hypervolume of
    the trials that reached the horizon, at the epochs random + FIFO used."""
    from search.pareto import hypervolume

    rows = []
    for seed in seeds:
        fifo = simulate("random_fifo", seed, max_trials=FIFO_TRIALS, pareto=True)
        budget = fifo["epochs"]
        row = {"seed": seed, "epochs": budget}
        for method in PARETO_METHODS:
            result = fifo if method == "random_fifo" else simulate(method, seed, pareto=True, max_epochs=budget)
            row[method] = hypervolume(result["finished"], REFERENCE_PARAMS)
        rows.append(row)
        progress(f"seed {seed} (two objectives): " + ", ".join(f"{m} {row[m]:.4f}" for m in PARETO_METHODS))
    summary = {m: {"mean_hypervolume": float(np.mean([r[m] for r in rows])),
                   "seeds_at_or_above_fifo": sum(r[m] >= r["random_fifo"] for r in rows), "seeds": len(rows)}
               for m in PARETO_METHODS}
    return {"summary": summary, "runs": rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m benchmarks.simulated", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for results.json")
    parser.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1 (default 20)")
    parser.add_argument("--quick", action="store_true", help="2 seeds: a smoke run, not a measurement")
    parser.add_argument("--pareto-seeds", type=int, default=10,
                        help="seeds of the two-objective variant (default 10; 0 skips it)")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    result = run(range(2 if args.quick else args.seeds), Path(args.out))
    if args.pareto_seeds:
        result["pareto"] = run_pareto(range(1 if args.quick else args.pareto_seeds))
        write_json(Path(args.out) / "results.json", result)
        for method, figures in result["pareto"]["summary"].items():
            print(f"{method} (two objectives): mean hypervolume {figures['mean_hypervolume']:.4f}, at or above "
                  f"random + FIFO's on {figures['seeds_at_or_above_fifo']} of {figures['seeds']} seeds")
    for method, figures in result["summary"].items():
        print(f"{method}: mean {figures['mean_share']:.2f} of random + FIFO's epochs to its final best "
              f"(median {figures['median_share']:.2f}; reached on {figures['reached']} of {figures['seeds']} seeds)")
    print(f"wrote {Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    run_main(main)
