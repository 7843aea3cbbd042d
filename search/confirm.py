"""The confirm stage of `search.auto`: the search's top configs, and the fixed recipe, trained
again to the end of a longer horizon and ranked on validation.

Short ASHA rungs favour what learns fast, not what ends best, so the pick is made again at
length. It is a search experiment of its own (`runs/NAME/confirm/`, FIFO, one trial per
config): it packs across GPUs, is cut by its deadline and resumes like any search. Only
runs that reached the horizon are compared on their figures (runs cut at different points
of their schedules are not comparable); the others keep the search's order after them.
The fixed recipe (`trainable.zoo.DEADLINE_RECIPE` in the budget) competes as trial
"recipe", so a known-good config is always weighed at length, and for `--pick best` it
stays first unless a candidate beats it by more than the noise of the validation set
(`noise_margin`): in benchmark 11 a pick that led the recipe by 8 of 200 validation images
lost to it by 7.5 points on the test set.
"""

from __future__ import annotations

import math
import shutil
import statistics
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from trainable.checkpoint import write_json
from trainable.cli import parse_count
from trainable.config import with_defaults
from trainable.errors import UserError

if TYPE_CHECKING:
    from search.records import TrialRow

RECIPE_ID = "recipe"


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


def parse_pick(text: str) -> tuple[str, float | None]:
    """--pick: ('best' | 'knee', None) or ('under', N); N may end in k, M or G.

    >>> parse_pick("knee"), parse_pick("under:1.5M"), parse_pick("under:2")
    (('knee', None), ('under', 1500000.0), ('under', 2.0))
    """
    if text in ("best", "knee"):
        return text, None
    try:
        if not text.startswith("under:"):
            raise ValueError(text)
        return "under", parse_count(text[len("under:"):])
    except ValueError:
        raise UserError(f"--pick must be best, knee or under:N (e.g. under:1M), got {text!r}") from None


def ranked_configs(rows: list[TrialRow]) -> list[tuple[str, dict[str, Any], float]]:
    """(trial id, config, best val_acc) of an experiment's trials (its `read_trials` rows),
    best first (`records.rank`)."""
    from search.records import rank

    return [(r.trial_id, r.run_config, r.best_val_acc) for r in rank(rows)]


def trial_costs(rows: list[TrialRow], objective: str) -> dict[str, float]:
    """Each trial's cost on `objective`, where recorded."""
    return {r.trial_id: r.cost(objective) for r in rows if r.cost(objective) is not None}


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


def candidates(rows: list[TrialRow], pick: str, count: int, objective: str
               ) -> list[tuple[str, dict[str, Any], float]]:
    """The search's top `count` configs (of its `read_trials` rows) by the --pick rule."""
    rule, limit = parse_pick(pick)
    ranked = ranked_configs(rows)
    costs = trial_costs(rows, objective)
    if rule == "under":
        ranked = [r for r in ranked if costs.get(r[0]) is not None and costs[r[0]] <= limit]
        if not ranked:
            cheapest = min(costs.values(), default=None)
            raise UserError(f"--pick {pick}: no trial of the search costs at most {limit:,.6g} {objective} "
                            f"(the cheapest: {cheapest if cheapest is None else f'{cheapest:,.6g}'})")
    elif rule == "knee":
        by_id = {r[0]: r for r in ranked}
        ranked = [by_id[t] for t in knee_first(list(by_id), {t: r[2] for t, r in by_id.items()}, costs)]
    return ranked[:count]


def unconfirmed(search_order: list[str], pick: str, recipe: bool) -> dict[str, Any]:
    """The confirm stage's facts when it could not run: a pick at the search's short horizon
    is not trusted over the fixed recipe for --pick best (in benchmark 11 one lost to it by
    8.5 points); a cost-aware pick (knee, under:N) keeps the search's order, the recipe last."""
    first = [RECIPE_ID] if recipe and parse_pick(pick)[0] == "best" else []
    last = [RECIPE_ID] if recipe and not first else []
    return {"skipped": True, "confirm_order": first + search_order + last, "confirm_val_acc": {},
            "kendall_tau": None, "pick_changed": bool(first)}


def noise_margin(accuracy: float, images: int) -> float:
    """Two standard errors of an accuracy measured on `images` validation images: what a
    candidate must beat the recipe by to be trusted over it.

    The accuracy is taken with two right and two wrong answers added (Agresti-Coull), so a
    recipe at 0 or 1 still has a margin: 0 of 50 right does not make any lead certain.

    >>> round(noise_margin(0.4, 200), 3), round(noise_margin(0.4, 5000), 4)
    (0.069, 0.0139)
    >>> round(noise_margin(1.0, 50), 3), round(noise_margin(0.0, 50), 3)
    (0.051, 0.051)
    """
    n = max(1, images)
    p = (min(1.0, max(0.0, accuracy)) * n + 2) / (n + 4)
    return 2 * math.sqrt(p * (1 - p) / (n + 4))


