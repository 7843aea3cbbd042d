"""The commands as Python functions, for notebooks and scripts.

    from search.api import search, auto, retrain, predict
    import analysis

    result = search(gpus=0, dataset="synthetic", subset=400, trials=6, max_epochs=3, name="quick")
    analysis.load(result.folder)                # the trial table, a DataFrame
    model = retrain(result.folder, epochs=30)   # the best trial on train + val
    submission = predict(model.folder, input="test.npy", out="submission.csv", tta=True)

Each function takes its command's flags as keyword arguments, spelt as the flag without
the dashes (`max_epochs=3` is `--max-epochs 3`; `set={"cutout": 16}` is `--set cutout=16`;
`True` gives a switch, `warm_start=False` is `--no-warm-start`), so a call means exactly
what the command line means, checks included; `python -m search.run --help` documents
them all. Each returns a result object rather than printing one. A user's mistake raises
`UserError` with the message the command line prints.

In a notebook: the stop button (SIGINT) ends a search as Ctrl-C does (the running trials
are left to `resume=True`, and the result says the search is incomplete); Ray's progress
table keeps to `verbose=1` unless asked for more; a second call in the same kernel works,
whether or not Ray was already started.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from trainable.errors import UserError

# Switches that are on by default and turned off by a --no-... flag.
NEGATED = {"warm_start": "--no-warm-start"}


def flags_to_argv(positionals: Sequence[Any], flags: dict[str, Any]) -> list[str]:
    """Keyword arguments as a command line.

    >>> flags_to_argv(["runs/x"], {"max_epochs": 3, "resume": True, "compile": False, "set": {"cutout": 16},
    ...                            "warm_start": False, "name": None})
    ['runs/x', '--max-epochs', '3', '--resume', '--set', 'cutout=16', '--no-warm-start']
    """
    argv = [str(p) for p in positionals]
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if name in NEGATED:
            argv += [] if value else [NEGATED[name]]
        elif isinstance(value, bool):
            argv += [flag] if value else []
        elif isinstance(value, dict):
            for key, item in value.items():
                argv += [flag, f"{key}={json.dumps(item) if not isinstance(item, str) else item}"]
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


# Switches: on the command line a bare flag, here a keyword set to True.
SWITCHES = {"resume", "force", "compile", "dry_run", "ema", "tta", "front"}


def keyword_text(message: str) -> str:
    """A command's message in this API's terms: `--max-epochs` as `max_epochs`, `--resume` as
    `resume=True`, `--no-warm-start` as `warm_start=False`.

    >>> keyword_text("experiment runs/x already exists; pass --resume to continue it")
    'experiment runs/x already exists; pass resume=True to continue it'
    >>> keyword_text("--grace-epochs (5) cannot exceed --max-epochs (3); or pass --no-warm-start")
    'grace_epochs (5) cannot exceed max_epochs (3); or pass warm_start=False'
    """
    def keyword(match: re.Match) -> str:
        name = match.group(1).replace("-", "_")
        if name.startswith("no_"):
            return f"{name[3:]}=False"
        return f"{name}=True" if name in SWITCHES else name

    return re.sub(r"(?<![\w-])--([a-z][a-z0-9-]*)", keyword, message)


def _keywords(parse: Callable[[list[str]], Any]) -> list[str]:
    """The keywords a command takes, from its own --help."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        parse(["--help"])
    return sorted({m.replace("-", "_") for m in re.findall(r"--([a-z][a-z0-9-]*)", out.getvalue())} - {"help"})


def _parse(parse: Callable[[list[str]], Any], argv: list[str]) -> Any:
    """Run a command's parser (or main); its one-line error becomes a UserError in keyword
    terms (a misspelt keyword gets the nearest one), not an exit."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            result = parse(argv)
    except SystemExit:
        lines = err.getvalue().strip().splitlines()
        message = lines[-1].removeprefix("error: ") if lines else "invalid arguments"
        unknown = re.search(r"unrecognized arguments: --([a-z][a-z0-9-]*)", message)
        if unknown:
            name = unknown.group(1).replace("-", "_")
            near = difflib.get_close_matches(name, _keywords(parse), n=1)
            raise UserError(f"unknown keyword {name!r}" + (f"; did you mean {near[0]!r}?" if near else "")) from None
        raise UserError(keyword_text(message)) from None
    except UserError as exc:
        raise UserError(keyword_text(str(exc))) from None
    sys.stderr.write(err.getvalue())  # warnings the command printed, passed on
    return result


def _in_keywords(run: Callable[[], Any]) -> Any:
    """Run a command's work; a UserError it raises speaks in keywords."""
    try:
        return run()
    except UserError as exc:
        raise UserError(keyword_text(str(exc))) from None


