"""The regularisers of the 96-97% recipes: SAM, stochastic depth, zero-init residuals, Shake-Shake."""

import copy

import pytest
import torch
import torch.nn.functional as F

from trainable.config import validate_config
from trainable.data import make_synthetic, to_device
from trainable.loop import Trainer
from trainable.model import BasicBlock, PreActBlock, ShakeBlock, build_model, count_params, drop_path, shake
from trainable.zoo import SEED, architecture

TINY = {"blocks": [1, 1], "widths": [8, 16], "epochs": 2, "batch_size": 32, "warmup_epochs": 0}


@pytest.fixture(scope="module")
def data():
    return to_device(make_synthetic(n_train=256, n_test=64), "cpu", val_fraction=0.25)


def test_new_keys_change_nothing_by_default(data):
    config = validate_config(architecture(SEED))
    assert (config["sam_rho"], config["drop_path"], config["zero_init_residual"], config["block"]) == (
        0.0, 0.0, False, "basic")
    assert count_params(config) == 4_918_602
    torch.manual_seed(0)
    a = build_model(TINY)
    torch.manual_seed(0)
    b = build_model({**TINY, "drop_path": 0.0, "zero_init_residual": False, "block": "basic"})
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert validate_config({**TINY, "preact": True})["block"] == "preact"  # configs from before `block`


@pytest.mark.parametrize("bad", [{"sam_rho": -0.1}, {"drop_path": 1.0}, {"zero_init_residual": 1},
                                 {"block": "bottleneck"}])
def test_bad_regulariser_values_are_refused(bad):
    from trainable.errors import ConfigError

    with pytest.raises(ConfigError):
        validate_config({**TINY, **bad})


def test_sam_first_step_is_the_hand_computed_one(data):
    config = {**TINY, "optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "sam_rho": 0.05}
    trainer = Trainer(config, data)
    start = copy.deepcopy(trainer.model)
    images, labels = torch.randn(16, 3, 32, 32), data.train_y[:16]
    # By hand: the gradient at w, a move of rho along it (global norm), the gradient there,
    # and plain SGD from w with that second gradient.
    model = copy.deepcopy(start).train()
    F.cross_entropy(model(images), labels).backward()
    params = [p for p in model.parameters()]
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
    moves = [0.05 * p.grad / (norm + 1e-12) for p in params]
    with torch.no_grad():
        for p, move in zip(params, moves):
            p += move
            p.grad = None
    F.cross_entropy(model(images), labels).backward()
    expected = [w.detach() - 0.1 * p.grad for w, p in zip(start.parameters(), params)]
    trainer._train_step(images, labels)
    for got, want in zip(trainer.model.parameters(), expected):
        assert torch.allclose(got, want, atol=1e-6)
    # ... which differs from a plain SGD step at w (the test can tell the two apart).
    plain = Trainer({**config, "sam_rho": 0.0}, data)
    plain._train_step(images, labels)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain.model.parameters(), trainer.model.parameters()))


def test_sam_composes_with_ema_mixup_a_policy_and_every_block(data):
    for block in ("basic", "preact", "shake"):
        trainer = Trainer({**TINY, "sam_rho": 0.05, "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "block": block,
                           "augment_policy": "trivialaugment", "drop_path": 0.2, "zero_init_residual": True},
                          data, ema_decay=0.9)
        metrics = [m for m in trainer.epochs()]
        assert len(metrics) == 2 and all(torch.isfinite(torch.tensor(m["train_loss"])) for m in metrics)
        ema = trainer.evaluate(data.val_x, data.val_y, use_ema=True)
        assert torch.isfinite(torch.tensor(ema["loss"])) and 0 <= ema["acc"] <= 1
        # The average moved with the training: it is neither the first weights nor the last.
        first = Trainer({**TINY, "block": block}, data).model.state_dict()
        averaged, last = trainer.ema.module.state_dict(), trainer.model.state_dict()
        moved = [k for k, v in averaged.items() if v.is_floating_point() and not torch.equal(v, first[k])]
        assert moved and any(not torch.equal(averaged[k], last[k]) for k in moved), block


