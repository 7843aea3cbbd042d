"""Search spaces: Optuna define-by-run functions that turn a trial into a config dict.

A space is any function `space(trial) -> dict` that calls `trial.suggest_*` and returns a
config for `trainable` (keys from `trainable.config.DEFAULTS`; the search fills in
`epochs` and `seed`). The built-in space below follows the ranges in the known CIFAR-10
recipes under 5M parameters and solves its widths into the budget; `--space FILE` replaces
it (`search.tune.space_files`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import optuna

from trainable.config import DEFAULTS
from trainable.errors import UserError
from trainable.zoo import PARAM_BUDGET

SpaceFn = Callable[[optuna.Trial], dict[str, Any]]


def round_to(value: float, multiple: int = 8) -> int:
    """Nearest positive multiple of `multiple` (channel counts that suit tensor cores)."""
    return max(multiple, int(round(value / multiple)) * multiple)


SPACE_VERSION = 2  # settings.json records it; a study resumes with the space it was made with
# Version 2's optimiser terms: one log-scale multiplier on each optimizer's base, so that TPE
# models the learning rate and weight decay with every other parameter (version 1 drew them
# conditionally on the optimizer, which TPE samples on their own).
BASE_LR = {"sgd": 0.05, "adamw": 2e-3}
BASE_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 1e-2}
LR_SCALE = (0.25, 4.0)
WEIGHT_DECAY_SCALE = (0.1, 10.0)
# The share of the budget a model is solved for: 1 - 0.6 x shortfall^2, with `budget_shortfall`
# uniform in 0-1. So 0.4 to 1.0 (WRN-40-2 uses 0.45 of 5M), a median proposal asks for 0.85,
# and widths at multiples of 8 round that down a little (the README gives the medians built).
SHORTFALL_SCALE = 0.6


def budget_fraction(shortfall: float) -> float:
    """The share of the budget for a `budget_shortfall` of 0..1.

    >>> budget_fraction(0.0), budget_fraction(0.5), budget_fraction(1.0)
    (1.0, 0.85, 0.4)
    """
    return 1.0 - SHORTFALL_SCALE * shortfall**2


def shortfall_of(fraction: float) -> float:
    """The `budget_shortfall` that asks for `fraction` of the budget (the inverse of `budget_fraction`)."""
    return math.sqrt(max(0.0, 1.0 - fraction) / SHORTFALL_SCALE)


WIDTH_GROWTH = (1.5, 2.5)  # per stage
MAX_WARMUP_SHARE = 0.1  # warm-up as a share of the horizon: a 3-epoch search leaves it early
MIN_STAGES = 2  # what `trainable.config` accepts
STAGE_WIDTHS = 64.0  # the first stage's width before the solve scales it (any value: only ratios count)


def _pick(trial: optuna.Trial, fixed: dict[str, Any]) -> Callable[[str, Callable[[], Any]], Any]:
    def pick(key: str, suggest: Callable[[], Any]) -> Any:
        return fixed[key] if key in fixed else suggest()
    return pick


def solve_shape(shape: dict[str, Any], budget: int, fraction: float, num_classes: int = 10,
                in_channels: int = 3) -> dict[str, Any]:
    """`shape` (blocks, a width growth per stage, block type, kernels, stem) with the widths
    that use `fraction` of `budget`: the widest at multiples of 8 under fraction x budget
    params (`trainable.zoo.fit_to_budget`). Where even 8-wide stages overshoot, blocks go from
    the deepest stage, then whole stages from the end (down to two; a budget too small even
    for that gets the narrowest model, which the budget check then refuses).

    >>> from trainable.model import count_params
    >>> config = solve_shape({"blocks": [2, 2, 2], "width_growth": 2.0}, 5_000_000, 0.5)
    >>> config["widths"], 0.45 < count_params(config) / 5_000_000 < 0.5
    ([64, 120, 240], True)
    """
    from trainable.zoo import fit_to_budget

    growth = shape.get("width_growth", 2.0)
    config = {k: v for k, v in shape.items() if k != "width_growth"}
    blocks = list(config["blocks"])
    while True:
        config = {**config, "blocks": blocks, "widths": [STAGE_WIDTHS * growth**i for i in range(len(blocks))]}
        try:
            return fit_to_budget(config, budget, num_classes, in_channels, fill=fraction, scale_stem=False)
        except ValueError:
            if len(blocks) <= MIN_STAGES:  # the narrowest model there is: the budget check decides
                return {**config, "blocks": [1] * len(blocks), "widths": [8] * len(blocks)}
            blocks = blocks[:-1]  # one block per stage still overshoots: one stage fewer


def default_space(trial: optuna.Trial, fixed: dict[str, Any] | None = None, budget: int = PARAM_BUDGET,
                  num_classes: int = 10, in_channels: int = 3) -> dict[str, Any]:
    """The built-in space (version 2): TPE samples the shape and a share of the budget; the
    widths are solved so that the model uses that share (`solve_shape`), so every proposal
    fits under `budget` and none is rejected.

    - shape: 3-4 stages of 1-6 blocks, width growth 1.5-2.5 per stage, block type (basic,
      pre-activation, shake-shake), kernel 3 or 5, shortcut kernel 1 or 3 (not for shake
      blocks, whose shortcut has no kernel to choose), stem 16 or the first stage's width;
    - the share of `budget` to use, 0.4-1.0 (`budget_shortfall`, see `budget_fraction`);
    - optimiser: AdamW or SGD, each at its base lr and weight decay times a multiplier
      (`lr_scale`, `weight_decay_scale`) that every config shares;
    - warm-up as a share of the horizon (`fixed["epochs"]`), at most a tenth of it;
    - regularisers and augmentation as in the known recipes.

    Keys in `fixed` (`search.run --set`) are not searched; fixed `widths` are built as given
    (the budget check then rejects what is over). The widths and blocks built are recorded
    as the trial's user attributes `widths` and `blocks`.

    >>> import optuna
    >>> from trainable.model import count_params
    >>> study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    >>> all(count_params(default_space(study.ask(), budget=200_000)) < 200_000 for _ in range(50))
    True
    """
    fixed = fixed or {}
    pick = _pick(trial, fixed)
    shape_given = fixed.get("blocks") or fixed.get("widths")
    n_stages = len(shape_given) if shape_given else trial.suggest_int("n_stages", 3, 4)
    block = pick("block", lambda: trial.suggest_categorical("block", ["basic", "preact", "shake"]))
    shape: dict[str, Any] = {
        "blocks": pick("blocks", lambda: [trial.suggest_int(f"blocks_{i}", 1, 6) for i in range(n_stages)]),
        "block": block,
        "stem_width": pick("stem_width", lambda: trial.suggest_categorical("stem_width", [None, 16])),
        "kernel_size": pick("kernel_size", lambda: trial.suggest_categorical("kernel_size", [3, 5])),
        "skip_kernel_size": pick("skip_kernel_size", lambda: 1 if block == "shake" else
                                 trial.suggest_categorical("skip_kernel_size", [1, 3])),
    }
    if "widths" in fixed:
        config = {**shape, "widths": fixed["widths"]}
    else:
        shape["width_growth"] = trial.suggest_float("width_growth", *WIDTH_GROWTH)
        fraction = budget_fraction(trial.suggest_float("budget_shortfall", 0.0, 1.0))
        config = solve_shape(shape, budget, fraction, num_classes, in_channels)
    trial.set_user_attr("widths", list(config["widths"]))
    trial.set_user_attr("blocks", list(config["blocks"]))
    config.update({
        "dropout": pick("dropout", lambda: trial.suggest_float("dropout", 0.0, 0.3)),
        "drop_path": pick("drop_path", lambda: trial.suggest_float("drop_path", 0.0, 0.3)),
        "zero_init_residual": pick("zero_init_residual",
                                   lambda: trial.suggest_categorical("zero_init_residual", [False, True])),
        "optimizer": pick("optimizer", lambda: trial.suggest_categorical("optimizer", ["adamw", "sgd"])),
    })
    optimizer = config["optimizer"]
    config["lr"] = pick("lr", lambda: BASE_LR[optimizer] * trial.suggest_float("lr_scale", *LR_SCALE, log=True))
    config["weight_decay"] = pick("weight_decay", lambda: BASE_WEIGHT_DECAY[optimizer] * trial.suggest_float(
        "weight_decay_scale", *WEIGHT_DECAY_SCALE, log=True))
    if optimizer == "sgd":
        config["momentum"] = pick("momentum", lambda: trial.suggest_float("sgd_momentum", 0.8, 0.95))
    horizon = fixed.get("epochs", DEFAULTS["epochs"])
    config["warmup_epochs"] = pick("warmup_epochs", lambda: round(
        horizon * trial.suggest_float("warmup_share", 0.0, MAX_WARMUP_SHARE), 3))
    config.update(_training_keys(trial, pick))
    return {**config, **fixed}


def _training_keys(trial: optuna.Trial, pick: Callable[[str, Callable[[], Any]], Any]) -> dict[str, Any]:
    """Batch size, regularisers and augmentation: the same in both versions of the space."""
    config: dict[str, Any] = {}
    config["batch_size"] = pick("batch_size", lambda: trial.suggest_categorical("batch_size", [64, 128, 256]))
    config["label_smoothing"] = pick("label_smoothing", lambda: trial.suggest_float("label_smoothing", 0.0, 0.2))
    # SAM doubles a step's cost; under a time budget TPE weighs that against what it gains.
    config["sam_rho"] = pick("sam_rho", lambda: trial.suggest_categorical("sam_rho", [0.0, 0.05, 0.1]))
    config["cutout"] = pick("cutout", lambda: trial.suggest_categorical("cutout", [0, 8, 12, 16]))
    config["augment_policy"] = pick("augment_policy", lambda: trial.suggest_categorical(
        "augment_policy", ["none", "trivialaugment", "randaugment", "autoaugment"]))
    if config["augment_policy"] == "randaugment":
        config["randaugment_n"] = pick("randaugment_n", lambda: trial.suggest_int("randaugment_n", 1, 3))
        config["randaugment_m"] = pick("randaugment_m", lambda: trial.suggest_int("randaugment_m", 5, 15))
    config["mixup_alpha"] = pick("mixup_alpha", lambda: trial.suggest_categorical("mixup_alpha", [0.0, 0.2, 0.4, 1.0]))
    config["cutmix_alpha"] = pick("cutmix_alpha", lambda: trial.suggest_categorical("cutmix_alpha", [0.0, 0.5, 1.0]))
    return config


def space_v1(trial: optuna.Trial, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The built-in space before version 2 (kept so that its studies resume with it):
    architecture, optimiser and augmentation of the ResNet family.

    Widths are a first-stage width times a growth factor per stage, rounded to multiples of
    8; depth, width and kernels are searched freely and the budget check rejects what is
    over the cap (a 5x5 kernel or a 3x3 shortcut rarely fits, so they appear as options).
    Keys in `fixed` (`search.run --set`) are not searched at all: their parameters are
    never suggested, so TPE models only what varies.
    """
    fixed = fixed or {}
    pick = _pick(trial, fixed)

    shape = fixed.get("blocks") or fixed.get("widths")
    n_stages = len(shape) if shape else trial.suggest_int("n_stages", 3, 4)

    def widths() -> list[int]:
        # From 16 up, so that small budgets (150k params and below) leave a real range.
        base = trial.suggest_int("width_base", 16, 96, step=8)
        growth = trial.suggest_float("width_growth", 1.5, 2.5)
        return [round_to(base * growth**i) for i in range(n_stages)]

    config: dict[str, Any] = {
        "blocks": pick("blocks", lambda: [trial.suggest_int(f"blocks_{i}", 1, 6) for i in range(n_stages)]),
        "widths": pick("widths", widths),
        "stem_width": pick("stem_width", lambda: trial.suggest_categorical("stem_width", [None, 16])),
        "block": pick("block", lambda: trial.suggest_categorical("block", ["basic", "preact", "shake"])),
        "kernel_size": pick("kernel_size", lambda: trial.suggest_categorical("kernel_size", [3, 5])),
        "skip_kernel_size": pick("skip_kernel_size", lambda: trial.suggest_categorical("skip_kernel_size", [1, 3])),
        "dropout": pick("dropout", lambda: trial.suggest_float("dropout", 0.0, 0.3)),
        "drop_path": pick("drop_path", lambda: trial.suggest_float("drop_path", 0.0, 0.3)),
        "zero_init_residual": pick("zero_init_residual",
                                   lambda: trial.suggest_categorical("zero_init_residual", [False, True])),
        "optimizer": pick("optimizer", lambda: trial.suggest_categorical("optimizer", ["adamw", "sgd"])),
    }
    # The two optimizers live on different lr and weight-decay scales, so each gets its own
    # (conditional) parameters rather than one range that fits neither.
    if config["optimizer"] == "sgd":
        config["lr"] = pick("lr", lambda: trial.suggest_float("sgd_lr", 0.01, 0.2, log=True))
        config["weight_decay"] = pick("weight_decay", lambda: trial.suggest_float("sgd_weight_decay", 1e-4, 1e-3, log=True))
        config["momentum"] = pick("momentum", lambda: trial.suggest_float("sgd_momentum", 0.8, 0.95))
    else:
        config["lr"] = pick("lr", lambda: trial.suggest_float("adamw_lr", 5e-4, 5e-3, log=True))
        config["weight_decay"] = pick("weight_decay", lambda: trial.suggest_float("adamw_weight_decay", 5e-4, 5e-2, log=True))
    config["warmup_epochs"] = pick("warmup_epochs", lambda: trial.suggest_int("warmup_epochs", 0, 5))
    config.update(_training_keys(trial, pick))
    return {**config, **fixed}


