"""Per-sample policy augmentation against torchvision, op by op, and the policies' draws."""

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms.v2 import InterpolationMode

from trainable.policy import OP, OPS, WIDE_OPS, PolicyAugment, apply_ops, magnitude_table, op_frequencies

NEAREST = InterpolationMode.NEAREST


def reference(image: torch.Tensor, name: str, m: float) -> torch.Tensor:
    """What torchvision's AutoAugment family does to one image for op `name` at magnitude `m`."""
    affine = dict(angle=0.0, scale=1.0, interpolation=NEAREST, fill=None)
    if name == "identity":
        return image
    if name == "shear_x":
        return TF.affine(image, translate=[0, 0], shear=[math.degrees(math.atan(m)), 0.0], center=[0, 0], **affine)
    if name == "shear_y":
        return TF.affine(image, translate=[0, 0], shear=[0.0, math.degrees(math.atan(m))], center=[0, 0], **affine)
    if name == "translate_x":
        return TF.affine(image, translate=[int(m), 0], shear=[0.0, 0.0], **affine)
    if name == "translate_y":
        return TF.affine(image, translate=[0, int(m)], shear=[0.0, 0.0], **affine)
    if name == "rotate":
        return TF.rotate(image, angle=m, interpolation=NEAREST, fill=None)
    if name in ("brightness", "color", "contrast", "sharpness"):
        adjust = {"brightness": TF.adjust_brightness, "color": TF.adjust_saturation,
                  "contrast": TF.adjust_contrast, "sharpness": TF.adjust_sharpness}[name]
        return adjust(image, 1.0 + m)
    if name == "posterize":
        return TF.posterize(image, int(m))
    if name == "solarize":
        return TF.solarize(image, 255.0 * m)
    return {"autocontrast": TF.autocontrast, "equalize": TF.equalize, "invert": TF.invert}[name](image)


def smooth_images(channels: int = 3, size: tuple[int, int] = (32, 32)) -> torch.Tensor:
    # Smooth images with structure (upsampled noise), so blur, equalize and shifts all matter.
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 256, (24, channels, 8, 8), generator=generator).float()
    return torch.nn.functional.interpolate(coarse, size=size, mode="bilinear").round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def images():
    return smooth_images()


# CIFAR-10's images, a grayscale set's (one channel, 28 px) and colour images that are not square.
KINDS = {"rgb 32": (3, (32, 32)), "gray 28": (1, (28, 28)), "rgb 24x40": (3, (24, 40))}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", OPS)
def test_each_op_matches_torchvision_image_by_image(name, kind):
    channels, size = KINDS[kind]
    images = smooth_images(channels, size)
    # Every magnitude bin of every policy that uses the op at this size, both signs, a different one per image.
    levels = torch.cat([magnitude_table(p, size)[OP[name]] for p in ("trivialaugment", "randaugment", "autoaugment")])
    if name in ("posterize",):
        levels = levels.clamp(0, 8)
    signs = torch.tensor([1.0, -1.0]) if name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate",
                                                   "brightness", "color", "contrast", "sharpness") else torch.ones(1)
    magnitudes = (levels[:, None] * signs[None, :]).flatten()
    worst_share, worst_error = 1.0, 0
    for start in range(0, len(magnitudes), len(images)):
        chunk = magnitudes[start:start + len(images)]
        batch = images[:len(chunk)]
        got = apply_ops(batch, torch.full((len(chunk),), OP[name]), chunk)
        expected = torch.stack([reference(img, name, float(m)) for img, m in zip(batch, chunk)])
        error = (got.int() - expected.int()).abs()
        worst_share = min(worst_share, (error <= 1).float().mean().item())
        worst_error = max(worst_error, int(error.max()))
    assert got.dtype == torch.uint8
    assert worst_share >= 0.99, f"{name}: only {worst_share:.4f} of pixels within 1 level (max error {worst_error})"


def test_images_with_different_ops_get_their_own(images):
    ops = torch.arange(len(images)) % len(OPS)
    magnitudes = torch.full((len(images),), 0.3)
    got = apply_ops(images, ops, magnitudes)
    expected = torch.stack([reference(image, OPS[int(op)], 0.3) for image, op in zip(images, ops)])
    assert ((got.int() - expected.int()).abs() <= 1).float().mean() >= 0.99


def test_trivialaugment_draws_ops_uniformly():
    policy = PolicyAugment("trivialaugment")
    n = 14_000
    [(ops, magnitudes, _)] = policy.draw(n, torch.Generator().manual_seed(1), torch.device("cpu"))
    shares = op_frequencies(ops)
    assert shares["invert"] == 0  # TrivialAugmentWide has no invert
    # 1,000 expected per op; a binomial's sd is about 30.5: 5 sd either way.
    for name in WIDE_OPS:
        assert abs(shares[name] * n - n / len(WIDE_OPS)) < 5 * math.sqrt(n * (1 / 14) * (13 / 14)), name
    # Signed ops are mirrored half of the time; magnitudes come from their own 31 bins.
    rotate = magnitudes[ops == OP["rotate"]]
    assert 0.4 < (rotate < 0).float().mean() < 0.6 and rotate.abs().max() <= 135