def recipe_unless_beaten(order: list[str], confirm_val: dict[str, float], val_images: int
                         ) -> tuple[list[str], float | None]:
    """(`order` with the recipe first unless the confirmed first beats it by more than
    `noise_margin`, that margin); the order as given, and None, where the recipe or the
    first was not confirmed."""
    if not order or order[0] == RECIPE_ID or RECIPE_ID not in confirm_val or order[0] not in confirm_val:
        return order, None
    margin = noise_margin(confirm_val[RECIPE_ID], val_images)
    if confirm_val[order[0]] - confirm_val[RECIPE_ID] > margin:
        return order, margin
    return [RECIPE_ID] + [t for t in order if t != RECIPE_ID], margin


def fitting_candidates(folder: Path, top: list[tuple[str, dict[str, Any], float]], others: list[str], epochs: int,
                       seconds: float, concurrent: int, fallback_s: float, search_horizon: int
                       ) -> tuple[list[tuple[str, dict[str, Any], float]], int]:
    """(the top candidates that run with `others` to `CONFIRM_MULTIPLE` times `search_horizon`,
    their horizon): the lowest ranked are left out until they do (`fitting_epochs`), down to
    the best alone. The search's epoch times can be slower than the plan's estimate, and the
    search's best against the recipe is the comparison that matters most. The time the search
    took to its first epoch (`start_seconds`) is kept back: the stage starts its trials anew."""
    from search.plan import CONFIRM_MULTIPLE
    from search.records import read_history

    history = read_history(folder)  # read once, not once per try
    measured = measured_epoch_seconds(history)
    # The stage pays again what the search paid before its first epoch (Tune's set-up, the
    # trial workers starting, the data): 3-4 s of an 8 s stage in the tests' short runs.
    seconds = max(0.0, seconds - start_seconds(folder, history))
    top = list(top)
    while True:
        per_epoch = [measured.get(t, fallback_s) for t, _, _ in top] + [measured.get(t, fallback_s) for t in others]
        horizon = fitting_epochs(per_epoch, epochs, seconds, concurrent)
        if horizon >= CONFIRM_MULTIPLE * search_horizon or len(top) <= 1:
            return top, horizon
        top = top[:-1]


def config_key(config: dict[str, Any]) -> str:
    """A config by every key, defaults filled in (the recipe names only a few), less its
    epochs and seed: the same model and training whatever horizon it runs to."""
    return repr(sorted((k, v) for k, v in with_defaults(config).items() if k not in ("epochs", "seed")))


def measured_epoch_seconds(history: list[dict[str, Any]]) -> dict[str, float]:
    """Each trial's median epoch seconds, from the search's history.csv (`read_history`)."""
    times: dict[str, list[float]] = {}
    for h in history:
        if h.get("epoch_seconds"):
            times.setdefault(h["trial_id"], []).append(h["epoch_seconds"])
    return {trial_id: statistics.median(seconds) for trial_id, seconds in times.items()}


def start_seconds(folder: Path, history: list[dict[str, Any]]) -> float:
    """Seconds from the start of the search's first run with a result to the start of its
    first epoch: what a new search stage pays before it trains. 0 where none is recorded.
    Each run is read within its own span (drivers.json), so the downtime between a killed
    run and its resume is not counted."""
    from search.records import read_drivers

    for run in read_drivers(folder):
        started, last = float(run["started"]), float(run["last"]) + 1.0
        ends = [h["wall_time"] - (h.get("epoch_seconds") or 0.0) for h in history
                if h.get("wall_time") is not None and started <= h["wall_time"] <= last]
        if ends:
            return max(0.0, min(ends) - started)
    return 0.0


def fitting_epochs(per_epoch: list[float], epochs: int, seconds: float, concurrent: int) -> int:
    """The longest horizon up to `epochs` at which candidates of these epoch seconds each run
    to their end in `seconds`, `concurrent` at a time."""
    from search.plan import SAFETY

    # Trials run `concurrent` at a time: the slowest of each wave sets its pace.
    ordered = sorted(per_epoch, reverse=True)
    wave_s = sum(ordered[i] for i in range(0, len(ordered), max(1, concurrent)))
    return min(epochs, int(seconds * SAFETY / max(1e-9, wave_s)))


