import json
import subprocess
import sys

import pytest
import torch

from trainable.config import validate_config
from trainable.errors import ConfigError
from trainable.model import build_model, count_params, layer_summary, main
from trainable import zoo
from trainable.zoo import architecture

SEED = architecture(zoo.SEED)


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


def test_preactivation_counts_match_counts_by_hand():
    # WRN-40-2 (pre-activation [6,6,6] x [32,64,128], stem 16), counted by hand:
    # stem 3*16*9 = 432
    # stage 1: first block bn(16) 32 + 16*32*9 + bn(32) 64 + 32*32*9 + 1x1 16*32 = 14,432;
    #          five more (64 + 9,216) * 2 = 18,560 each -> 107,232
    # stage 2: 64 + 18,432 + 128 + 36,864 + 2,048 = 57,536; five more 73,984 each -> 427,456
    # stage 3: 128 + 73,728 + 256 + 147,456 + 8,192 = 229,760; five more 295,424 each -> 1,706,880
    # final bn(128) 256, head 128*10 + 10 = 1,290.  Total 2,243,546 (the published WRN-40-2 size).
    wrn_40_2 = {"blocks": [6, 6, 6], "widths": [32, 64, 128], "stem_width": 16, "block": "preact"}
    assert count_params(wrn_40_2) == 432 + 107_232 + 427_456 + 1_706_880 + 256 + 1_290 == 2_243_546
    # WRN-16-4 ([2,2,2] x [64,128,256], stem 16): 432 + 121,248 + 525,184 + 2,098,944 + 512 + 2,570.
    wrn_16_4 = {"blocks": [2, 2, 2], "widths": [64, 128, 256], "stem_width": 16, "block": "preact"}
    assert count_params(wrn_16_4) == 432 + 121_248 + 525_184 + 2_098_944 + 512 + 2_570 == 2_748_890
    # The same shape with post-activation blocks (BN after the stem and in each shortcut).
    assert count_params({**wrn_40_2, "block": "basic"}) == 2_243_994
    model = build_model(wrn_16_4)
    assert sum(p.numel() for p in model.parameters()) == 2_748_890
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_layer_table_names_the_block_form():
    assert "pre-activation" in layer_summary({"blocks": [1, 1], "widths": [8, 16], "block": "preact"}).splitlines()[0]
    assert "post-activation" in layer_summary({"blocks": [1, 1], "widths": [8, 16]}).splitlines()[0]


@pytest.mark.parametrize("block", ["basic", "preact", "shake"])
def test_the_closed_form_count_equals_the_built_models_count(block):
    """count_params (closed form, microseconds) against the parameters of the model itself,
    over random shapes: odd widths, 5x5 kernels, 3x3 shortcuts, stems, classes, channels."""
    import random

    from trainable.model import count_built

    rng = random.Random(block)
    for _ in range(150):
        stages = rng.randint(2, 4)
        config = {"blocks": [rng.randint(1, 4) for _ in range(stages)],
                  "widths": [rng.choice([8, 12, 16, 24, 33, 64]) for _ in range(stages)], "block": block,
                  "kernel_size": rng.choice([3, 5]), "skip_kernel_size": rng.choice([1, 3]),
                  "stem_width": rng.choice([None, 7, 16]), "dropout": rng.random() * 0.3}
        classes, channels = rng.choice([10, 100]), rng.choice([1, 3])
        assert count_params(config, classes, channels) == count_built(config, classes, channels), config
