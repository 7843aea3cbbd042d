"""The plan of `search.auto`: how one deadline is split, from times measured on this machine.

What the plan measures before anything runs (the start-up, reported apart):
- an epoch of the search's trials: the mean over `SPACE_DRAWS` random configs of the space,
  a few timed steps each, as a trial runs them (one middle-sized config is not the space's
  average: deep, narrow draws are slow for their size on a CPU, and in benchmark 11 the
  middle config's 9.7 s an epoch stood for draws of 9 to 41 s, 15 on average);
- an epoch of a middle-sized config as the retrain runs it (every CPU thread), the unit of
  "epochs the deadline holds";
- a prediction of the real `--input` with TTA (a timed pass over a slice of it, scaled).

What it decides from them:
- **whether a search pays.** Under a short deadline the epochs of the final model are what
  pays (README, benchmark 11: on 3,000 CIFAR-10 images a fixed recipe trained for the whole
  deadline beat a search that left its final model 9 epochs). When the deadline holds fewer
  than `SEARCH_PAYS_EPOCHS` epochs of the middle config, the plan trains the fixed recipe
  (`trainable.zoo.DEADLINE_RECIPE` scaled into the budget) for all of it, and says so; the
  recipe is halved (down to a quarter of the budget) while at its size the deadline would
  train fewer than `RECIPE_EPOCHS` epochs of it (`sized_recipe`, from timed steps of it);
- **otherwise the shares**: the retrain `RETRAIN_SHARE` of the time, or less when that is
  more than its `MAX_RETRAIN_EPOCHS` would use (with room for a winner `WINNER_SLOWDOWN`
  times slower than the middle config), the search and the confirm stage the rest; the ASHA
  horizon the longest that still runs `MIN_SEARCH_TRIALS` trials in the search's share (or
  `--max-epochs` when given); the confirm stage's horizon the longest at which every
  candidate, the fixed recipe among them, runs to its end (a comparison of runs cut at
  different points of their schedules would be noise), and at least `CONFIRM_MULTIPLE`
  times the search's; a `--trials` that needs less time
  than the share gives the rest to the retrain;
- **a search that cannot learn or cannot be checked is no search**: one whose share runs
  fewer than `MIN_SEARCH_TRIALS` trials (the sampler's random start-up plus
  `MIN_MODEL_PROPOSALS` of its model's), or one with no time to run its top configs and
  the fixed recipe to the end of a horizon `CONFIRM_MULTIPLE` times the search's (a pick
  from the search's short horizon against the recipe is what lost benchmark 11 at 20
  minutes); the recipe gets the time;
- **from what deadline it would search** (`search_from_s`, the summary says it): the
  shortest deadline at which these same rules give a search plan;
- **the predict stage's share**, from the timed pass over the input.

Every stage after the plan asks the clock again (`search.auto`): a late stage takes from the
next, and the retrain trains to whatever time is left (`trainable.loop.TimeBudget`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch

from search.tune.resources import RAY_OVERHEAD_S
from search.tune.sampler import STARTUP_LAUNCHED


STAGES = ("search", "confirm", "retrain", "predict")
# Below this many epochs of the middle config in the whole deadline, no search: the retrain
# gets the time. At 150, a search plan still leaves its retrain 75 epochs, where the known
# recipes' curves have flattened (README, benchmark 11 measures the split on 3,000 images).
SEARCH_PAYS_EPOCHS = 150
# The fixed recipe's size under a short deadline: on 3,000 CIFAR-10 images and 5 minutes here
# (one seed), the deadline recipe at 175k params trained 63 epochs (0.673 test accuracy), at
# 95k 84 epochs (0.680), at 44k 117 epochs (0.671). Fewer than ~80 epochs is where the
# epochs, not the width, limit it: a model that would train fewer than RECIPE_EPOCHS epochs
# in the time is halved, down to a quarter of the budget.
RECIPE_EPOCHS = 80
MIN_RECIPE_FILL = 0.25
MAX_RETRAIN_EPOCHS = 300  # the retrain trains to its time; this caps it on a fast machine (it then ends early)
RETRAIN_SHARE = 0.5  # of the time after the predict stage: the final model's epochs pay most
# The retrain's share is never more than its capped epochs would use: past that it would end
# early and the time be lost, where the search can spend it. Its winner may be slower than the
# middle config it is timed on: the space's draws ran 1.6x slower an epoch here (benchmark 11).
WINNER_SLOWDOWN = 1.5
CONFIRM_SHARE = 0.15  # the rest (0.35) is the search's; both grow alike when the retrain's share is capped
SPACE_DRAWS = 4  # random configs of the space timed for the search's epoch estimate
# The search learns once its sampler's model proposes: fewer trials in the share than the
# random start-up plus this many proposals of the model is a random search, so no search.
MIN_MODEL_PROPOSALS = 10
MIN_SEARCH_TRIALS = STARTUP_LAUNCHED + MIN_MODEL_PROPOSALS  # the ASHA horizon shrinks until the share runs them
# Not below this: a ranking after fewer epochs ranks how fast configs start, and in benchmark
# 11 (20 minutes) a pick at 12 epochs lost to the recipe at 80 (a judgement, not a measured edge).
MIN_HORIZON = 10
WEEK_S = 7 * 24 * 3600.0


# The timed pass is a slice of the input; the stage also reads the input, loads the model and
# writes the CSV. A slowdown of the machine is not in the margin: the retrain scales what it
# keeps back with the machine's speed now (`trainable.loop`).
PREDICT_MARGIN = 1.25
SAFETY = 0.85  # plan runs that must finish (confirm) to fill 85% of their time
# The confirm stage runs its candidates to at least this many times the search's horizon, or
# not at all: a ranking barely past the search's horizon is the search's ranking again (in
# benchmark 11, a confirm stage at 20 epochs against the search's 19 picked a config that
# lost to the recipe by 7.5 points once both trained 256 epochs).
CONFIRM_MULTIPLE = 2


@dataclass
class Plan:
    """How the deadline is split, and what each stage is expected to do with its share."""

    total_s: float
    seconds: dict[str, float]
    mode: str  # "search": search, confirm, retrain; "recipe": the fixed recipe for all the time
    reason: str
    max_epochs: int
    expected_trials: int
    confirm_configs: int
    confirm_epochs: int
    concurrent: int
    epoch_s_estimate: float
    predict_s_estimate: float
    retrain_epochs_estimate: int
    seeds: int
    trials: int
    recipe: dict[str, Any] = field(default_factory=dict)
    search_from_s: float = 0.0  # the shortest deadline at which this plan would search (0: none up to a week)
    retrain_epoch_s_estimate: float = 0.0  # a middle config's epoch as the retrain runs it


    @property
    def middle_epoch_s(self) -> float:
        """A middle config's epoch as the retrain runs it (a plan saved before it was timed apart: a trial's)."""
        return self.retrain_epoch_s_estimate or self.epoch_s_estimate

    def describe(self) -> str:
        middle = self.middle_epoch_s
        head = (f"plan for {self.total_s / 60:.1f} min (measured here: an epoch of a trial {self.epoch_s_estimate:.1f} s "
                f"(the space's draws, {self.concurrent} at once), of a middle-sized config alone {middle:.1f} s, a "
                f"prediction of the input with TTA {self.predict_s_estimate:.1f} s)")
        lines = [head, f"  {self.reason}"]
        if self.mode == "search":
            lines.append(f"  search   {self.seconds['search'] / 60:6.1f} min: ASHA to {self.max_epochs} epochs, "
                         f"about {self.expected_trials} trials")
            confirm = (f"the top {self.confirm_configs - 1} configs and the fixed recipe at {self.confirm_epochs} "
                       "epochs, each to its end, ranked on validation" if self.confirm_configs else
                       "skipped: too short to run candidates to the end")
            lines.append(f"  confirm  {self.seconds['confirm'] / 60:6.1f} min: {confirm}")
        what = "the winner"
        if self.mode == "recipe" and self.recipe:
            from trainable.model import count_params

            what = (f"the fixed recipe ({self.recipe.get('block', 'basic')} {self.recipe['blocks']} x "
                    f"{self.recipe['widths']}, {count_params(self.recipe):,} params)")
        epochs = min(self.retrain_epochs_estimate, MAX_RETRAIN_EPOCHS)
        capped = "; the cap, so it ends early" if self.retrain_epochs_estimate > MAX_RETRAIN_EPOCHS else ""
        lines.append(f"  retrain  {self.seconds['retrain'] / 60:6.1f} min: {what} on train + val, {self.seeds} "
                     f"seed(s), EMA, to the time left (about {epochs} epochs{capped}), the learning "
                     "rate following the elapsed share of the time")
        lines.append(f"  predict  {self.seconds['predict'] / 60:6.1f} min: EMA weights + TTA")
        return "\n".join(lines)


def asha_epochs_per_trial(grace: int, max_epochs: int, reduction_factor: int) -> float:
    """Epochs an average trial trains under ASHA: all reach the grace rung, 1/rf of them the
    next, and so on.

    >>> asha_epochs_per_trial(1, 1, 3), round(asha_epochs_per_trial(1, 9, 3), 2)  # 1 + 2/3 + 6/9
    (1.0, 2.33)
    """
    from search.records import milestones

    rungs = milestones(grace, max_epochs, reduction_factor)
    bounds = [m for m in rungs if m < max_epochs] + [max_epochs]
    return float(bounds[0]) + sum((hi - lo) / reduction_factor ** (k + 1) for k, (lo, hi) in enumerate(zip(bounds, bounds[1:])))


def probe_config(budget: int) -> dict[str, Any]:
    """The probe's model: [2,2,2] x [48,96,192] (the middle of the built-in space under 5M,
    1.1M params), narrowed to about half of a smaller budget.

    >>> probe_config(5_000_000)["widths"], probe_config(200_000)["widths"]
    ([48, 96, 192], [16, 32, 64])
    """
    from trainable.model import count_params
    from trainable.zoo import MIDDLE

    scale = math.sqrt(min(1.0, budget / 2 / count_params(MIDDLE)))  # params grow with width squared
    base = max(8, int(round(48 * scale / 8)) * 8)
    return {"blocks": list(MIDDLE["blocks"]), "widths": [base, 2 * base, 4 * base]}


def _device(gpus: int) -> torch.device:
    return torch.device("cuda" if gpus and torch.cuda.is_available() else "cpu")


def probe_epoch_seconds(budget: int, threads: int, train_images: int, gpus: int) -> float:
    """Seconds of one training epoch of a middle-sized config of the space on the search's
    device (on a CPU, with `threads` threads), from a few timed steps (the plan's estimate;
    the stages measure the real ones)."""
    return epoch_seconds({**probe_config(budget), "batch_size": 128}, threads, train_images, gpus)


def space_epoch_seconds(s: Any, num_classes: int, channels: int, train_images: int, gpus: int) -> float:
    """Seconds of one trial's epoch: the mean over `SPACE_DRAWS` random configs of the search's
    space (`--space` or the built-in one, its fixed keys set), each timed as a trial runs it
    (`s.cpus_per_trial` threads on a CPU)."""
    from search.run import search_space
    from search.tune.budget import draw_configs

    fixed, space, _ = search_space(s, num_classes, channels)
    configs = draw_configs(space, fixed, SPACE_DRAWS, s.seed, s.param_budget, num_classes, channels)
    if not configs:  # no draw fits (a user's space): the middle config stands for them
        return probe_epoch_seconds(s.param_budget, s.cpus_per_trial, train_images, gpus)
    return sum(epoch_seconds(c, s.cpus_per_trial, train_images, gpus) for c in configs) / len(configs)


def epoch_seconds(config: dict[str, Any], threads: int, train_images: int, gpus: int) -> float:
    """Seconds of one training epoch of `config` (its augmentation and batch size included)
    over `train_images` images, from a few timed steps on the device."""
    from trainable.config import with_defaults
    from trainable.data import make_synthetic, to_device
    from trainable.loop import Trainer

    device = _device(gpus)
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    steps, batch = 4, with_defaults(config)["batch_size"]
    data = to_device(make_synthetic(n_train=batch * (steps + 1), n_test=8), device, val_fraction=0.0)
    trainer = Trainer({**config, "epochs": 1, "warmup_epochs": 0}, data)
    trainer.steps_per_epoch = 1
    trainer.train_epoch()  # warm-up
    trainer.steps_per_epoch = steps
    start = time.perf_counter()
    trainer.train_epoch()
    per_image = (time.perf_counter() - start) / (steps * batch)
    torch.set_num_threads(before)
    return per_image * train_images


def predict_seconds(config: dict[str, Any], images: torch.Tensor, num_classes: int, gpus: int) -> float:
    """Seconds to predict `images` with TTA with a model of `config`'s shape, from a timed pass
    over a slice of them (what `search.predict` does, less reading the input)."""
    from trainable.augment import tta_views
    from trainable.model import build_model
    from trainable.train import forward_seconds

    device = _device(gpus)
    torch.manual_seed(0)
    model = build_model(config, num_classes, images.shape[1]).to(device)
    mean = torch.full((1, images.shape[1], 1, 1), 128.0, device=device)
    std = torch.full((1, images.shape[1], 1, 1), 64.0, device=device)
    return forward_seconds(model, images, mean, std, tta_views(config), len(images))


def sized_recipe(recipe: dict[str, Any], budget: int, seconds: float, time_epoch: Any,
                 num_classes: int = 10, in_channels: int = 3) -> tuple[dict[str, Any], float]:
    """The fixed recipe at the size the deadline trains well: filling `budget`, or halved
    (down to `MIN_RECIPE_FILL` of it) while the full size would train fewer than
    `RECIPE_EPOCHS` epochs in `seconds`. `time_epoch(config)`: its measured epoch seconds.
    Returns (config, the epochs it is expected to train)."""
    from trainable.zoo import fit_to_budget

    fill = 1.0
    config = fit_to_budget(recipe, budget, num_classes, in_channels)
    epochs = seconds / time_epoch(config)
    while epochs < RECIPE_EPOCHS and fill / 2 >= MIN_RECIPE_FILL:
        fill /= 2
        smaller = fit_to_budget(recipe, budget, num_classes, in_channels, fill=fill)
        config, epochs = smaller, seconds / time_epoch(smaller)
    return config, epochs


def fits_in(seconds: float, per_trial_epochs: float, epoch_s: float, concurrent: int, slowdown: float) -> int:
    """Trials of `per_trial_epochs` epochs each that fit in `seconds`, `concurrent` at a time."""
    return int(seconds * concurrent / max(1e-9, per_trial_epochs * epoch_s * slowdown))


def make_plan(s: Any, a: Any, total: float, concurrent: int, epoch_s: float, gpus: int,
              predict_s: float, retrain_epoch_s: float | None = None, overhead: float = RAY_OVERHEAD_S) -> Plan:
    """Split `total` seconds (see the module docstring). `s`: the search's settings; `a`:
    search.auto's; `epoch_s`: a trial's epoch on the search's training split (the space's
    draws, as a trial runs them); `retrain_epoch_s`: a middle config's epoch as the retrain
    runs it (alone, every CPU thread; default `epoch_s`); `predict_s`: the timed prediction
    of the input."""
    def split(seconds: float) -> Plan:
        return _split(s, a, seconds, concurrent, epoch_s, gpus, predict_s, retrain_epoch_s or epoch_s, overhead)

    plan = split(total)
    # The shortest deadline that searches, by bisection: the rules only tighten as the
    # deadline shrinks. 0 where no deadline up to a week would.
    low, high = plan.seconds["predict"], SEARCH_PAYS_EPOCHS * (retrain_epoch_s or epoch_s) + plan.seconds["predict"]
    while split(high).mode != "search" and high < WEEK_S:
        low, high = high, high * 2
    if split(high).mode != "search":
        return replace(plan, search_from_s=0.0)
    while high - low > 1.0:
        middle = (low + high) / 2
        low, high = (low, middle) if split(middle).mode == "search" else (middle, high)
    return replace(plan, search_from_s=high)


def _split(s: Any, a: Any, total: float, concurrent: int, epoch_s: float, gpus: int, predict_s: float,
           retrain_epoch_s: float, overhead: float) -> Plan:
    given = set(s.extra.get("given") or [])
    seeds = a.seeds or max(1, gpus)
    train_val = 1 / (1 - s.val_fraction)
    # Trials sharing a device run slower; count the device's throughput once.
    share_slowdown = max(1.0, concurrent / max(1, gpus)) if gpus else 1.0
    tail = predict_s * PREDICT_MARGIN
    usable = max(1.0, total - tail)
    whole = usable / (retrain_epoch_s * train_val)  # epochs of the middle config if the retrain had it all

    def recipe_plan(reason: str) -> Plan:
        seconds = {"search": 0.0, "confirm": 0.0, "retrain": usable, "predict": tail}
        return Plan(total, seconds, "recipe", reason, s.max_epochs, 0, 0, 0, concurrent, epoch_s, predict_s,
                    max(1, int(whole)), seeds, 0, retrain_epoch_s_estimate=retrain_epoch_s)

    if whole < SEARCH_PAYS_EPOCHS:
        return recipe_plan(f"no search: the deadline holds about {whole:.0f} epochs of a middle-sized config, fewer "
                           f"than {SEARCH_PAYS_EPOCHS}; the fixed recipe trains for all of it")
    overhead *= 2  # the search stage and the confirm stage each start Ray
    searchable = usable - overhead
    capped = MAX_RETRAIN_EPOCHS * retrain_epoch_s * train_val * WINNER_SLOWDOWN
    retrain_share = min(RETRAIN_SHARE, capped / searchable)
    rest = searchable * (1 - retrain_share)
    confirm_s = rest * CONFIRM_SHARE / (1 - RETRAIN_SHARE)
    search_s = rest - confirm_s
    candidates = a.confirm + 1  # the top configs and the fixed recipe, each to the end of one horizon
    waves = math.ceil(candidates / concurrent)
    confirm_fit = int(confirm_s * SAFETY / (waves * epoch_s * share_slowdown))  # epochs the confirm stage runs

    def trials_at(horizon: int) -> int:
        per_trial = asha_epochs_per_trial(min(s.grace, horizon), horizon, s.reduction_factor)
        return fits_in(search_s, per_trial, epoch_s, concurrent, share_slowdown)

    # The ASHA horizon: the user's, else the longest that runs MIN_SEARCH_TRIALS trials and leaves the
    # confirm stage a longer one, not below MIN_HORIZON. A longer deadline only widens that
    # choice, so `search_from_s` is one threshold.
    horizon = s.max_epochs
    if "max_epochs" not in given:
        while horizon > max(MIN_HORIZON, s.grace + 1) and (trials_at(horizon) < MIN_SEARCH_TRIALS
                                                             or confirm_fit < CONFIRM_MULTIPLE * horizon):
            horizon -= 1
    expected = trials_at(horizon)
    if expected < MIN_SEARCH_TRIALS:
        return recipe_plan(f"no search: its share runs about {expected} trials here, fewer than {MIN_SEARCH_TRIALS} "
                           f"({STARTUP_LAUNCHED} random, then {MIN_MODEL_PROPOSALS} from what they taught); the fixed "
                           "recipe trains for all the time")
    if confirm_fit < CONFIRM_MULTIPLE * horizon:
        return recipe_plan(f"no search: its top configs and the fixed recipe cannot be run to {CONFIRM_MULTIPLE}x the "
                           f"search's {horizon} epochs in the time, and a pick at {horizon} epochs is not one to trust "
                           "over the recipe; the fixed recipe trains for all the time")
    if "trials" in given and s.trials < expected:  # --trials needs less time: the rest goes to the retrain
        search_s *= s.trials / expected
        expected = s.trials
    trials = search_trials(s.trials, given, expected)
    confirm_epochs = min(a.confirm_factor * horizon, confirm_fit)
    # Each stage that starts Ray carries its overhead (its wall time includes it).
    search_s += overhead / 2
    confirm_s += overhead / 2
    retrain_s = usable - search_s - confirm_s
    seconds = {"search": search_s, "confirm": confirm_s, "retrain": retrain_s, "predict": tail}
    cap = f" (what its {MAX_RETRAIN_EPOCHS}-epoch cap uses; the search gets the rest)" if retrain_share < RETRAIN_SHARE else ""
    reason = (f"search: the deadline holds about {whole:.0f} epochs of a middle-sized config; the retrain keeps "
              f"{retrain_s / usable:.0%} of the time{cap}")
    return Plan(total, seconds, "search", reason, horizon, expected, candidates, confirm_epochs, concurrent, epoch_s,
                predict_s, max(1, int(retrain_s / (retrain_epoch_s * train_val))), seeds, trials,
                retrain_epoch_s_estimate=retrain_epoch_s)


def search_trials(trials: int, given: Sequence[str] | None, expected: int) -> int:
    """The trials the search stage may launch: --trials where it was given; else twice what
    the plan expects in the share (its time ends it first), and not fewer than the default.
    In benchmark 11 the default 50 ended a 25-minute search after 14, and the retrain, capped
    at 300 epochs, could not use the rest.

    >>> search_trials(50, ["trials"], 142), search_trials(50, [], 142), search_trials(50, [], 10)
    (50, 284, 50)
    """
    if given is None or "trials" in given:
        return trials
    return max(trials, 2 * expected)


def planned_concurrency(s: Any) -> tuple[int, int]:
    """(GPUs, trials at once) the search will use, as `search.tune.resources.plan_resources` will set them."""
    from search.tune.resources import check_gpus, plan_resources, ray_session, resources_for

    if s.address:
        with ray_session(s):
            resources = plan_resources(s)
    else:
        resources = resources_for(s, check_gpus(s), s.cpus or os.cpu_count() or 1)
    return resources.gpus, resources.concurrent
