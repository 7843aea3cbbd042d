"""The test split is never read before the final evaluation: not by a search, not by a retrain."""

import json
import sys

import pytest

import trainable.data
from search.retrain import main as retrain_main
from trainable.data import Dataset, make_synthetic
from trainable.loop import Trainer
from search.tune.trial import SearchTrial


def _watched(name: str) -> property:
    """A property that writes 'test' into the dataset's log whenever `name` is read."""

    def read(self):
        self._log.append("test")
        return self.__dict__[name]

    def write(self, value):
        self.__dict__[name] = value

    return property(read, write)


class WatchedDataset(Dataset):
    """A Dataset that writes 'test' into a log whenever its test images or labels are read."""

    test_images = _watched("test_images")
    test_labels = _watched("test_labels")

    def __init__(self, base: Dataset, log: list):
        self._log = log
        super().__init__(base.train_images, base.train_labels, base.test_images, base.test_labels, base.classes)


@pytest.fixture
def watched(monkeypatch):
    log: list = []
    base = make_synthetic(n_train=300, n_test=100)

    def load(name, data_dir=None, download=False):  # the real signature; nothing is fetched
        return WatchedDataset(base, log)

    monkeypatch.setattr(trainable.data, "load_dataset", load)
    trainable.data._PREPARED.clear()
    yield log
    trainable.data._PREPARED.clear()


class TrialWithoutATestSplit(SearchTrial):
    """The real trial, after checking that what reached it holds exactly the training images:
    the same count, and not one of the test images (the synthetic set is made again here)."""

    def setup(self, config, data, spec, options):
        base = make_synthetic(n_train=300, n_test=100)
        assert len(data.images) == len(base.train_images) == len(data.labels)
        train = {bytes(image) for image in data.images}
        assert not any(bytes(image) in train for image in base.test_images.numpy()), "a test image reached a trial"
        super().setup(config, data, spec, options)


def test_a_search_never_reads_the_test_split(watched, ray_session, space_file, tmp_path):
    from ray import cloudpickle

    from conftest import settings
    from search.run import run_search

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    outcome = run_search(settings(tmp_path, space_file, name="honest", trials=2, max_epochs=2),
                         trial_cls=TrialWithoutATestSplit)
    assert outcome.counts.get("completed", 0) + outcome.counts.get("stopped", 0) == 2
    assert watched == [], "the search read the test split"


def test_a_retrain_reads_the_test_split_only_after_its_last_epoch(watched, tmp_path, cli):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"blocks": [1, 1], "widths": [8, 16], "batch_size": 64, "warmup_epochs": 0}))
    original = Trainer.run_epoch

    def logged_epoch(self):
        metrics = original(self)
        watched.append(f"epoch {metrics['epoch']}")
        return metrics

    Trainer.run_epoch = logged_epoch
    try:
        code, _, _ = cli(retrain_main, ["--config", cfg, "--dataset", "synthetic", "--epochs", 3, "--out",
                                        tmp_path / "final"])
    finally:
        Trainer.run_epoch = original
    assert code == 0
    first_test = watched.index("test")
    assert watched[:first_test] == ["epoch 1", "epoch 2", "epoch 3"], watched
    assert all(event == "test" for event in watched[first_test:])
