"""Search spaces: Optuna define-by-run functions that turn a trial into a config dict.

A space is any function `space(trial) -> dict` that calls `trial.suggest_*` and returns a
config for `trainable` (keys from `trainable.config.DEFAULTS`; the search fills in
`epochs` and `seed`). The default space below follows the ranges in the known CIFAR-10
recipes under 5M parameters; `--space FILE` replaces it with a Python file (defining
`space(trial)` and optionally `WARM_START`, a dict of Optuna param values or a list of
such dicts, run first in that order) or a YAML file
(config keys mapped to constants or distributions, see `YamlSpace`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Callable

import optuna

from trainable.errors import UserError

SpaceFn = Callable[[optuna.Trial], dict[str, Any]]


def round_to(value: float, multiple: int = 8) -> int:
    """Nearest positive multiple of `multiple` (channel counts that suit tensor cores)."""
    return max(multiple, int(round(value / multiple)) * multiple)


def default_space(trial: optuna.Trial, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The built-in space: architecture, optimiser and augmentation of the ResNet family.

    Widths are a first-stage width times a growth factor per stage, rounded to multiples of
    8; depth, width and kernels are searched freely and the budget check rejects what is
    over the cap (a 5x5 kernel or a 3x3 shortcut rarely fits, so they appear as options).
    Keys in `fixed` (`search.run --set`) are not searched at all: their parameters are
    never suggested, so TPE models only what varies.
    """
    fixed = fixed or {}

    def pick(key: str, suggest: Callable[[], Any]) -> Any:
        return fixed[key] if key in fixed else suggest()

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
    return {**config, **fixed}


# Warm starts, run first in this order, each scaled into the budget (`warm_starts`): the
# seed's configuration (trainable.zoo.SEED: [3,5,3] x [64,128,256], AdamW, crop + flip only;
# 4,918,602 params) and a WRN-40-2 (trainable.zoo.WRN_40_2: pre-activation [6,6,6] x
# [32,64,128], stem 16, TrivialAugment, cutout 16, Nesterov SGD 0.1; 2,243,546 params), the
# family of the 96.3% AutoAugment result in the known recipes.
def warm_starts(budget: int = 5_000_000, num_classes: int = 10, in_channels: int = 3,
                fixed: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The built-in space's warm starts in its own terms, each narrowed into `budget`
    (`trainable.zoo.fit_to_budget`, never widened); one the space cannot build at that size
    (widths below its range) is left out.

    >>> [p["width_base"] for p in warm_starts()], [p["width_base"] for p in warm_starts(1_000_000)]
    ([64, 32], [32])
    """
    from trainable.zoo import SEED, WRN_40_2, fit_to_budget

    chosen = []
    for config in (SEED, WRN_40_2):
        try:
            fitted = fit_to_budget(config, budget, num_classes, in_channels, grow=False)
        except ValueError:
            continue
        params = params_of(fitted, fixed)
        if params is not None:
            chosen.append(params)
    return chosen


def params_of(config: dict[str, Any], fixed: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The built-in space's parameters that build `config` (a warm start in the space's own
    terms), or None where the space cannot build it exactly (widths off its grid, a value
    outside a range).

    >>> from trainable.zoo import DEADLINE_RECIPE, fit_to_budget
    >>> params_of(fit_to_budget(DEADLINE_RECIPE, 200_000))["width_base"]
    16
    >>> params_of({"blocks": [2, 2], "widths": [16, 17]}) is None
    True
    """
    from trainable.config import with_defaults

    cfg = with_defaults(config)
    widths = cfg["widths"]
    params: dict[str, Any] = {"n_stages": len(widths), **{f"blocks_{i}": b for i, b in enumerate(cfg["blocks"])},
                              "width_base": widths[0], "width_growth": (widths[-1] / widths[0]) ** (1 / max(1, len(widths) - 1))}
    for key in ("stem_width", "block", "kernel_size", "skip_kernel_size", "dropout", "drop_path", "zero_init_residual",
                "optimizer", "warmup_epochs", "batch_size", "label_smoothing", "sam_rho", "cutout", "augment_policy",
                "mixup_alpha", "cutmix_alpha", "randaugment_n", "randaugment_m"):
        params[key] = cfg[key]
    prefix = cfg["optimizer"] + "_"
    params.update({prefix + "lr": cfg["lr"], prefix + "weight_decay": cfg["weight_decay"]})
    if cfg["optimizer"] == "sgd":
        params["sgd_momentum"] = cfg["momentum"]
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # FixedTrial only warns of a value outside a distribution
            built = default_space(optuna.trial.FixedTrial(params), fixed)
    except (ValueError, UserWarning):
        return None
    if any(built.get(key) != cfg.get(key) for key in built if key not in (fixed or {})):
        return None
    return params


# ----------------------------------------------------------------------------- YAML spaces
def _suggest(trial: optuna.Trial, name: str, spec: Any) -> Any:
    if isinstance(spec, list):
        return [_suggest(trial, f"{name}_{i}", item) for i, item in enumerate(spec)]
    if not isinstance(spec, dict):
        return spec  # a constant
    log = bool(spec.get("log", False))
    if "int" in spec:
        low, high = spec["int"]
        return trial.suggest_int(name, int(low), int(high), step=int(spec.get("step", 1)), log=log)
    if "float" in spec:
        low, high = spec["float"]
        return trial.suggest_float(name, float(low), float(high), log=log)
    if "choice" in spec:
        choices = spec["choice"]
        # Optuna's categorical takes scalars only: lists (e.g. whole `blocks`) travel as JSON.
        encoded = [json.dumps(c) if isinstance(c, (list, dict)) else c for c in choices]
        picked = trial.suggest_categorical(name, encoded)
        return json.loads(picked) if isinstance(picked, str) and picked[:1] in "[{" else picked
    raise UserError(f"space entry {name!r}: a distribution is {{int: [lo, hi]}}, {{float: [lo, hi]}} or {{choice: [...]}}")


class YamlSpace:
    """A define-by-run space from a mapping of config keys to constants or distributions.

    A class rather than a closure so that Ray can pickle it with the experiment. Example::

        blocks: [{int: [1, 6]}, {int: [1, 6]}, {int: [1, 6]}]
        widths: {choice: [[64, 128, 256], [48, 96, 192]]}
        lr: {float: [0.0005, 0.005], log: true}
        optimizer: adamw
    """

    def __init__(self, spec: dict[str, Any]):
        if not isinstance(spec, dict) or not spec:
            raise UserError("a YAML space must map config keys to constants or distributions")
        self.spec = spec

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        return {key: _suggest(trial, key, value) for key, value in self.spec.items()}


def load_space(path: str | Path) -> tuple[SpaceFn, dict[str, Any] | list[dict[str, Any]] | None]:
    """Load a user space from a .py file (`space(trial)`, optional `WARM_START`) or a .yaml file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"space file {path} does not exist")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise UserError(f"space file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        return YamlSpace(spec), None
    if path.suffix != ".py":
        raise UserError(f"space file {path} must end in .py, .yaml or .yml")
    module_spec = importlib.util.spec_from_file_location(f"user_space_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise UserError(f"space file {path} has a syntax error at line {exc.lineno}: {exc.msg}") from None
    except Exception as exc:
        raise UserError(f"space file {path} failed to load: {type(exc).__name__}: {exc}") from None
    if not callable(getattr(module, "space", None)):
        raise UserError(f"space file {path} must define a function space(trial) -> dict")
    return module.space, getattr(module, "WARM_START", None)


WARM_START: list[dict[str, Any]] = warm_starts()  # at 5M; a search scales them into its own budget
