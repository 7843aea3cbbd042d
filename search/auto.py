"""From data to submission under one deadline: search, confirm, retrain, predict.

    python -m search.auto --gpus 4 --time-budget 2h --input cifar_test_nolabel.pkl --out submission.csv --name course
    python -m search.auto --gpus 0 --dataset synthetic --subset 400 --time-budget 3m --input test.npy --out sub.csv --dry-run

Four stages, each a function over the experiment folder, under one deadline:

1. search: `search.run` for its share of the time (every `search.run` flag applies);
2. confirm: the top `--confirm` configs of the search trained again, in parallel, at
   `--confirm-factor` x `--max-epochs` on the training split and ranked on validation. It
   is itself a search experiment (`runs/NAME/confirm/`, FIFO, one trial per config), so it
   packs across GPUs, is cut by its deadline and resumes like any search. It picks the
   winner: short ASHA rungs favour what learns fast, not what ends best, and the test set
   is still never used to choose;
3. retrain: the confirmed winner on train + validation, EMA on, `--seeds` seeds, for as many
   epochs as fit in the time left (from the epoch times measured in stages 1-2, with a
   margin), between a floor of 1 and a cap of 300; if every seed diverges, the next
   confirmed config while time remains;
4. predict: EMA weights with TTA into `--out`, and the report (with a stage table).

With `--minimize` (a Pareto search) `--pick` says which model of the front is wanted:
`best` (the most accurate), `knee` (the knee of accuracy against the cost) or `under:N`
(the most accurate at a cost of at most N: params, MACs, or ms with `--minimize latency`).
The confirm stage trains the candidates of that rule (the knee and its neighbours on the
front; the best under N) and the rule is applied again to the confirmed figures.

A stage that runs late takes time from the next one, never from the deadline. Everything
is recorded in `runs/NAME/auto.json` (the plan, and each stage's planned and used seconds,
configs and ranks, Kendall's tau between the search's and the confirm stage's order, and
whether the pick changed); `--resume` continues from the stage that was running.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from search.run import SearchSettings, build_parser, parse_duration, settings_from_parsed
from trainable.cli import run_main
from trainable.errors import UserError

STAGES = ("search", "confirm", "retrain", "predict")
# Default shares of the deadline. Search gets half: it is where the architecture is found.
# Confirm a fifth: K configs at 3x the horizon, in parallel. Retrain the rest less a small
# reserve for predicting and the report. Benchmark 6 (README) measures what confirm changes.
DEFAULT_SHARES = {"search": 0.5, "confirm": 0.2, "retrain": 0.27, "predict": 0.03}
MAX_RETRAIN_EPOCHS = 300
SAFETY = 0.85  # plan the retrain to fill 85% of its time: epoch times vary, the deadline does not


@dataclass
class AutoSettings:
    """The flags of `search.auto` beyond those of `search.run`."""

    input: str = ""
    out: str = "submission.csv"
    confirm: int = 4
    confirm_factor: int = 3
    seeds: int | None = None  # None: as many as run in parallel without costing wall time
    shares: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SHARES))
    dry_run: bool = False
    force: bool = False
    pick: str = "best"  # best, knee or under:N (module docstring)


@dataclass
class Plan:
    """How the deadline is split, and what each stage is expected to do with its share."""

    total_s: float
    seconds: dict[str, float]
    max_epochs: int
    confirm_configs: int
    confirm_epochs: int
    concurrent: int
    epoch_s_estimate: float
    expected_trials: int
    retrain_epochs_estimate: int
    seeds: int

    def describe(self) -> str:
        lines = [f"plan for {self.total_s / 60:.1f} min (an epoch of a middle-sized config under the budget: "
                 f"about {self.epoch_s_estimate:.1f} s here, from a few timed steps; {self.concurrent} trials "
                 "at once; the retrain is sized later from the epoch times the search measures):"]
        lines.append(f"  search   {self.seconds['search'] / 60:6.1f} min: ASHA to {self.max_epochs} epochs, "
                     f"about {self.expected_trials} trials")
        lines.append(f"  confirm  {self.seconds['confirm'] / 60:6.1f} min: the top {self.confirm_configs} configs "
                     f"at {self.confirm_epochs} epochs, ranked on validation")
        lines.append(f"  retrain  {self.seconds['retrain'] / 60:6.1f} min: the winner on train + val, "
                     f"{self.seeds} seed(s), EMA, about {self.retrain_epochs_estimate} epochs (set from the "
                     "epoch times measured in the search)")
        lines.append(f"  predict  {self.seconds['predict'] / 60:6.1f} min: EMA weights + TTA, and the report")
        return "\n".join(lines)


def kendall_tau(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Kendall's tau-a between two orders of the same items (best first); None under 2 items.

    >>> kendall_tau(["a", "b", "c"], ["a", "b", "c"]), kendall_tau(["a", "b", "c"], ["c", "b", "a"])
    (1.0, -1.0)
    >>> kendall_tau(["a", "b", "c", "d"], ["b", "a", "c", "d"])
    0.6666666666666666
    """
    items = [item for item in first if item in second]
    if len(items) < 2:
        return None
    position = {item: second.index(item) for item in items}
    concordant = discordant = 0
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            if position[items[i]] < position[items[j]]:
                concordant += 1
            else:
                discordant += 1
    return (concordant - discordant) / (concordant + discordant)


