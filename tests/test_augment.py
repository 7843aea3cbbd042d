import torch

from trainable.augment import augment_batch, crop_flip, cutout


def batch(n=16, size=8):
    # Every pixel value encodes its own (row, col), so crops can be traced back.
    rows = torch.arange(size).view(1, 1, size, 1).expand(n, 3, size, size)
    cols = torch.arange(size).view(1, 1, 1, size).expand(n, 3, size, size)
    return (rows * size + cols).to(torch.uint8).contiguous()


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_shapes_and_dtypes():
    images = batch()
    mean, std = torch.full((1, 3, 1, 1), 10.0), torch.full((1, 3, 1, 1), 5.0)
    out = augment_batch(images, mean, std, crop_padding=2, flip=True, cutout_size=3, generator=gen(0))
    assert out.shape == images.shape and out.dtype == torch.float32 and out.device == images.device
    assert crop_flip(images, 2, True, gen(0)).dtype == torch.uint8


def test_same_seed_same_batch():
    images = batch()
    a = crop_flip(images, 3, True, gen(7))
    b = crop_flip(images, 3, True, gen(7))
    c = crop_flip(images, 3, True, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_flip_really_mirrors():
    images = torch.randint(0, 255, (64, 3, 8, 8), dtype=torch.uint8)
    out = crop_flip(images, 0, True, gen(1))
    mirrored = torch.flip(images, dims=[3])
    flipped = [torch.equal(o, m) for o, m in zip(out, mirrored)]
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 54  # about half of 64


def test_crop_stays_inside_the_padded_image():
    size, pad = 8, 2
    images = batch(200, size)
    out = crop_flip(images, pad, False, gen(3))
    padded = torch.nn.functional.pad(images.float(), (pad, pad, pad, pad), mode="reflect")
    shifts = set()
    for original, cropped in zip(padded, out.float()):
        matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   if torch.equal(original[:, dy:dy + size, dx:dx + size], cropped)]
        assert matches, "crop is not a window of the reflect-padded image"
        shifts.add(matches[0])
    assert len(shifts) == (2 * pad + 1) ** 2  # every offset occurs


def test_cutout_zeroes_a_square_at_most():
    x = torch.ones(32, 3, 16, 16)
    out = cutout(x, 4, gen(0))
    zeroed = (out == 0).all(dim=1).sum(dim=(1, 2))
    assert (zeroed <= 16).all() and (zeroed > 0).all()
    assert torch.equal(cutout(x, 0, gen(0)), x)


def test_mixup_and_cutmix_train_on_soft_targets(synthetic, tiny_config):
    from trainable.data import to_device
    from trainable.loop import Trainer

    data = to_device(synthetic, "cpu", val_fraction=0.25)
    trainer = Trainer({**tiny_config, "mixup_alpha": 0.4, "cutmix_alpha": 1.0, "label_smoothing": 0.1,
                       "augment_policy": "trivialaugment"}, data)
    seen = []
    original = trainer._train_step

    def record(images, targets):
        seen.append(targets)
        return original(images, targets)

    trainer._train_step = record
    metrics = trainer.run_epoch()
    assert all(t.ndim == 2 and t.shape[1] == 10 for t in seen)  # mix_prob 1: every batch mixed
    assert all(torch.allclose(t.sum(1), torch.ones(len(t))) for t in seen)
    assert any((t.max(1).values < 1).any() for t in seen)  # really mixed, not one-hot
    assert 0 <= metrics["train_acc"] <= 1 and metrics["train_loss"] > 0