def built_in_space(version: int, fixed: dict[str, Any], budget: int, num_classes: int = 10,
                   in_channels: int = 3) -> SpaceFn:
    """The built-in space of `version` (a study resumes with the one it was made with; one
    made before versions were recorded is version 1)."""
    if version == 1:
        return functools.partial(space_v1, fixed=fixed)
    if version != SPACE_VERSION:
        raise UserError(f"this experiment was made with version {version} of the built-in space; this install has "
                        f"versions 1 to {SPACE_VERSION}: upgrade to resume it")
    return functools.partial(default_space, fixed=fixed, budget=budget, num_classes=num_classes,
                             in_channels=in_channels)


# Warm starts, run first in this order, each scaled into the budget (`warm_starts`): the
# seed's configuration (trainable.zoo.SEED: [3,5,3] x [64,128,256], AdamW, crop + flip only;
# 4,918,602 params) and a WRN-40-2 (trainable.zoo.WRN_40_2: pre-activation [6,6,6] x
# [32,64,128], stem 16, TrivialAugment, cutout 16, Nesterov SGD 0.1; 2,243,546 params), the
# family of the 96.3% AutoAugment result in the known recipes.
def warm_starts(budget: int = PARAM_BUDGET, num_classes: int = 10, in_channels: int = 3,
                fixed: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The built-in space's warm starts in its own terms, each narrowed into `budget`
    (`trainable.zoo.fit_to_budget`, never widened, the stem kept); one the space cannot
    build at that size is left out.

    >>> [round(budget_fraction(p["budget_shortfall"]), 3) for p in warm_starts()]  # WRN-40-2: under half
    [0.984, 0.449]
    >>> [round(p["lr_scale"], 2) for p in warm_starts(200_000)]
    [1.0, 2.0]
    """
    from trainable.zoo import SEED, WRN_40_2, fit_to_budget

    chosen = []
    for config in (SEED, WRN_40_2):
        try:
            fitted = fit_to_budget(config, budget, num_classes, in_channels, grow=False, scale_stem=False)
        except ValueError:
            continue
        params = params_of(fitted, fixed, budget, num_classes, in_channels)
        if params is not None:
            chosen.append(params)
    return chosen


def params_of(config: dict[str, Any], fixed: dict[str, Any] | None = None, budget: int = PARAM_BUDGET,
              num_classes: int = 10, in_channels: int = 3, exact: bool = True) -> dict[str, Any] | None:
    """The built-in space's parameters that build `config` (a recipe in the space's own terms:
    its shape, the share of `budget` it uses, its lr and weight decay as multipliers of the
    optimizer's base, its warm-up as a share of the horizon), or None where the space cannot
    build it (a value outside a range, widths the solve would not choose). The warm-up is
    the one key that may differ: it follows the horizon in `fixed["epochs"]`. With `exact`
    False the parameters come back anyway, ranged values clamped into their ranges: the
    nearest config of this space (a config of another space, queued by `--warm-from`).

    >>> from trainable.zoo import DEADLINE_RECIPE, fit_to_budget
    >>> params = params_of(fit_to_budget(DEADLINE_RECIPE, 200_000), budget=200_000)
    >>> default_space(optuna.trial.FixedTrial(params), budget=200_000)["widths"]
    [16, 32, 64]
    >>> params_of({"blocks": [2, 2], "widths": [16, 17]}) is None
    True
    """
    from trainable.config import with_defaults
    from trainable.model import count_params

    cfg = with_defaults(config)
    widths, blocks = cfg["widths"], cfg["blocks"]
    optimizer = cfg["optimizer"]
    horizon = (fixed or {}).get("epochs", DEFAULTS["epochs"])
    params: dict[str, Any] = {
        "n_stages": len(widths), **{f"blocks_{i}": b for i, b in enumerate(blocks)},
        "width_growth": (widths[-1] / widths[0]) ** (1 / max(1, len(widths) - 1)),
        # Half a parameter above the count: the solve keeps strictly under its target.
        "budget_shortfall": shortfall_of((count_params(cfg, num_classes, in_channels) + 0.5) / budget),
        "lr_scale": cfg["lr"] / BASE_LR[optimizer],
        "weight_decay_scale": cfg["weight_decay"] / BASE_WEIGHT_DECAY[optimizer],
        "warmup_share": min(MAX_WARMUP_SHARE, cfg["warmup_epochs"] / max(1, horizon)),
    }
    for key in ("stem_width", "block", "kernel_size", "skip_kernel_size", "dropout", "drop_path", "zero_init_residual",
                "optimizer", "batch_size", "label_smoothing", "sam_rho", "cutout", "augment_policy",
                "mixup_alpha", "cutmix_alpha", "randaugment_n", "randaugment_m"):
        params[key] = cfg[key]
    if optimizer == "sgd":
        params["sgd_momentum"] = cfg["momentum"]
    if not exact:  # the nearest config: ranged values clamped into their ranges
        for key, (low, high) in (("width_growth", WIDTH_GROWTH), ("budget_shortfall", (0.0, 1.0)),
                                 ("lr_scale", LR_SCALE), ("weight_decay_scale", WEIGHT_DECAY_SCALE)):
            params[key] = min(high, max(low, params[key]))
        return params
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # FixedTrial only warns of a value outside a distribution
            built = default_space(optuna.trial.FixedTrial(params), fixed, budget, num_classes, in_channels)
    except (ValueError, UserWarning):
        return None
    same = (built.get(key) == cfg.get(key) or (isinstance(cfg.get(key), float) and
                                                 math.isclose(built[key], cfg[key], rel_tol=1e-9))
            for key in built if key not in (fixed or {}) and key != "warmup_epochs")
    return params if all(same) else None


WARM_START: list[dict[str, Any]] = warm_starts()  # at 5M; a search scales them into its own budget