# ----------------------------------------------------------------------------- planning
def planned_concurrency(s: SearchSettings) -> tuple[int, int]:
    """(GPUs, trials at once) the search will use, as `search.run.plan_resources` will set them."""
    import os

    from search.run import check_gpus, plan_resources, ray_session, resources_for

    if s.address:
        with ray_session(s):
            resources = plan_resources(s)
    else:
        resources = resources_for(s, check_gpus(s), s.cpus or os.cpu_count() or 1)
    return resources.gpus, resources.concurrent


def probe_config(budget: int) -> dict[str, Any]:
    """The probe's model: [2,2,2] x [48,96,192] (the middle of the built-in space under 5M,
    1.1M params), narrowed to about half of a smaller budget.

    >>> probe_config(5_000_000)["widths"], probe_config(200_000)["widths"]
    ([48, 96, 192], [16, 32, 64])
    """
    import math

    from trainable.model import count_params

    middle = {"blocks": [2, 2, 2], "widths": [48, 96, 192]}
    scale = math.sqrt(min(1.0, budget / 2 / count_params(middle)))  # params grow with width squared
    base = max(8, int(round(48 * scale / 8)) * 8)
    return {"blocks": [2, 2, 2], "widths": [base, 2 * base, 4 * base]}


def probe_epoch_seconds(s: SearchSettings, train_images: int, gpus: int) -> float:
    """Seconds of one training epoch of a middle-sized config of the space on the search's
    device, from a few timed steps (the plan's estimate; stages 1-2 measure the real ones)."""
    import torch

    from trainable.data import make_synthetic, to_device
    from trainable.loop import Trainer

    device = torch.device("cuda" if gpus and torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(s.cpus_per_trial)  # as a trial will have
    steps, batch = 4, 128
    data = to_device(make_synthetic(n_train=batch * (steps + 1), n_test=8), device, val_fraction=0.0)
    trainer = Trainer({**probe_config(s.param_budget), "epochs": 1, "warmup_epochs": 0, "batch_size": batch}, data)
    trainer.steps_per_epoch = 1
    trainer.train_epoch()  # warm-up
    trainer.steps_per_epoch = steps
    start = time.perf_counter()
    trainer.train_epoch()
    per_image = (time.perf_counter() - start) / (steps * batch)
    torch.set_num_threads(threads)
    return per_image * train_images


def make_plan(s: SearchSettings, a: AutoSettings, total: float, concurrent: int, epoch_s: float,
              gpus: int) -> Plan:
    seconds = {stage: total * a.shares[stage] for stage in STAGES}
    # Under ASHA (grace g, factor r) a trial trains about g + (m - g) / r + ... epochs.
    from search.records import milestones

    rungs = milestones(s.grace, s.max_epochs, s.reduction_factor)
    bounds = [m for m in rungs if m < s.max_epochs] + [s.max_epochs]
    per_trial = bounds[0] + sum((hi - lo) / s.reduction_factor ** (k + 1)
                                for k, (lo, hi) in enumerate(zip(bounds, bounds[1:])))
    # Trials sharing a device run slower; count the device's throughput once.
    share_slowdown = max(1.0, concurrent / max(1, gpus)) if gpus else 1.0
    trials = int(seconds["search"] * concurrent / (per_trial * epoch_s * share_slowdown))
    seeds = a.seeds or max(1, gpus)
    train_val = 1 / (1 - s.val_fraction)
    retrain_epochs = int(seconds["retrain"] * SAFETY / (epoch_s * train_val)) if epoch_s > 0 else 1
    return Plan(total, seconds, s.max_epochs, a.confirm, a.confirm_factor * s.max_epochs, concurrent, epoch_s,
                trials, max(1, min(MAX_RETRAIN_EPOCHS, retrain_epochs)), seeds)


def check_inputs(a: AutoSettings) -> None:
    """What `search.predict` would refuse, refused now rather than after the deadline."""
    from search.predict import read_input

    parse_pick(a.pick)
    out = Path(a.out)
    if not out.parent.is_dir():
        raise UserError(f"--out {a.out}: the folder {out.parent} does not exist")
    if out.exists() and not a.force:
        raise UserError(f"{out} exists; pass --force to overwrite it or choose another --out")
    if not a.input:
        raise UserError("--input is required: the unlabelled images to predict (pickle, .npy or an image folder)")
    read_input(Path(a.input))  # raises UserError with the reason
    if a.confirm < 1 or a.confirm_factor < 1:
        raise UserError("--confirm and --confirm-factor must be at least 1")
    if a.seeds is not None and a.seeds < 1:
        raise UserError("--seeds must be at least 1")
    if any(v < 0 for v in a.shares.values()) or abs(sum(a.shares.values()) - 1) > 1e-6:
        raise UserError(f"--shares must be four non-negative numbers summing to 1, got {a.shares}")


# ----------------------------------------------------------------------------- the record
class Record:
    """auto.json, kept current: the plan, the stage running, and each stage's seconds.

    A heartbeat adds the running stage's time every few seconds, so a kill loses at most
    that much of the account, and a resume knows how much of the deadline is left.
    """

    def __init__(self, folder: Path, data: dict[str, Any]):
        self.folder, self.data = folder, data
        self.lock = threading.Lock()
        self.running: str | None = None
        self.since = 0.0
        self.stop = threading.Event()
        threading.Thread(target=self._heartbeat, daemon=True).start()

    def _heartbeat(self) -> None:
        while not self.stop.wait(5.0):
            self.save()

    def _account(self) -> None:
        """Add the running stage's time since the last account (under the lock)."""
        if self.running:
            now = time.time()
            entry = self.data["stages"][self.running]
            entry["used_s"] = round(entry.get("used_s", 0.0) + now - self.since, 1)
            self.since = now

    def used(self) -> float:
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
        from search.records import write_auto

        with self.lock:
            self._account()
            write_auto(self.folder, self.data)

    def close(self) -> None:
        self.stop.set()
        self.save()


# ----------------------------------------------------------------------------- the stages
# Starting and stopping Ray around a search stage, which Tune's time budget does not count
# (measured here: 8-12 s on 2 cores); nothing when Ray is already up (a notebook, a cluster).
RAY_OVERHEAD_S = 10.0


def ray_overhead() -> float:
    import ray

    return 0.0 if ray.is_initialized() else RAY_OVERHEAD_S


def stage_search(s: SearchSettings, seconds: float, resume: bool) -> Any:
    from search.run import run_search

    return run_search(replace(s, time_budget=f"{max(1.0, seconds - ray_overhead()):.0f}s", resume=resume,
                              extra={**s.extra, "given": None} if resume else s.extra))


def ranked_configs(folder: Path) -> list[tuple[str, dict[str, Any], float]]:
    """(trial id, config, best val_acc) of an experiment's trials, best first (`records.rank`)."""
    from search.records import config_from_row, number, rank, read_trials

    return [(r["trial_id"], config_from_row(r), number(r["best_val_acc"])) for r in rank(read_trials(folder))]


def parse_pick(text: str) -> tuple[str, float | None]:
    """--pick: ('best' | 'knee', None) or ('under', N); N may end in k, M or G.

    >>> parse_pick("knee"), parse_pick("under:1.5M"), parse_pick("under:2")
    (('knee', None), ('under', 1500000.0), ('under', 2.0))
    """
    if text in ("best", "knee"):
        return text, None
    match = re.fullmatch(r"under:(\d+(?:\.\d+)?)([kKmMgG]?)", text)
    if not match:
        raise UserError(f"--pick must be best, knee or under:N (e.g. under:1M), got {text!r}")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2).lower()]
    return "under", float(match.group(1)) * scale


