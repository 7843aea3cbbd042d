"""The config dict: the one currency passed between search, training and retrain.

Every key is defined here, with its default and the reason for it. Everything else in
the project passes configs along untouched and calls `validate_config` at its edge.
"""

from __future__ import annotations

import json
import math
from typing import Any

from trainable.errors import ConfigError

MAX_STAGES = 4
MIN_STAGES = 2

DEFAULTS: dict[str, Any] = {
    # --- architecture (seed: BasicBlocks [3,5,3] x [64,128,256], 4,918,602 params) ---
    "blocks": [3, 5, 3],  # BasicBlocks per stage; stride 2 at the first block of stages 2+
    "widths": [64, 128, 256],  # channels per stage
    "kernel_size": 3,  # F: conv kernel inside blocks; 5x5 costs ~2.8x the params of 3x3
    "skip_kernel_size": 1,  # K: projection shortcut kernel, used only when the shape changes
    "stem_width": None,  # None means widths[0]
    "dropout": 0.0,  # before the linear head
    # The residual block: basic (conv-BN-ReLU, post-activation, the seed's), preact
    # (BN-ReLU-conv, a final BN-ReLU before the pool: the WRN / PreAct-ResNet form; WRN-40-2 is
    # blocks [6,6,6], widths [32,64,128], stem_width 16), or shake (Shake-Shake: two
    # ReLU-conv-BN-ReLU-conv-BN branches mixed with random per-image weights in training and
    # 0.5 each at evaluation; 26 2x32d is blocks [4,4,4], widths [32,64,128], stem_width 16,
    # 2,923,162 params, 96.5% at 1,800 epochs and 97.5% with AutoAugment).
    "block": "basic",
    # Stochastic depth: each block's residual branch is dropped per image in training with a
    # probability rising linearly with depth to this rate at the last block (0 disables).
    "drop_path": 0.0,
    # The last BatchNorm of every residual branch starts at zero, so each block starts as its
    # shortcut: deep nets train from step one as if shallow (Goyal et al.; off by default).
    "zero_init_residual": False,
    # --- optimisation (seed: AdamW, warm-up then cosine) ---
    "optimizer": "adamw",  # adamw | sgd (sgd always uses Nesterov momentum)
    "lr": 2e-3,  # peak learning rate, reached at the end of warm-up
    "weight_decay": 5e-2,  # AdamW decoupled decay; for sgd pick 5e-4-ish
    "momentum": 0.9,  # sgd: Nesterov momentum; adamw: this is beta1 (beta2 is fixed at 0.999)
    "warmup_epochs": 2,  # linear warm-up, then cosine to zero over the rest of `epochs`
    "epochs": 50,  # the horizon the cosine schedule spans
    "batch_size": 128,
    "label_smoothing": 0.0,
    # Sharpness-aware minimisation: each step takes its gradient at the weights moved by rho
    # along the normalised gradient (two forward/backward passes per step; 0 disables).
    # Reported gains on CIFAR-10 WRNs: about half a point, at twice the step time.
    "sam_rho": 0.0,
    # --- augmentation, done per batch on the training device ---
    "crop_padding": 4,  # random crop from a reflect-padded image; 0 disables
    "flip": True,  # random horizontal flip
    "cutout": 0,  # side of a square zeroed per image (0 disables); 8-16 px helps long runs
    # Per-image policy, on uint8 after crop and flip (trainable.policy): every 95.5%+ result
    # under 5M params uses one, with cutout, over 150-250 epochs (WRN-40-2: crop+flip 94.7,
    # +cutout 95.9, +AutoAugment 96.3). Short ASHA rungs favour "none"; see --set.
    "augment_policy": "none",  # none | trivialaugment | randaugment | autoaugment
    "randaugment_n": 2,  # ops per image (randaugment only)
    "randaugment_m": 9,  # magnitude bin 0-30 (randaugment only)
    # MixUp / CutMix on the normalised batch (torchvision.transforms.v2), soft-target loss.
    "mixup_alpha": 0.0,  # Beta(alpha, alpha) mixing weight; 0 disables
    "cutmix_alpha": 0.0,  # 0 disables; with both > 0 each mixed batch picks one at random
    "mix_prob": 1.0,  # share of batches mixed when an alpha is > 0
    "seed": 0,  # weights, shuffling, augmentation
}

