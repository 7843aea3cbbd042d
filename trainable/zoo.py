"""Named configs: the seed, the reference nets of the known recipes, and the fixed recipe
that `search.auto` trains when its deadline is too short for a search to pay.

Each is a plain config dict (keys of `trainable.config.DEFAULTS`); its parameter count is
pinned by a test. `fit_to_budget` scales one into a parameter budget by its widths (and,
where even the narrowest widths overshoot, by dropping blocks from the deepest stage).

>>> from trainable.model import count_params
>>> count_params(SEED), count_params(WRN_40_2), count_params(SHAKE_26_2X32D)
(4918602, 2243546, 2923162)
>>> fitted = fit_to_budget(DEADLINE_RECIPE, 200_000)
>>> fitted["widths"], count_params(fitted) < 200_000
([16, 32, 64], True)
"""

from __future__ import annotations

from typing import Any

from trainable.model import count_params

# The course project's model and recipe: BasicBlocks [3,5,3] x [64,128,256], F=3, K=1, AdamW,
# warm-up then cosine, crop + flip (93.9% at 50 epochs; 4,918,602 params).
SEED: dict[str, Any] = {
    "blocks": [3, 5, 3], "widths": [64, 128, 256], "kernel_size": 3, "skip_kernel_size": 1, "block": "basic",
    "optimizer": "adamw", "lr": 2e-3, "weight_decay": 5e-2, "warmup_epochs": 2, "batch_size": 128,
}
# WRN-40-2 (pre-activation [6,6,6] x [32,64,128], stem 16) with TrivialAugment and cutout 16,
# Nesterov SGD 0.1: the family of the 96.3% AutoAugment result at 200 epochs.
WRN_40_2: dict[str, Any] = {
    "blocks": [6, 6, 6], "widths": [32, 64, 128], "stem_width": 16, "block": "preact", "optimizer": "sgd",
    "lr": 0.1, "weight_decay": 5e-4, "momentum": 0.9, "warmup_epochs": 1, "batch_size": 128, "cutout": 16,
    "augment_policy": "trivialaugment",
}
# Shake-Shake 26 2x32d: 96.5% at 1,800 epochs with cutout, 97.5% with AutoAugment.
SHAKE_26_2X32D: dict[str, Any] = {
    "blocks": [4, 4, 4], "widths": [32, 64, 128], "stem_width": 16, "block": "shake", "optimizer": "sgd",
    "lr": 0.1, "weight_decay": 5e-4, "momentum": 0.9, "cutout": 16,
}
# The middle of the built-in space under 5M: what plans time a step with (1,106,762 params).
MIDDLE: dict[str, Any] = {"blocks": [2, 2, 2], "widths": [48, 96, 192]}
# The fixed recipe for a deadline: a ResNet-14 shape (pre-activation, widths doubling), with
# the cheap regularisers every long-run result uses (TrivialAugment, cutout 8, label
# smoothing 0.1) and Nesterov SGD; the retrain adds EMA and TTA. Benchmark 11 (README)
# compares it, scaled into the budget, with the seed's recipe and with `search.auto`.
DEADLINE_RECIPE: dict[str, Any] = {
    "blocks": [2, 2, 2], "widths": [64, 128, 256], "block": "preact", "optimizer": "sgd", "lr": 0.05,
    "weight_decay": 5e-4, "momentum": 0.9, "warmup_epochs": 2, "batch_size": 128, "label_smoothing": 0.1,
    "cutout": 8, "augment_policy": "trivialaugment",
}
# The course's parameter cap, the default budget of every command (trainable params strictly below it).
PARAM_BUDGET = 5_000_000
SHAPE_KEYS = ("blocks", "widths", "block", "kernel_size", "skip_kernel_size", "stem_width")


def architecture(config: dict[str, Any]) -> dict[str, Any]:
    """The keys of `config` that make the model's shape (for benchmarks that time a model alone).

    >>> architecture(SEED)
    {'blocks': [3, 5, 3], 'widths': [64, 128, 256], 'block': 'basic', 'kernel_size': 3, 'skip_kernel_size': 1}
    """
    return {key: config[key] for key in SHAPE_KEYS if key in config}


RECIPES: dict[str, dict[str, Any]] = {"seed": SEED, "wrn-40-2": WRN_40_2, "shake-26-2x32d": SHAKE_26_2X32D,
                                      "middle": MIDDLE, "deadline": DEADLINE_RECIPE}


def _scaled(widths: list[int], scale: float, multiple: int) -> list[int]:
    return [max(multiple, int(round(w * scale / multiple)) * multiple) for w in widths]


def fit_to_budget(config: dict[str, Any], budget: int, num_classes: int = 10, in_channels: int = 3,
                  fill: float = 1.0, multiple: int = 8, grow: bool = True, scale_stem: bool = True) -> dict[str, Any]:
    """`config` with its widths (and stem) scaled by one factor, the largest that keeps the
    model under `fill` x `budget` params, at multiples of `multiple`; blocks are dropped
    from the deepest stage first where even `multiple`-wide stages overshoot.

    A config already under the budget is scaled up to fill it (`grow`), or returned as it
    is. A stem width of its own is scaled with the rest unless `scale_stem` is False (a
    search space's fixed stem choice). Raises ValueError when not even one block per stage at the narrowest widths fits.
    """
    cap = budget * fill
    if not grow and count_params(config, num_classes, in_channels) < cap:
        return dict(config)
    config = {**config, "blocks": list(config["blocks"]), "widths": list(config["widths"])}
    stem = config.get("stem_width") if scale_stem else None

    def build(scale: float) -> dict[str, Any]:
        fitted = {**config, "widths": _scaled(config["widths"], scale, multiple)}
        if stem:
            fitted["stem_width"] = _scaled([stem], scale, multiple)[0]
        return fitted

    def fits(candidate: dict[str, Any]) -> bool:
        return count_params(candidate, num_classes, in_channels) < cap

    while not fits(build(0.0)):  # at the narrowest widths still too big: fewer blocks, deepest first
        deepest = max(i for i, b in enumerate(config["blocks"]) if b > 1) if max(config["blocks"]) > 1 else None
        if deepest is None:
            raise ValueError(f"no model of this shape fits under {cap:,.0f} params")
        config["blocks"][deepest] -= 1
    low, high = 0.0, 1.0
    while fits(build(high)):  # params grow with width squared: double until over
        low, high = high, high * 2
    for _ in range(30):  # bisect the scale; the widths are steps, so this ends on the last fitting one
        middle = (low + high) / 2
        low, high = (middle, high) if fits(build(middle)) else (low, middle)
    return build(low)