def trial_costs(folder: Path, objective: str) -> dict[str, float]:
    """Each trial's cost on `objective` (its trials.csv column), where recorded."""
    from search.records import COST_COLUMN, number, read_trials

    column = COST_COLUMN[objective]
    return {r["trial_id"]: number(r.get(column)) for r in read_trials(folder) if number(r.get(column)) is not None}


def knee_first(ids: list[str], accuracy: dict[str, float], costs: dict[str, float]) -> list[str]:
    """`ids` with the front of (accuracy, cost) among them ordered from its knee outwards
    (nearest on the front first), then the others in the order given."""
    from search.pareto import front_indices, knee

    scored = [t for t in ids if t in accuracy and t in costs]
    front = sorted((scored[i] for i in front_indices([(accuracy[t], -costs[t]) for t in scored])),
                   key=lambda t: costs[t])
    at = knee([(accuracy[t], costs[t]) for t in front])
    near = sorted(range(len(front)), key=lambda i: (abs(i - at), i)) if at is not None else []
    head = [front[i] for i in near]
    return head + [t for t in ids if t not in head]


def candidates(s: SearchSettings, a: AutoSettings) -> list[tuple[str, dict[str, Any], float]]:
    """The configs the confirm stage trains: the search's top --confirm by --pick."""
    rule, limit = parse_pick(a.pick)
    ranked = ranked_configs(s.folder)
    objective = s.minimize or "params"
    costs = trial_costs(s.folder, objective)
    if rule == "under":
        ranked = [r for r in ranked if costs.get(r[0]) is not None and costs[r[0]] <= limit]
        if not ranked:
            cheapest = min(costs.values(), default=None)
            raise UserError(f"--pick {a.pick}: no trial of the search costs at most {limit:,.6g} {objective} "
                            f"(the cheapest: {cheapest if cheapest is None else f'{cheapest:,.6g}'})")
    elif rule == "knee":
        by_id = {r[0]: r for r in ranked}
        ranked = [by_id[t] for t in knee_first(list(by_id), {t: r[2] for t, r in by_id.items()}, costs)]
    return ranked[:a.confirm]


