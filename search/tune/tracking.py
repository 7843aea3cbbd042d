"""Experiment trackers and TensorBoard: the search seen from the tools users already run.

- `--track mlflow` logs each trial as an MLflow run through Ray's `MLflowLoggerCallback`
  (params: the config; metrics: every result, by step). The default store is the
  experiment's own `runs/NAME/mlflow.db` (SQLite: MLflow 3 refuses a plain `mlruns/`
  folder unless told to); `--track mlflow=URI` names a tracking server or another store.
- `--track wandb` does the same through Ray's `WandbLoggerCallback`, into project NAME.
  Without an API key (WANDB_API_KEY, or `wandb login`) it runs offline, into
  `runs/NAME/wandb/`, and says so; `wandb sync` uploads it later.
- TensorBoard: whenever the `tensorboard` package is installed, every trial's figures are
  written as event files under `runs/NAME/tensorboard/TRIAL_ID/` (the trial's row id, which
  a continued trial keeps): `tensorboard --logdir runs/NAME/tensorboard`.

MLflow, W&B and TensorBoard come with the optional extra: `pip install -e ".[track]"`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ray.tune import Callback

from trainable.errors import UserError

TRACKERS = ("mlflow", "wandb")
# The per-epoch figures TensorBoard shows for each trial.
SCALARS = ("val_acc", "val_loss", "train_acc", "train_loss", "lr", "images_per_second")


def parse_track(items: Sequence[str] | None) -> dict[str, str | None]:
    """--track values -> {tracker: URI or None}.

    >>> parse_track(["mlflow", "wandb"]), parse_track(["mlflow=http://host:5000"])
    ({'mlflow': None, 'wandb': None}, {'mlflow': 'http://host:5000'})
    """
    trackers: dict[str, str | None] = {}
    for item in items or []:
        name, _, uri = item.partition("=")
        if name not in TRACKERS:
            raise UserError(f"--track takes {' or '.join(TRACKERS)} (mlflow=URI for a server), got {item!r}")
        if name == "wandb" and uri:
            raise UserError("--track wandb takes no URI: set WANDB_BASE_URL for a server of your own")
        try:
            __import__(name)
        except ImportError:
            raise UserError(f"--track {name} needs the {name} package: pip install -e \".[track]\"") from None
        trackers[name] = uri or None
    return trackers


def mlflow_uri(folder: Path, uri: str | None) -> str:
    """Where MLflow records the experiment: the URI given, else the experiment's own SQLite store."""
    return uri or f"sqlite:///{(Path(folder) / 'mlflow.db').resolve()}"


def wandb_mode() -> str:
    """'online' when W&B has an API key (environment or `wandb login`), else 'offline'."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    import wandb

    return "online" if wandb.api.api_key else "offline"


def search_callbacks(trackers: dict[str, str | None], folder: Path, name: str) -> list[Any]:
    """Ray Tune callbacks for `trackers`, plus TensorBoard when its package is installed."""
    callbacks: list[Any] = []
    if "mlflow" in trackers:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(tracking_uri=mlflow_uri(folder, trackers["mlflow"]),
                                              experiment_name=name))
    if "wandb" in trackers:
        from ray.air.integrations.wandb import WandbLoggerCallback

        mode = wandb_mode()
        if mode == "offline":
            print(f"W&B: no API key found (WANDB_API_KEY or `wandb login`): logging offline into {folder / 'wandb'}; "
                  "`wandb sync` uploads it later", flush=True)
        (folder / "wandb").mkdir(parents=True, exist_ok=True)
        callbacks.append(WandbLoggerCallback(project=name, mode=mode, dir=str((folder / "wandb").resolve())))
    if tensorboard_available():
        callbacks.append(TensorBoardLog(folder / "tensorboard"))
    return callbacks


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardLog(Callback):
    """Event files per trial (by its row id) under `folder`, one point per epoch."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.writers: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "writers": {}}  # open writers do not pickle; they reopen

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        from search.records import row_id

        epoch = result.get("epoch")
        if epoch is None or result.get("status") == "errored":
            return
        key = row_id(trial)
        if key not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            self.writers[key] = SummaryWriter(str(self.folder / key))
        for name in SCALARS:
            if result.get(name) is not None:
                self.writers[key].add_scalar(name, float(result[name]), int(epoch))
        self.writers[key].flush()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from search.records import row_id

        writer = self.writers.pop(row_id(trial), None)
        if writer is not None:
            writer.close()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers = {}


def log_retrain(trackers: dict[str, str | None], experiment: Path | None, name: str, config: dict[str, Any],
                result: dict[str, Any], out: Path) -> None:
    """The retrain in the trackers: its config, each seed's test figures, and the model folder."""
    per_seed = result.get("per_seed", [])
    metrics = {k: v for k, v in result.items() if k.startswith("test_acc") and isinstance(v, float)}
    if "mlflow" in trackers:
        import mlflow

        mlflow.set_tracking_uri(mlflow_uri(experiment or out, trackers["mlflow"]))
        title = f"{name}-retrain"
        if mlflow.get_experiment_by_name(title) is None:
            artifacts = ((experiment or out) / "mlartifacts").resolve()
            mlflow.create_experiment(title, artifact_location=artifacts.as_uri())
        mlflow.set_experiment(title)
        with mlflow.start_run(run_name=out.name):
            mlflow.log_params({k: str(v) for k, v in config.items()})
            mlflow.log_metrics(metrics)
            for seed in per_seed:
                mlflow.log_metrics({f"seed_{seed['seed']}_{k}": v for k, v in seed.items()
                                    if k.startswith("test_acc") and isinstance(v, float)})
            mlflow.log_artifacts(str(out), artifact_path="model")
    if "wandb" in trackers:
        import wandb

        folder = (experiment or out) / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=name, name=f"retrain-{out.name}", job_type="retrain", config=config,
                         mode=wandb_mode(), dir=str(folder.resolve()), reinit="finish_previous")
        for seed in per_seed:
            run.log({k: v for k, v in seed.items() if k.startswith("test_acc") and isinstance(v, float)})
        run.summary.update(metrics)
        artifact = wandb.Artifact(f"{name}-model", type="model")
        artifact.add_dir(str(out))
        run.log_artifact(artifact)
        run.finish()
