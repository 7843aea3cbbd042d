import json
import subprocess
import sys

import pytest
import torch

from trainable.config import validate_config
from trainable.errors import ConfigError
from trainable.model import build_model, count_params, layer_summary, main

SEED = {"blocks": [3, 5, 3], "widths": [64, 128, 256], "kernel_size": 3, "skip_kernel_size": 1}


def test_seed_model_counts_exactly():
    assert count_params(SEED) == 4_918_602


def test_count_matches_a_real_model():
    cfg = {"blocks": [2, 1, 1, 1], "widths": [8, 16, 24, 32], "kernel_size": 5, "skip_kernel_size": 3,
           "stem_width": 12}
    real = sum(p.numel() for p in build_model(cfg, num_classes=7).parameters() if p.requires_grad)
    assert count_params(cfg, num_classes=7) == real


def test_shortcut_and_kernel_change_the_count():
    # Published under this convention: a 3x3 shortcut lifts the seed to 5,246,282.
    assert count_params({**SEED, "skip_kernel_size": 3}) == 5_246_282
    assert count_params({"blocks": [2, 2, 2, 2], "widths": [64, 128, 232, 268]}) == 4_994_298


@pytest.mark.parametrize("blocks,widths", [([1, 1], [8, 16]), ([1, 2, 1], [8, 16, 32]), ([1, 1, 1, 1], [8, 16, 16, 32])])
def test_forward_shapes(blocks, widths):
    model = build_model({"blocks": blocks, "widths": widths, "dropout": 0.1}, num_classes=10)
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 10)
    # Stride 2 at the first block of each stage after the first: 32 / 2**(stages-1).
    features = model.stages(model.stem(torch.randn(1, 3, 32, 32)))
    assert features.shape[-1] == 32 // 2 ** (len(blocks) - 1)
    assert features.shape[1] == widths[-1]


def test_layer_table_ends_with_trainable_params():
    table = layer_summary(SEED)
    assert table.splitlines()[-1] == "Trainable params: 4,918,602"
    assert "Conv2d-1" in table and "[-1, 64, 32, 32]" in table and "[-1, 256, 8, 8]" in table


def test_model_cli_prints_the_table(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(SEED))
    done = subprocess.run([sys.executable, "-m", "trainable.model", "--config", str(path)],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "Trainable params: 4,918,602"


@pytest.mark.parametrize(
    "config,message",
    [
        ({"blocks": [1, 1], "widths": [8, 16], "colour": 1}, "unknown config key"),
        ({"blocks": [0, 1], "widths": [8, 16]}, "positive integers"),
        ({"blocks": [1, 1], "widths": [8, -16]}, "positive integers"),
        ({"blocks": [1] * 5, "widths": [8] * 5}, "2 to 4 stages"),
        ({"blocks": [1, 1, 1], "widths": [8, 16]}, "same length"),
        ({"blocks": [1, 1], "widths": [8, 16], "kernel_size": 4}, "odd"),
        ({"blocks": [1, 1], "widths": [8, 16], "optimizer": "adam"}, "optimizer"),
    ],
)
def test_bad_configs_are_refused(config, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_bad_config_cli_is_one_line_exit_2(tmp_path, cli):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"blocks": [1, 1, 1, 1, 1], "widths": [8] * 5}))
    code, out, err = cli(main, ["--config", path])
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