CONFIRM_SPACE = '''"""The confirm stage's space: one of the search's top configs, each run once (warm starts)."""
CANDIDATES = {candidates!r}
WARM_START = [{{"candidate": i}} for i in range(len(CANDIDATES))]


def space(trial):
    return dict(CANDIDATES[trial.suggest_categorical("candidate", list(range(len(CANDIDATES))))])
'''


def fitting(s: SearchSettings, top: list[tuple[str, dict[str, Any], float]], epochs: int,
            seconds: float) -> list[tuple[str, dict[str, Any], float]]:
    """The first of the search's top configs whose confirm runs fit in `seconds` (at least two):
    each needs `epochs` epochs at the epoch time the search measured for it, and the stage
    runs as many at once as the search did. Cutting every one of K configs halfway would
    confirm nothing; fewer configs run to the horizon do."""
    import statistics

    from search.records import read_history

    times: dict[str, list[float]] = {}
    for h in read_history(s.folder):
        if h.get("epoch_seconds"):
            times.setdefault(h["trial_id"], []).append(h["epoch_seconds"])
    _, concurrent = planned_concurrency(s)
    needs = [epochs * statistics.median(times.get(trial_id) or [0.0]) / concurrent for trial_id, _, _ in top]
    count = len(top)
    while count > 2 and sum(needs[:count]) > seconds * SAFETY:
        count -= 1
    if count < len(top):
        print(f"confirm: {count} of the top {len(top)} configs fit in {seconds / 60:.1f} min at {epochs} epochs",
              flush=True)
    if sum(needs[:count]) > seconds:
        print(f"confirm: the top {count} need about {sum(needs[:count]) / 60:.1f} min at {epochs} epochs and the "
              f"stage has {seconds / 60:.1f}: the deadline will cut them (a larger confirm share in --shares "
              "lets them finish)", flush=True)
    return top[:count]