OPTIMIZERS = ("adamw", "sgd")
BLOCKS = ("basic", "preact", "shake")
POLICIES = ("none", "trivialaugment", "randaugment", "autoaugment")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _positive_int_list(config: dict, key: str) -> list[int]:
    value = config[key]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"config key '{key}' must be a non-empty list of integers, got {value!r}")
    for item in value:
        if not _is_int(item) or item <= 0:
            raise ConfigError(f"config key '{key}' must hold positive integers, got {list(value)!r}")
    return list(value)


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check a config and return it completed with defaults (a new dict).

    >>> validate_config({"blocks": [1, 1], "widths": [8, 16]})["kernel_size"]
    3
    """
    if not isinstance(config, dict):
        raise ConfigError(f"a config must be a JSON object, got {type(config).__name__}")
    if isinstance(config.get("preact"), bool) and "block" not in config:
        # Configs written before `block` said `preact`: the same model.
        config = {**{k: v for k, v in config.items() if k != "preact"}, "block": "preact" if config["preact"] else "basic"}
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(DEFAULTS)}"
        )
    cfg = {**DEFAULTS, **config}

    blocks = _positive_int_list(cfg, "blocks")
    widths = _positive_int_list(cfg, "widths")
    if len(blocks) != len(widths):
        raise ConfigError(
            f"'blocks' and 'widths' must have the same length (one per stage), got {len(blocks)} and {len(widths)}"
        )
    if not MIN_STAGES <= len(blocks) <= MAX_STAGES:
        raise ConfigError(f"a model has {MIN_STAGES} to {MAX_STAGES} stages, got {len(blocks)}")
    cfg["blocks"], cfg["widths"] = blocks, widths

    for key in ("kernel_size", "skip_kernel_size"):
        if not _is_int(cfg[key]) or cfg[key] <= 0 or cfg[key] % 2 == 0:
            raise ConfigError(f"'{key}' must be a positive odd integer, got {cfg[key]!r}")
    if cfg["stem_width"] is not None and (not _is_int(cfg["stem_width"]) or cfg["stem_width"] <= 0):
        raise ConfigError(f"'stem_width' must be a positive integer or null, got {cfg['stem_width']!r}")
    if not _is_number(cfg["dropout"]) or not 0 <= cfg["dropout"] < 1:
        raise ConfigError(f"'dropout' must be in [0, 1), got {cfg['dropout']!r}")

    if cfg["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"'optimizer' must be one of {', '.join(OPTIMIZERS)}, got {cfg['optimizer']!r}")
    for key in ("lr",):
        if not _is_number(cfg[key]) or cfg[key] <= 0:
            raise ConfigError(f"'{key}' must be a positive number, got {cfg[key]!r}")
    for key in ("weight_decay", "warmup_epochs"):
        if not _is_number(cfg[key]) or cfg[key] < 0:
            raise ConfigError(f"'{key}' must be a number >= 0, got {cfg[key]!r}")
    if not _is_number(cfg["momentum"]) or not 0 <= cfg["momentum"] < 1:
        raise ConfigError(f"'momentum' must be in [0, 1), got {cfg['momentum']!r}")
    if not _is_number(cfg["label_smoothing"]) or not 0 <= cfg["label_smoothing"] < 1:
        raise ConfigError(f"'label_smoothing' must be in [0, 1), got {cfg['label_smoothing']!r}")
    for key in ("epochs", "batch_size"):
        if not _is_int(cfg[key]) or cfg[key] <= 0:
            raise ConfigError(f"'{key}' must be a positive integer, got {cfg[key]!r}")
    for key in ("crop_padding", "cutout", "seed"):
        if not _is_int(cfg[key]) or cfg[key] < 0:
            raise ConfigError(f"'{key}' must be an integer >= 0, got {cfg[key]!r}")
    if cfg["block"] not in BLOCKS:
        raise ConfigError(f"'block' must be one of {', '.join(BLOCKS)}, got {cfg['block']!r}")
    if not _is_number(cfg["drop_path"]) or not 0 <= cfg["drop_path"] < 1:
        raise ConfigError(f"'drop_path' must be in [0, 1), got {cfg['drop_path']!r}")
    if not _is_number(cfg["sam_rho"]) or cfg["sam_rho"] < 0:
        raise ConfigError(f"'sam_rho' must be a number >= 0, got {cfg['sam_rho']!r}")
    for key in ("flip", "zero_init_residual"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"'{key}' must be true or false, got {cfg[key]!r}")
    if cfg["augment_policy"] not in POLICIES:
        raise ConfigError(f"'augment_policy' must be one of {', '.join(POLICIES)}, got {cfg['augment_policy']!r}")
    if not _is_int(cfg["randaugment_n"]) or not 1 <= cfg["randaugment_n"] <= 6:
        raise ConfigError(f"'randaugment_n' must be an integer from 1 to 6, got {cfg['randaugment_n']!r}")
    if not _is_int(cfg["randaugment_m"]) or not 0 <= cfg["randaugment_m"] <= 30:
        raise ConfigError(f"'randaugment_m' must be an integer from 0 to 30, got {cfg['randaugment_m']!r}")
    for key in ("mixup_alpha", "cutmix_alpha"):
        if not _is_number(cfg[key]) or cfg[key] < 0:
            raise ConfigError(f"'{key}' must be a number >= 0, got {cfg[key]!r}")
    if not _is_number(cfg["mix_prob"]) or not 0 <= cfg["mix_prob"] <= 1:
        raise ConfigError(f"'mix_prob' must be in [0, 1], got {cfg['mix_prob']!r}")
    return cfg


def config_from_cells(cells: dict[str, str]) -> dict[str, Any]:
    """A config from text cells (a CSV row), each typed by its key's default.

    Lists are JSON, booleans True/False, an empty cell is the default.

    >>> config_from_cells({"blocks": "[1, 1]", "flip": "False", "lr": "0.01", "stem_width": ""})
    {'blocks': [1, 1], 'flip': False, 'lr': 0.01, 'stem_width': None}
    """
    config: dict[str, Any] = {}
    for key, cell in cells.items():
        default = DEFAULTS[key]
        if cell in ("", None):
            config[key] = default
        elif isinstance(default, list):
            config[key] = json.loads(cell)
        elif isinstance(default, bool):
            config[key] = cell == "True"
        elif isinstance(default, int) or default is None:
            config[key] = int(float(cell))
        elif isinstance(default, float):
            config[key] = float(cell)
        else:
            config[key] = cell
    return config


def parse_overrides(items: list[str] | None, forbidden: dict[str, str] | None = None) -> dict[str, Any]:
    """`--set KEY=VALUE` items as a dict of config values, each checked like a config key.

    VALUE is read as JSON when it parses (numbers, true/false, lists), else as a string.
    `forbidden` maps keys a command sets through its own flags to those flags.

    >>> parse_overrides(["augment_policy=trivialaugment", "cutout=16", "blocks=[2, 2]"])
    {'augment_policy': 'trivialaugment', 'cutout': 16, 'blocks': [2, 2]}
    """
    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        if key not in DEFAULTS:
            raise ConfigError(f"--set {key}: unknown config key; known keys: {', '.join(DEFAULTS)}")
        if forbidden and key in forbidden:
            raise ConfigError(f"--set {key}: use {forbidden[key]} instead")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        # Check the value alone: lists of blocks and widths against each other's length.
        probe = {"blocks": value, "widths": value} if key in ("blocks", "widths") else {key: value}
        try:
            validate_config(probe)
        except ConfigError as exc:
            raise ConfigError(f"--set {item}: {exc}") from None
        overrides[key] = value
    return overrides


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A config completed with DEFAULTS, unchecked: for code behind an entry point that validated it."""
    return {**DEFAULTS, **config}


ARCHITECTURE_KEYS = ("blocks", "widths", "kernel_size", "skip_kernel_size", "stem_width", "dropout", "block",
                     "drop_path", "zero_init_residual")


def architecture_of(config: dict[str, Any]) -> dict[str, Any]:
    """The keys that decide the model's shape (and so its parameter count)."""
    return {key: config.get(key, DEFAULTS[key]) for key in ARCHITECTURE_KEYS}