def test_soft_targets_compose_with_label_smoothing(synthetic, tiny_config):
    # The training step takes one-hot soft targets (what MixUp/CutMix make) and class ids
    # alike: with label smoothing, the same loss and the same update.
    from trainable.data import to_device
    from trainable.loop import Trainer

    data = to_device(synthetic, "cpu", val_fraction=0.25)
    hard_trainer, soft_trainer = (Trainer({**tiny_config, "label_smoothing": 0.1}, data) for _ in range(2))
    images = torch.rand(8, 3, 32, 32)
    hard = data.train_y[:8]
    _, hard_loss = hard_trainer._train_step(images, hard)
    _, soft_loss = soft_trainer._train_step(images, torch.nn.functional.one_hot(hard, 10).float())
    assert torch.allclose(hard_loss, soft_loss)
    smoothing_off = Trainer({**tiny_config, "label_smoothing": 0.0}, data)
    _, plain_loss = smoothing_off._train_step(images, hard)
    assert not torch.allclose(plain_loss, hard_loss)  # the smoothing really applied
    for a, b in zip(hard_trainer.model.parameters(), soft_trainer.model.parameters()):
        assert torch.allclose(a, b)


def test_resume_is_exact_with_policy_and_mixing(synthetic, tiny_config):
    from trainable.data import to_device
    from trainable.loop import Trainer

    data = to_device(synthetic, "cpu", val_fraction=0.25)
    cfg = {**tiny_config, "augment_policy": "randaugment", "mixup_alpha": 0.4, "cutmix_alpha": 1.0, "mix_prob": 0.5}
    straight = Trainer(cfg, data)
    list(straight.epochs())
    first = Trainer(cfg, data)
    first.run_epoch()
    state = first.state_dict()
    torch.manual_seed(99)  # MixUp draws on the host RNG: the checkpoint must restore it
    resumed = Trainer(cfg, data)
    resumed.load_state_dict(state)
    list(resumed.epochs())
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_augment_cli_writes_a_grid(tmp_path, cli):
    from PIL import Image

    from trainable.augment import main

    config = tmp_path / "cfg.json"
    config.write_text('{"augment_policy": "autoaugment", "cutout": 8, "mixup_alpha": 0.2}')
    out = tmp_path / "grid.png"
    code, stdout, _ = cli(main, ["--config", config, "--dataset", "synthetic", "--out", out, "--count", 8])
    assert code == 0 and "wrote" in stdout
    with Image.open(out) as image:
        assert image.size[0] > 8 * 32 and image.format == "PNG"
    code, _, err = cli(main, ["--config", config, "--dataset", "synthetic", "--out", tmp_path / "grid.jpg"])
    assert code == 2 and err.startswith("error:")


def test_pixel_sizes_and_policy_translations_scale_with_the_image(tiny_config):
    # A config's crop padding and cutout are for 32 px: a 64 px, one-channel set gets twice
    # as much, the policy's translations reach as far relative to the image, and the crops
    # a training step makes really shift by up to 8 pixels, not 4.
    from trainable.data import Dataset, to_device
    from trainable.loop import Trainer
    from trainable.policy import OP

    side = 64
    rows = torch.arange(side).view(1, 1, side, 1).expand(400, 1, side, side)
    images = (rows * 4).to(torch.uint8).contiguous()  # each row's value names the row
    labels = torch.arange(400) % 2
    data = to_device(Dataset(images, labels, images[:4], labels[:4], ["a", "b"]), "cpu", val_fraction=0.0)
    config = {**tiny_config, "crop_padding": 4, "cutout": 8, "flip": False, "augment_policy": "trivialaugment"}
    trainer = Trainer(config, data)
    settings = trainer.augmentation
    assert (settings["crop_padding"], settings["cutout_size"]) == (8, 16)
    assert settings["policy"].image_size == (side, side)
    table = settings["policy"].constants(torch.device("cpu"))["table"]
    assert table[OP["translate_x"]].max() == side  # TrivialAugmentWide's 32 px at 32 px
    assert trainer.model.stem[0].in_channels == 1
    crop = {**settings, "policy": None, "cutout_size": 0}
    out = augment_batch(data.train_x, torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1), generator=gen(0), **crop)
    shifts = (out[:, 0, side // 2, 0] / 4 - side // 2).long()  # the centre row's source row, minus the centre
    assert shifts.abs().max() == 8 and set(shifts.tolist()) == set(range(-8, 9))