def stage_confirm(s: SearchSettings, a: AutoSettings, seconds: float, resume: bool) -> dict[str, Any]:
    """Train the search's top configs at the longer horizon, as a search experiment of its own."""
    from search.run import run_search

    top = fitting(s, candidates(s, a), a.confirm_factor * s.max_epochs, seconds)
    if not top:
        raise UserError("the search finished no epoch: nothing to confirm (give it more --time-budget)")
    folder = s.folder / "confirm"
    space = s.folder / "confirm_space.py"
    if not resume or not space.exists():
        chosen = [{k: v for k, v in config.items() if k not in ("epochs", "seed")} for _, config, _ in top]
        space.write_text(CONFIRM_SPACE.format(candidates=chosen))
    horizon = a.confirm_factor * s.max_epochs
    confirm = SearchSettings(
        name="confirm", storage=str(s.folder), gpus=s.gpus, cpus=s.cpus, gpus_per_trial=s.gpus_per_trial,
        cpus_per_trial=s.cpus_per_trial, address=s.address, trials=len(top), max_epochs=horizon, scheduler="fifo",
        sampler="random", param_budget=s.param_budget, space=str(space), seed=s.seed, dataset=s.dataset,
        data_dir=s.data_dir, val_fraction=s.val_fraction, subset=s.subset, compile=s.compile,
        checkpoint_every=s.checkpoint_every, max_failures=s.max_failures, verbose=s.verbose,
        time_budget=f"{max(1.0, seconds - ray_overhead()):.0f}s",
        resume=resume and (folder / "settings.json").exists())
    run_search(confirm)
    search_order = [trial_id for trial_id, _, _ in top]
    confirmed = ranked_configs(folder)

    def key(config: dict[str, Any]) -> str:
        return repr(sorted((k, v) for k, v in config.items() if k not in ("epochs", "seed")))

    # Each confirm trial is one of the search's configs: name it by the search trial it came from.
    by_config = {key(c): t for t, c, _ in top}
    order = [by_config.get(key(c), t) for t, c, _ in confirmed]
    confirm_val = {o: v for o, (_, _, v) in zip(order, confirmed)}
    if parse_pick(a.pick)[0] == "knee":  # the knee of the confirmed figures goes first
        order = knee_first(order, confirm_val, trial_costs(s.folder, s.minimize or "params"))
    return {
        "pick": a.pick,
        "objective": s.minimize or "params",
        "search_order": search_order,
        "search_val_acc": {t: v for t, _, v in top},
        "confirm_order": order,
        "confirm_val_acc": confirm_val,
        "confirm_epochs": horizon,
        "kendall_tau": kendall_tau(search_order, order),
        "pick_changed": bool(order) and order[0] != search_order[0],
        "configs": {t: c for t, c, _ in top},
    }


