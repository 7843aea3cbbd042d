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


# Warm starts, run first in this order, in the default space's terms:
# 1. the seed's configuration: [3,5,3] x [64,128,256], F=3, K=1, AdamW with warm-up and
#    cosine, crop + flip only (4,918,602 params);
# 2. a WRN-40-2-like net (pre-activation [6,6,6] x [32,64,128], stem 16: 2,243,546 params)
#    with TrivialAugment and cutout 16, Nesterov SGD lr 0.1, weight decay 5e-4, batch 128:
#    the family of the 96.3% AutoAugment result in the known recipes.
SEED_START: dict[str, Any] = {
    "n_stages": 3, "blocks_0": 3, "blocks_1": 5, "blocks_2": 3, "width_base": 64, "width_growth": 2.0,
    "stem_width": None, "block": "basic", "kernel_size": 3, "skip_kernel_size": 1, "dropout": 0.0,
    "drop_path": 0.0, "zero_init_residual": False, "sam_rho": 0.0, "optimizer": "adamw", "adamw_lr": 2e-3, "adamw_weight_decay": 5e-2, "warmup_epochs": 2, "batch_size": 128,
    "label_smoothing": 0.0, "cutout": 0, "augment_policy": "none", "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
}
WRN_START: dict[str, Any] = {
    "n_stages": 3, "blocks_0": 6, "blocks_1": 6, "blocks_2": 6, "width_base": 32, "width_growth": 2.0,
    "stem_width": 16, "block": "preact", "kernel_size": 3, "skip_kernel_size": 1, "dropout": 0.0,
    "drop_path": 0.0, "zero_init_residual": False, "sam_rho": 0.0, "optimizer": "sgd", "sgd_lr": 0.1, "sgd_weight_decay": 5e-4, "sgd_momentum": 0.9, "warmup_epochs": 1,
    "batch_size": 128, "label_smoothing": 0.0, "cutout": 16, "augment_policy": "trivialaugment",
    "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
}
WARM_START: list[dict[str, Any]] = [SEED_START, WRN_START]


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
    try:
        built = default_space(optuna.trial.FixedTrial(params), fixed)
    except ValueError:  # FixedTrial refuses a value outside a distribution
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