def test_randaugment_and_autoaugment_draws():
    generator = torch.Generator().manual_seed(2)
    steps = PolicyAugment("randaugment", n=3, m=9).draw(4000, generator, torch.device("cpu"))
    assert len(steps) == 3
    ops, magnitudes, _ = steps[0]
    assert magnitudes[ops == OP["rotate"]].abs().unique().tolist() == pytest.approx([9.0])  # bin 9 of 0..30 deg
    first, second = PolicyAugment("autoaugment").draw(20000, generator, torch.device("cpu"))
    # Sub-policy 0 applies invert with probability 0.1, so invert shows in the first step ~0.1/25 of the time.
    assert 0.002 < (first[0] == OP["invert"]).float().mean() < 0.006
    assert not (second[0] == OP["rotate"]).any()  # rotate is only ever a first step in the CIFAR-10 policy


def test_policy_keeps_shape_dtype_and_is_seeded(images):
    policy = PolicyAugment("autoaugment")
    a = policy(images, torch.Generator().manual_seed(5))
    b = policy(images, torch.Generator().manual_seed(5))
    assert a.shape == images.shape and a.dtype == torch.uint8 and torch.equal(a, b)
    assert not torch.equal(a, policy(images, torch.Generator().manual_seed(6)))


@pytest.mark.parametrize("kind", KINDS)
def test_the_gpu_path_and_the_cpu_path_agree(kind):
    # The GPU's whole-batch-and-select path, run here on the CPU, against the CPU's grouped one.
    channels, size = KINDS[kind]
    images = smooth_images(channels, size)
    generator = torch.Generator().manual_seed(3)
    for policy in ("trivialaugment", "autoaugment"):
        draws = PolicyAugment(policy, image_size=size).draw(len(images), generator, torch.device("cpu"))
        for op, magnitude, theta in draws:
            expected = apply_ops(images, op, magnitude, grouped=True)
            assert torch.equal(expected, apply_ops(images, op, magnitude, grouped=False))
            # The affine matrices from the policy's table are the ones computed from the magnitudes.
            assert torch.equal(expected, apply_ops(images, op, magnitude, grouped=False, theta=theta))
            assert torch.equal(expected, apply_ops(images, op, magnitude, grouped=True, theta=theta))


class HostToDevice:
    """Records every copy from host memory onto the `meta` device while active: ops that take a
    CPU tensor (not a 0-dim scalar, which a kernel takes by value) and return a meta tensor, and
    the tensor constructors given Python data and a device (they copy without dispatching an op).
    On a GPU each such copy from pageable memory waits for the stream."""

    def __init__(self, monkeypatch):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        copies = self.copies = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                inputs = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
                outputs = [a for a in tree_flatten(out)[0] if isinstance(a, torch.Tensor)]
                host = [a for a in inputs if a.device.type == "cpu" and (a.ndim > 0 or "copy" in str(func))]
                if host and any(o.device.type == "meta" for o in outputs):
                    copies.append(str(func))
                return out

        self.mode = Mode()
        for name in ("tensor", "as_tensor"):
            original = getattr(torch, name)

            def constructor(data, *args, _original=original, _name=name, **kwargs):
                device = kwargs.get("device")
                if device is not None and torch.device(device).type != "cpu" and not (
                        isinstance(data, torch.Tensor) and data.device.type != "cpu"):
                    copies.append(f"torch.{_name}")
                return _original(data, *args, **kwargs)

            monkeypatch.setattr(torch, name, constructor)

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


@pytest.mark.parametrize("policy", ["trivialaugment", "randaugment", "autoaugment", None])
def test_an_augmented_step_copies_nothing_from_the_host(monkeypatch, policy):
    from trainable.augment import augment_batch, make_mixer, tta_views, shift_mirror
    from trainable.config import with_defaults

    device = torch.device("meta")  # shapes and dispatch without a GPU: what would run on one
    images = torch.empty(64, 3, 32, 32, dtype=torch.uint8, device=device)
    labels = torch.empty(64, dtype=torch.int64, device=device)
    mean, std = torch.zeros(1, 3, 1, 1, device=device), torch.ones(1, 3, 1, 1, device=device)
    augment = PolicyAugment(policy) if policy else None
    mixer = make_mixer(with_defaults({"mixup_alpha": 0.2, "cutmix_alpha": 1.0}), 10)
    augment_batch(images, mean, std, cutout_size=16, policy=augment)  # the first step makes the constants
    recorder = HostToDevice(monkeypatch)
    with recorder:
        for flip in (True, False):
            out = augment_batch(images, mean, std, flip=flip, cutout_size=16, policy=augment)
            mixer(out, labels)
        for dy, dx, mirrored in tta_views({"flip": True, "crop_padding": 4}):
            shift_mirror(images, dy, dx, mirrored)
    assert recorder.copies == []
    # The recorder sees the copies it is there for.
    with recorder:
        torch.tensor([1.0, 2.0], device=device)
        torch.ones(3).to(device)
    assert recorder.copies == ["torch.tensor", "aten._to_copy.default"]