def retrain_epochs(s: SearchSettings, a: AutoSettings, seconds: float, winner: str) -> tuple[int, float]:
    """Epochs of the retrain that fit in `seconds`: from the winner's measured epoch time (the
    confirm stage's, else the search's), scaled to train + val, with the safety margin."""
    import statistics

    from search.records import read_history

    times = [h["epoch_seconds"] for folder in (s.folder / "confirm", s.folder) for h in read_history(folder)
             if h["trial_id"] == winner and h.get("epoch_seconds")]
    if not times:
        times = [h["epoch_seconds"] for h in read_history(s.folder) if h.get("epoch_seconds")]
    epoch_s = statistics.median(times) / (1 - s.val_fraction) if times else 1.0
    return max(1, min(MAX_RETRAIN_EPOCHS, int(seconds * SAFETY / epoch_s))), epoch_s


def stage_retrain(s: SearchSettings, a: AutoSettings, seconds: float, order: list[str],
                  configs: dict[str, dict[str, Any]], seeds: int, resume: bool,
                  record: Record) -> dict[str, Any]:
    """Retrain the confirmed winner; if every seed diverges, the next config while time remains."""
    import torch

    from search.retrain import retrain
    from trainable.data import DataSpec

    final = s.folder / "final"
    deadline = time.time() + seconds
    tried = []
    for trial_id in order:
        left = deadline - time.time()
        epochs, epoch_s = retrain_epochs(s, a, left, trial_id)
        if tried and left < epoch_s * 1.2:
            break  # no time for another config
        config = {**configs[trial_id], "epochs": epochs}
        spec = DataSpec(s.dataset, s.data_dir, val_fraction=0.0, split_seed=config["seed"], subset=s.subset)
        folders = [final] if seeds == 1 else [final / f"seed_{i}" for i in range(seeds)]
        again = resume and not tried and all((f / "checkpoint.pt").exists() for f in folders)
        if again:
            from trainable.cli import read_json

            saved = read_json(folders[0] / "metrics.json", "metrics file")
            config = {**config, "epochs": saved["config"]["epochs"]}
        elif final.exists():
            shutil.rmtree(final)  # a retrain killed before every seed had a checkpoint starts over
        print(f"retrain: trial {trial_id} for {config['epochs']} epochs x {seeds} seed(s) "
              f"(about {epoch_s:.1f} s an epoch)", flush=True)
        parallel = seeds > 1 and torch.cuda.device_count() > 1
        result = retrain(config, spec, final, seeds=seeds, ema_decay=0.999, resume=again, compile_model=s.compile,
                         parallel=parallel)
        tried.append({"trial_id": trial_id, "epochs": config["epochs"], "status": result["status"]})
        if result["status"] != "diverged":
            return {"trial_id": trial_id, "epochs": config["epochs"], "seeds": seeds, "tried": tried,
                    **{k: v for k, v in result.items() if k.startswith("test_acc")}}
        print(f"retrain: every seed of trial {trial_id} diverged; trying the next confirmed config", flush=True)
        record.save()
    raise UserError("every retrained seed diverged and no time is left for another config; "
                    f"see {final / 'metrics.json'}")


def stage_predict(s: SearchSettings, a: AutoSettings) -> dict[str, Any]:
    from search.predict import predict_labels, read_input, write_submission

    final = s.folder / "final"
    images, ids = read_input(Path(a.input))
    labels = predict_labels(final, images, tta=True, use_ema=True)
    write_submission(Path(a.out), ids, labels.tolist())
    return {"submission": str(Path(a.out).resolve()), "rows": len(ids)}