@dataclass
class SearchResult:
    """What `search` returns: the experiment folder, whether every trial ended, the best
    trial (best.json's content) and the summary the command line prints."""

    folder: Path
    complete: bool
    best: dict[str, Any] | None
    summary: str
    counts: dict[str, int] = field(default_factory=dict)

    def __repr__(self) -> str:
        best = f"best val_acc {self.best['val_acc']:.4f} (trial {self.best['trial_id']})" if self.best else "no best yet"
        return f"SearchResult({self.folder}, {'complete' if self.complete else 'incomplete'}, {best})"


def search(**flags: Any) -> SearchResult:
    """Run (or, with resume=True, continue) a search: `python -m search.run` as a function."""
    from search.run import run_search
    from search.settings import build_parser, settings_from_parsed

    args = _parse(lambda argv: vars(build_parser().parse_args(argv)), flags_to_argv([], flags))
    outcome = _in_keywords(lambda: run_search(settings_from_parsed(args)))
    return SearchResult(outcome.folder, outcome.complete, outcome.best, outcome.summary, outcome.counts)


@dataclass
class AutoResult:
    """What `auto` returns: the experiment, the submission, the retrained trial and auto.json."""

    folder: Path
    submission: Path
    trial_id: str
    test_acc: float | None
    record: dict[str, Any]

    def __repr__(self) -> str:
        from search.ledger import total_seconds

        stages = self.record["stages"]
        used = sum(st.get("used_s", 0.0) for st in stages.values())
        who = "the fixed recipe" if self.trial_id == "recipe" else f"trial {self.trial_id}"
        test = "n/a" if self.test_acc is None else f"{self.test_acc:.4f}"
        return (f"AutoResult({self.folder}: {who} retrained {stages['retrain'].get('epochs')} epochs, test acc {test}; "
                f"{stages['predict'].get('rows')} rows in {self.submission}; stages {used / 60:.1f} of "
                f"{self.record['time_budget_s'] / 60:.1f} min, {total_seconds(self.record)[0] / 60:.1f} min in all)")


def auto(**flags: Any) -> AutoResult:
    """From data to submission under one deadline: `python -m search.auto` as a function."""
    from search.auto import build_auto_parser, options_from_parsed, run_auto

    args = _parse(lambda argv: vars(build_auto_parser().parse_args(argv)), flags_to_argv([], flags))
    settings, options = _in_keywords(lambda: options_from_parsed(args))
    record = _in_keywords(lambda: run_auto(settings, options))
    if record.get("dry_run"):
        raise UserError("dry_run=True only prints the plan; call without it to run")
    retrained = record["stages"]["retrain"]
    return AutoResult(settings.folder, Path(record["stages"]["predict"]["submission"]), retrained["trial_id"],
                      retrained.get("test_acc_ema_mean", retrained.get("test_acc_ema_tta_mean")), record)


@dataclass
class RetrainResult:
    """What `retrain` returns: the model folder (for `predict`) and its metrics.json."""

    folder: Path
    metrics: dict[str, Any]

    @property
    def test_acc(self) -> float | None:
        return self.metrics.get("test_acc_mean", self.metrics.get("test_acc_ema_mean"))

    def __repr__(self) -> str:
        if "members" in self.metrics:
            return f"RetrainResult({self.folder}: {len(self.metrics['members'])} front members retrained)"
        seeds = len(self.metrics.get("seeds", []))
        test = "n/a" if self.test_acc is None else f"{self.test_acc:.4f}"
        return (f"RetrainResult({self.folder}: {self.metrics.get('params', 0):,} params, {seeds} seed(s), "
                f"test acc {test}, {self.metrics.get('status')})")


def retrain(experiment: str | Path | None = None, **flags: Any) -> RetrainResult:
    """Retrain a trial on train + val and test it once: `python -m search.retrain` as a function.

    `out` defaults as on the command line (EXPERIMENT/final). With front=True every front
    member is retrained; the result's folder is then the front folder, and `metrics` holds
    front.csv's rows under "members".
    """
    from search.retrain import main, output_folder

    argv = flags_to_argv([experiment] if experiment else [], flags)
    _parse(main, argv)
    front = bool(flags.get("front"))
    out = output_folder(flags.get("out"), str(experiment) if experiment else None, flags.get("config"), front)
    if front:
        return RetrainResult(out, {"members": pd.read_csv(out / "front.csv").to_dict("records")})
    return RetrainResult(out, json.loads((out / "metrics.json").read_text()))


@dataclass
class PredictResult:
    """What `predict` returns: the submission CSV and its rows."""

    submission: Path
    rows: pd.DataFrame

    def __repr__(self) -> str:
        return f"PredictResult({self.submission}: {len(self.rows)} rows)"


def predict(model: str | Path, **flags: Any) -> PredictResult:
    """Label unlabelled images into a submission CSV: `python -m search.predict` as a function."""
    from search.predict import main

    _parse(main, flags_to_argv([model], flags))
    out = Path(flags.get("out") or "submission.csv")
    return PredictResult(out, pd.read_csv(out))


__all__ = ["search", "auto", "retrain", "predict", "SearchResult", "AutoResult", "RetrainResult", "PredictResult",
           "flags_to_argv"]