def stage_confirm(s: Any, pick: str, count: int, epochs: int, seconds: float, resume: bool,
                  recipe: dict[str, Any] | None, epoch_s: float, concurrent: int, val_images: int = 0
                  ) -> dict[str, Any]:
    """Train the search's top `count` configs (by `pick`) and `recipe` for `epochs` epochs (fewer
    if the measured epoch times say they would not finish in `seconds`), then rank them on
    `val_images` validation images (the recipe first within their noise, for `--pick best`)."""
    from search.plan import CONFIRM_MULTIPLE
    from search.tune.resources import ray_overhead, ray_stop_seconds
    from search.records import Status, read_trials
    from search.run import run_search
    from search.settings import SearchSettings

    overhead = ray_overhead(s.address)  # Ray started (or joined) and stopped around the stage
    search_rows = read_trials(s.folder)  # read once: the candidates, the recipe's twin, the costs
    top = candidates(search_rows, pick, count, s.minimize or "params")
    if not top:
        raise UserError("the search finished no epoch: nothing to confirm (give it more --time-budget)")
    recipe_entry = [(RECIPE_ID, {**recipe, "seed": s.seed}, float("nan"))] if recipe else []
    folder = s.folder / "confirm"
    # The recipe's epoch is timed where the search ran it (as a warm start, the same config),
    # else estimated at the plan's `epoch_s`.
    twins = {config_key(c): t for t, c, _ in ranked_configs(search_rows)}
    others = [twins.get(config_key(c), t) for t, c, _ in recipe_entry]
    top, horizon = fitting_candidates(s.folder, top, others, epochs, seconds - overhead, concurrent, epoch_s,
                                      s.max_epochs)
    if len(top) < count and horizon >= CONFIRM_MULTIPLE * s.max_epochs:
        print(f"confirm: the top {len(top)} config(s) of {count} and the recipe fit {horizon} epochs in "
              f"{seconds / 60:.1f} min at the epoch times the search measured", flush=True)
    entries = list(top) + recipe_entry
    search_order = [trial_id for trial_id, _, _ in top]
    outcome: dict[str, Any] = {"pick": pick, "objective": s.minimize or "params", "search_order": search_order,
                               "search_val_acc": {t: v for t, _, v in top}, "confirm_epochs": horizon,
                               "configs": {t: c for t, c, _ in entries}}
    if horizon < CONFIRM_MULTIPLE * s.max_epochs:  # near the search's own horizon: nothing to learn
        print(f"confirm: skipped; the candidates would reach only {horizon} epochs in {seconds / 60:.1f} min, "
              f"fewer than {CONFIRM_MULTIPLE}x the search's {s.max_epochs}", flush=True)
        return {**outcome, **unconfirmed(search_order, pick, bool(recipe))}
    if folder.exists() and not (folder / "settings.json").exists():
        shutil.rmtree(folder)  # killed before its settings were written: nothing in it to keep
    # The candidates, each run once (`search.tune.space.CandidateSpace`), kept in the experiment so a
    # resumed stage runs the same ones.
    space = s.folder / "confirm_candidates.json"
    if not resume or not space.exists():
        chosen = [{k: v for k, v in config.items() if k not in ("epochs", "seed")} for _, config, _ in entries]
        # `trial_ids`: the search's id of each candidate (its confirm trial gets an id of its own).
        write_json(space, {"candidates": chosen, "trial_ids": [t for t, _, _ in entries]})
    confirm = SearchSettings(
        name="confirm", storage=str(s.folder), gpus=s.gpus, cpus=s.cpus, gpus_per_trial=s.gpus_per_trial,
        cpus_per_trial=s.cpus_per_trial, address=s.address, trials=len(entries), max_epochs=horizon,
        scheduler="fifo", sampler="random", param_budget=s.param_budget, space=str(space), seed=s.seed,
        dataset=s.dataset, data_dir=s.data_dir, val_fraction=s.val_fraction, subset=s.subset, compile=s.compile,
        checkpoint_every=s.checkpoint_every, max_failures=s.max_failures, verbose=s.verbose,
        time_budget=f"{max(1.0, seconds - ray_stop_seconds(s.address)):.1f}s",
        resume=resume and (folder / "settings.json").exists(), extra={"stage": "auto: confirm"})
    run_search(replace(confirm))

    # Each confirm trial is one of the candidates: name it by the search trial it came from.
    by_config = {config_key(c): t for t, c, _ in entries}
    confirm_rows = read_trials(folder)
    finished = {r.trial_id for r in confirm_rows if r.status == Status.COMPLETED}
    # Each confirm trial's id mapped back to the search trial (or "recipe") it trained again.
    mapping = {r.trial_id: by_config.get(config_key(r.run_config), r.trial_id) for r in confirm_rows}
    confirmed = [(mapping[t], v, t in finished) for t, _, v in ranked_configs(confirm_rows)]
    ended = [t for t, _, done in confirmed if done]
    order = ended + [t for t, _, _ in entries if t not in ended]
    confirm_val = {t: v for t, v, done in confirmed if done}
    margin, kept = None, False
    if parse_pick(pick)[0] == "knee":  # the knee of the confirmed figures goes first
        order = knee_first(order, confirm_val, trial_costs(search_rows, s.minimize or "params"))
    elif parse_pick(pick)[0] == "best" and val_images:
        leader = order[0] if order else None
        order, margin = recipe_unless_beaten(order, confirm_val, val_images)
        kept = margin is not None and order[0] != leader
        if kept:
            print(f"confirm: trial {leader} led the recipe by {confirm_val[leader] - confirm_val[RECIPE_ID]:.3f}, "
                  f"within the noise of {val_images} validation images ({margin:.3f}); the recipe stays first",
                  flush=True)
    if len(ended) < len(entries):
        print(f"confirm: {len(ended)} of {len(entries)} candidates reached {horizon} epochs; only those are ranked "
              "on their figures", flush=True)
    return {**outcome, "confirm_order": order, "confirm_val_acc": confirm_val, "confirm_ended": ended,
            "confirm_trial_ids": mapping, "noise_margin": margin, "recipe_kept": kept,
            "kendall_tau": kendall_tau(search_order, order), "pick_changed": bool(order) and order[0] != search_order[0]}