# ----------------------------------------------------------------------------- the command
def run_auto(s: SearchSettings, a: AutoSettings) -> dict[str, Any]:
    """Plan, then run (or resume) the four stages; return auto.json's content."""
    from search.records import read_auto
    from search.run import absolute_paths, check_settings, load_search_data

    started = time.time()
    if not s.time_budget:
        raise UserError("--time-budget is required: the deadline the whole run is planned against")
    total = parse_duration(s.time_budget)
    check_settings(s)
    s = absolute_paths(s)
    saved = read_auto(s.folder)
    # A resume may write the --out that the run it continues was writing.
    writing = bool(saved) and s.resume and Path(saved["auto"]["out"]) == Path(a.out).resolve()
    check_inputs(replace(a, force=a.force or writing))
    a = replace(a, input=str(Path(a.input).resolve()), out=str(Path(a.out).resolve()))
    if s.resume and saved is None:
        raise UserError(f"nothing to resume: {s.folder} has no auto.json")
    if not s.resume and s.folder.exists() and any(s.folder.iterdir()):
        raise UserError(f"experiment {s.folder} already exists; pass --resume to continue it, or choose another --name")
    data, _ = load_search_data(s)
    gpus, concurrent = planned_concurrency(s)
    images = min(s.subset or len(data.images), len(data.images))
    epoch_s = probe_epoch_seconds(s, int(images * (1 - s.val_fraction)), gpus)
    plan = make_plan(s, a, total, concurrent, epoch_s, gpus)
    minimum = (s.grace + 1) * epoch_s / (1 - s.val_fraction) * 2 + 30
    startup = time.time() - started
    print(plan.describe(), flush=True)
    print(f"start-up (data, Ray, probe) took {startup:.0f} s", flush=True)
    if total < minimum:
        raise UserError(f"--time-budget {s.time_budget} is too short for one trial and one retrain epoch here: "
                        f"give at least {minimum / 60:.1f} min ({minimum:.0f} s)")
    if a.dry_run:
        return {"plan": asdict(plan), "dry_run": True}

    data_record = saved or {"plan": asdict(plan), "auto": asdict(a), "stages": {}, "running": None,
                            "time_budget_s": total, "startup_s": round(startup, 1)}
    s.folder.mkdir(parents=True, exist_ok=True)
    record = Record(s.folder, data_record)
    plan_seconds = data_record["plan"]["seconds"]
    try:
        for stage in STAGES:
            entry = data_record["stages"].get(stage, {})
            if entry.get("status") == "done":
                continue
            resume = s.resume and entry.get("status") == "running"
            if stage == "search":  # killed before the search wrote its settings: it starts afresh
                from search.records import SETTINGS

                resume = resume and (s.folder / SETTINGS).exists()
            # What is left of the deadline, shared among this stage and the ones after it
            # in the plan's proportions: a late stage takes from the next, not the deadline.
            left = total - record.used()
            later = [st for st in STAGES[STAGES.index(stage):]]
            weight = sum(plan_seconds[st] for st in later) or 1.0
            seconds = max(1.0, left * plan_seconds[stage] / weight) if stage != "retrain" else \
                max(1.0, left - plan_seconds["predict"] * left / weight)
            record.start(stage, seconds)
            print(f"\n== {stage}: {seconds / 60:.1f} min", flush=True)
            if stage == "search":
                outcome = stage_search(s, seconds, resume)
                record.finish(stage, trials=outcome.counts, best=outcome.best and outcome.best["trial_id"])
            elif stage == "confirm":
                record.finish(stage, **stage_confirm(s, a, seconds, resume))
            elif stage == "retrain":
                confirm = record.data["stages"]["confirm"]
                order = confirm["confirm_order"] or confirm["search_order"]
                result = stage_retrain(s, a, seconds, order, confirm["configs"], plan.seeds, resume, record)
                record.finish(stage, **result)
            else:
                record.finish(stage, **stage_predict(s, a))
    finally:
        record.close()
    from analysis.report import make_report

    record.data["report"] = str(make_report(s.folder, s.folder / "report")["report.md"])  # with the stage table
    record.data["wall_s"] = round(time.time() - started, 1)
    record.save()
    return record.data


