"""Spaces from files: `--space` as a Python file (`space(trial)`, optional `WARM_START`), a
YAML mapping of config keys to constants or distributions (`YamlSpace`), or a JSON list of
candidate configs each run once (`CandidateSpace`: the confirm stage's)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import optuna

from search.tune.space import SpaceFn
from trainable.errors import UserError


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


class CandidateSpace:
    """A space of given configs, each run once in order (its warm starts): the confirm stage's.

    >>> space = CandidateSpace([{"blocks": [1, 1], "widths": [8, 16]}, {"blocks": [2, 2], "widths": [8, 16]}])
    >>> space(optuna.trial.FixedTrial({"candidate": 1}))["blocks"], space.warm_start
    ([2, 2], [{'candidate': 0}, {'candidate': 1}])
    """

    def __init__(self, candidates: list[dict[str, Any]]):
        if not isinstance(candidates, list) or not candidates or not all(isinstance(c, dict) for c in candidates):
            raise UserError("a candidates space is a non-empty list of configs")
        self.candidates = candidates

    @property
    def warm_start(self) -> list[dict[str, int]]:
        return [{"candidate": i} for i in range(len(self.candidates))]

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        return dict(self.candidates[trial.suggest_categorical("candidate", list(range(len(self.candidates))))])


def load_space(path: str | Path) -> tuple[SpaceFn, dict[str, Any] | list[dict[str, Any]] | None]:
    """Load a user space from a .py file (`space(trial)`, optional `WARM_START`), a .yaml file,
    or a .json file of candidate configs (`{"candidates": [...]}`, each run once)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"space file {path} does not exist")
    if path.suffix == ".json":
        try:
            space = CandidateSpace(json.loads(path.read_text()).get("candidates"))
        except (json.JSONDecodeError, AttributeError):
            raise UserError(f"space file {path} must hold {{\"candidates\": [config, ...]}}") from None
        return space, space.warm_start
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise UserError(f"space file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        return YamlSpace(spec), None
    if path.suffix != ".py":
        raise UserError(f"space file {path} must end in .py, .yaml, .yml or .json")
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