def test_drop_path_is_the_identity_at_evaluation_and_rescales_in_training():
    torch.manual_seed(0)
    branch = torch.ones(4000, 2, 3, 3)
    assert torch.equal(drop_path(branch, 0.3, training=False), branch)
    out = drop_path(branch, 0.3, training=True)
    per_image = out.flatten(1)
    kept = (per_image != 0).all(dim=1)
    assert ((per_image == 0).all(dim=1) | kept).all()  # a whole image's branch, or none of it
    assert torch.allclose(per_image[kept], torch.full_like(per_image[kept], 1 / 0.7))
    assert abs(kept.float().mean().item() - 0.7) < 0.03  # dropped at the rate asked
    model = build_model({**TINY, "blocks": [2, 2], "drop_path": 0.4})
    rates = [block.drop for stage in model.stages for block in stage]
    assert rates == pytest.approx([0.1, 0.2, 0.3, 0.4])  # rising linearly to the last block
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    plain = build_model({**TINY, "blocks": [2, 2]})
    plain.load_state_dict(model.state_dict())
    plain.eval()
    assert torch.equal(model(x), plain(x))  # at evaluation the model is the one without it


@pytest.mark.parametrize("block_type", [BasicBlock, PreActBlock, ShakeBlock])
@pytest.mark.parametrize("shape", [(16, 16, 1), (8, 16, 2)])
def test_zero_init_makes_each_block_its_shortcut(block_type, shape):
    in_ch, out_ch, stride = shape
    torch.manual_seed(0)
    model = build_model({**TINY, "widths": [in_ch, out_ch] if in_ch != out_ch else [16, 16],
                         "block": {BasicBlock: "basic", PreActBlock: "preact", ShakeBlock: "shake"}[block_type],
                         "zero_init_residual": True})
    block = model.stages[1][0] if in_ch != out_ch else model.stages[0][0]
    assert isinstance(block, block_type)
    x = torch.randn(4, in_ch, 8, 8)
    for mode in ("train", "eval"):
        getattr(block, mode)()
        out = block(x)
        if block_type is BasicBlock:
            expected = torch.relu(block.shortcut(x))
        elif block_type is PreActBlock:
            expected = x if block.shortcut is None else block.shortcut(torch.relu(block.bn1(x)))
        else:
            expected = block.shortcut(x)
        assert torch.allclose(out, expected, atol=1e-6), (block_type.__name__, mode)
    off = build_model({**TINY, "block": {BasicBlock: "basic", PreActBlock: "preact", ShakeBlock: "shake"}[block_type]})
    assert any(norm.weight.abs().sum() > 0 for stage in off.stages for b in stage for norm in b.last_norms())


def test_shake_mixes_half_and_half_at_evaluation_and_per_image_in_training():
    torch.manual_seed(0)
    a = torch.randn(64, 4, 2, 2, requires_grad=True)
    b = torch.randn(64, 4, 2, 2, requires_grad=True)
    assert torch.allclose(shake(a, b, training=False), 0.5 * (a + b))
    out = shake(a, b, training=True)
    # Forward: each image a convex mix of its two branches with its own weight alpha.
    alpha = ((out - b) / (a - b)).detach().flatten(1)
    assert torch.allclose(alpha, alpha[:, :1].expand_as(alpha), atol=1e-4)
    assert ((alpha >= 0) & (alpha <= 1)).all() and alpha[:, 0].std() > 0.1
    # Backward: weights beta and 1 - beta, drawn apart from alpha.
    out.sum().backward()
    beta = a.grad.flatten(1)
    assert torch.allclose(a.grad + b.grad, torch.ones_like(a.grad))
    assert torch.allclose(beta, beta[:, :1].expand_as(beta))
    assert not torch.allclose(beta[:, 0], alpha[:, 0], atol=1e-3)


def test_shake_shake_26_2x32d_counts_by_hand():
    # Shake-Shake 26 2x32d: stem conv 16 + BN; stages [4,4,4] x [32,64,128], two branches
    # (conv-BN-conv-BN) per block; a shortcut of two 1x1 convs to half the width + BN where
    # the shape changes. By hand:
    # stem 3*16*9 + 32 = 464
    # stage 1: first 2 * (16*32*9 + 64 + 32*32*9 + 64) + 2 * 16*16 + 64 = 28,480;
    #          three more 2 * (2 * (32*32*9 + 64)) = 37,120 each -> 111,360
    # stage 2: 2 * (32*64*9 + 128 + 64*64*9 + 128) + 2 * 32*32 + 128 = 113,280; three more 147,968 -> 443,904
    # stage 3: 2 * (64*128*9 + 256 + 128*128*9 + 256) + 2 * 64*64 + 256 = 451,840; three more 590,848 -> 1,772,544
    # head 128*10 + 10 = 1,290.  Total 2,923,162 (the published 2.9M).
    config = {"blocks": [4, 4, 4], "widths": [32, 64, 128], "stem_width": 16, "block": "shake"}
    assert count_params(config) == 464 + 28_480 + 111_360 + 113_280 + 443_904 + 451_840 + 1_772_544 + 1_290 \
        == 2_923_162
    model = build_model(config)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