def summary(result: dict[str, Any], folder: Path) -> str:
    stages = result["stages"]
    retrained = stages["retrain"]
    confirm = stages["confirm"]
    spread = f" ± {retrained.get('test_acc_ema_tta_std', 0.0):.4f}" if retrained["seeds"] > 1 else ""
    lines = ["", f"done in {result['wall_s'] / 60:.1f} min of {result['time_budget_s'] / 60:.1f} "
                 f"(start-up {result['startup_s']:.0f} s)"]
    for stage in STAGES:
        st = stages[stage]
        lines.append(f"  {stage:<8} planned {st.get('planned_s', 0) / 60:5.1f} min, used {st.get('used_s', 0) / 60:5.1f}")
    tau = confirm.get("kendall_tau")
    if confirm.get("pick", "best") != "best":
        lines.append(f"pick: {confirm['pick']} (of the search's front by {confirm.get('objective', 'params')})")
    lines += [f"confirm: Kendall tau {tau if tau is None else round(tau, 2)} between the search's order and the "
              f"confirm stage's; the pick {'changed' if confirm['pick_changed'] else 'held'}",
              f"retrained trial {retrained['trial_id']} for {retrained['epochs']} epochs x {retrained['seeds']} seed(s): "
              f"test accuracy (EMA + TTA, read once at the end) {retrained.get('test_acc_ema_tta_mean', float('nan')):.4f}"
              f"{spread}",
              f"submission: {stages['predict']['submission']} ({stages['predict']['rows']} rows)",
              "next:", f"  python -m analysis.table {folder}", f"  open {result['report']}",
              f"  python -m analysis.table {folder / 'confirm'}"]
    return "\n".join(lines)


def parse_shares(text: str) -> dict[str, float]:
    """'0.5,0.2,0.27,0.03' -> the four stage shares."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--shares takes four numbers, e.g. 0.5,0.2,0.27,0.03; got {text!r}") from None
    if len(values) != len(STAGES):
        raise UserError(f"--shares takes four numbers (search, confirm, retrain, predict), got {len(values)}")
    return dict(zip(STAGES, values))


def build_auto_parser() -> Any:
    p = build_parser()
    p.prog = "python -m search.auto"
    p.description = __doc__.split("\n\n")[0]
    g = p.add_argument_group("search.auto: from data to submission under --time-budget (required)")
    g.add_argument("--input", metavar="PATH", help="unlabelled images to predict: pickle with b'data' and b'ids', .npy, or a folder")
    g.add_argument("--out", dest="auto_out", metavar="CSV", default="submission.csv",
                   help="the submission CSV (default submission.csv)")
    g.add_argument("--confirm", type=int, default=4, help="top search configs trained again at the longer horizon (default 4)")
    g.add_argument("--confirm-factor", type=int, default=3, help="the confirm horizon as a multiple of --max-epochs (default 3)")
    g.add_argument("--seeds", type=int, help="retrain seeds (default: one per GPU, so they cost no wall time; 1 on a CPU)")
    g.add_argument("--shares", help="shares of the deadline for search, confirm, retrain, predict "
                                    f"(default {','.join(str(v) for v in DEFAULT_SHARES.values())})")
    g.add_argument("--pick", default="best",
                   help="which model of the search to confirm, retrain and submit: best (highest val_acc), knee "
                        "(the knee of the front of val_acc against --minimize's cost, params without it) or "
                        "under:N (the best costing at most N, e.g. under:1M params) (default best)")
    g.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    g.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    return p


def options_from_parsed(args: dict[str, Any]) -> tuple[SearchSettings, AutoSettings]:
    """(search settings, auto settings) from `build_auto_parser`'s parsed flags."""
    args = dict(args)
    auto = AutoSettings(input=args.pop("input") or "", out=args.pop("auto_out"), confirm=args.pop("confirm"),
                        confirm_factor=args.pop("confirm_factor"), seeds=args.pop("seeds"),
                        shares=parse_shares(args.pop("shares")) if args.get("shares") else dict(DEFAULT_SHARES),
                        dry_run=args.pop("dry_run"), force=args.pop("force"), pick=args.pop("pick"))
    args.pop("shares", None)
    return settings_from_parsed(args), auto


def main(argv: Sequence[str] | None = None) -> int:
    settings, auto = options_from_parsed(vars(build_auto_parser().parse_args(argv)))
    result = run_auto(settings, auto)
    if result.get("dry_run"):
        return 0
    print(summary(result, settings.folder))
    return 0


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
