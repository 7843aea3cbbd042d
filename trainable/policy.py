"""Policy augmentation (TrivialAugment, RandAugment, AutoAugment) per sample, a whole batch at once.

torchvision's v2 transforms draw one op and one magnitude per call, so a batch passed to
them gets the same op everywhere; kornia draws the op once per call too. The published
recipes apply a policy per image (PIL, one image at a time), which on 32x32 images starves
a GPU. Here every image draws its own op and magnitude, and each op runs once over the
whole batch:

- the geometric ops (shear, translate, rotate) are one grid_sample with a per-image
  inverse affine matrix, built with torchvision's formula and grid, so they land on the
  same pixels as `torchvision.transforms.v2.functional.affine` / `rotate` (nearest, fill 0);
- the blend ops (brightness, color, contrast, sharpness) are one blend: each image with its
  own op's degenerate image and factor, through torchvision's arithmetic (torchvision takes
  one factor per call);
- posterize and solarize take a per-image bit mask and threshold;
- autocontrast, equalize and invert have no magnitude and already work per image on a
  batch in torchvision: its functions are called directly.

Each image's result is picked from its own op's output with `torch.where`, so nothing
depends on how many images drew an op, and no step reads a value back to the host. Ops a
policy cannot draw (invert, for TrivialAugment and RandAugment) are never computed, and
the constants (magnitude tables, the warp grid, the sharpness kernel) are made once per
device: no step copies anything from the host either.
Ops, magnitude bins and signs are those of torchvision's TrivialAugmentWide (31 bins),
RandAugment (31 bins, magnitude m) and AutoAugment's CIFAR-10 policy (10 bins).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

POLICIES = ("none", "trivialaugment", "randaugment", "autoaugment")
OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
       "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize", "invert")
OP = {name: index for index, name in enumerate(OPS)}
SIGNED = {"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast", "sharpness"}
# TrivialAugment and RandAugment draw from these 14 (no invert); AutoAugment names its own.
WIDE_OPS = OPS[:-1]


def image_sides(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a side length or a (height, width) pair."""
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def magnitude_table(policy: str, image_size: int | tuple[int, int] = 32) -> torch.Tensor:
    """(len(OPS), bins) magnitudes of a policy, as torchvision defines them; 0 where an op has none.

    Units: shear as tan, translate in pixels, rotate in degrees, blend ops as factor - 1,
    posterize in bits, solarize as a fraction of 255. Translations scale with the image:
    torchvision's RandAugment and AutoAugment already do (150/331 of a side); its
    TrivialAugmentWide translates up to 32 pixels whatever the size, which here is taken
    as a 32-pixel image's and scaled too (up to a whole side), so a 64 px set is shifted
    as far, relative to its size, as CIFAR-10 is.
    """
    height, width = image_sides(image_size)
    bins = 31 if policy in ("trivialaugment", "randaugment") else 10
    wide = policy == "trivialaugment"
    table = torch.zeros(len(OPS), bins)
    space = torch.linspace
    table[OP["shear_x"]] = table[OP["shear_y"]] = space(0.0, 0.99 if wide else 0.3, bins)
    for name, side in (("translate_x", width), ("translate_y", height)):
        table[OP[name]] = space(0.0, float(side) if wide else 150.0 / 331.0 * side, bins)  # wide: 32 px at 32 px
    table[OP["rotate"]] = space(0.0, 135.0 if wide else 30.0, bins)
    for name in ("brightness", "color", "contrast", "sharpness"):
        table[OP[name]] = space(0.0, 0.99 if wide else 0.9, bins)
    table[OP["posterize"]] = (8 - (torch.arange(bins) / ((bins - 1) / (6 if wide else 4)))).round()
    table[OP["solarize"]] = space(1.0, 0.0, bins)
    return table


# AutoAugment's CIFAR-10 policy (torchvision's AutoAugmentPolicy.CIFAR10): 25 sub-policies,
# each two (op, probability, magnitude bin) steps.
CIFAR10_POLICY = [
    (("invert", 0.1, None), ("contrast", 0.2, 6)), (("rotate", 0.7, 2), ("translate_x", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)), (("shear_y", 0.5, 8), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.5, None), ("equalize", 0.9, None)), (("shear_y", 0.2, 7), ("posterize", 0.3, 7)),
    (("color", 0.4, 3), ("brightness", 0.6, 7)), (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
    (("equalize", 0.6, None), ("equalize", 0.5, None)), (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
    (("color", 0.7, 7), ("translate_x", 0.5, 8)), (("equalize", 0.3, None), ("autocontrast", 0.4, None)),
    (("translate_y", 0.4, 3), ("sharpness", 0.2, 6)), (("brightness", 0.9, 6), ("color", 0.2, 8)),
    (("solarize", 0.5, 2), ("invert", 0.0, None)), (("equalize", 0.2, None), ("autocontrast", 0.6, None)),
    (("equalize", 0.2, None), ("equalize", 0.6, None)), (("color", 0.9, 9), ("equalize", 0.6, None)),
    (("autocontrast", 0.8, None), ("solarize", 0.2, 8)), (("brightness", 0.1, 3), ("color", 0.7, 0)),
    (("solarize", 0.4, 5), ("autocontrast", 0.9, None)), (("translate_y", 0.9, 9), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.9, None), ("solarize", 0.8, 3)), (("equalize", 0.8, None), ("invert", 0.1, None)),
    (("translate_y", 0.7, 9), ("autocontrast", 0.9, None)),
]


# ----------------------------------------------------------------------------- the ops, batched
def _inverse_affine(angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, shear_x: torch.Tensor,
                    shear_y: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """torchvision's inverse affine matrix (scale 1), one per image: (B, 2, 3). Angles in degrees."""
    rot, sx, sy = torch.deg2rad(angle), torch.deg2rad(shear_x), torch.deg2rad(shear_y)
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = cx - m0 * (cx + tx) - m1 * (cy + ty)
    m5 = cy - m3 * (cx + tx) - m4 * (cy + ty)
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1).view(-1, 2, 3)


@functools.lru_cache(maxsize=16)
def _base_grid(device: torch.device, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's grid (pixel centres relative to the image centre, homogeneous) and the
    half-size it is divided by: made once per device and size, never again in a step."""
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, device=device)
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, device=device)
    base = torch.stack([xs.expand(height, width), ys.unsqueeze(1).expand(height, width),
                        torch.ones(height, width, device=device)], dim=-1).view(1, height * width, 3)
    scale = torch.stack([torch.full((), 0.5 * width, device=device), torch.full((), 0.5 * height, device=device)])
    return base, scale


def _warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour warp of uint8 images by per-image inverse matrices, zeros outside."""
    batch, _, height, width = images.shape
    base, scale = _base_grid(images.device, height, width)
    grid = base.expand(batch, -1, -1).bmm(theta.transpose(1, 2) / scale).view(batch, height, width, 2)
    out = F.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round().to(images.dtype)


def affine_of(op: torch.Tensor, magnitude: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse affine matrix (B, 2, 3) of each image's geometric op at its magnitude
    (the identity for any other op)."""
    zero = torch.zeros_like(magnitude)
    shear = torch.rad2deg(torch.atan(magnitude))
    is_ = {name: op == OP[name] for name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")}
    shearing = is_["shear_x"] | is_["shear_y"]
    # Shears turn about the top-left corner (torchvision's center=[0, 0]); the rest about the centre.
    cx = torch.where(shearing, torch.full_like(magnitude, -0.5 * width), zero)
    cy = torch.where(shearing, torch.full_like(magnitude, -0.5 * height), zero)
    theta = _inverse_affine(
        angle=torch.where(is_["rotate"], -magnitude, zero),  # rotate's inverse turns the other way
        tx=torch.where(is_["translate_x"], torch.trunc(magnitude), zero),
        ty=torch.where(is_["translate_y"], torch.trunc(magnitude), zero),
        shear_x=torch.where(is_["shear_x"], shear, zero),
        shear_y=torch.where(is_["shear_y"], shear, zero),
        cx=cx, cy=cy,
    )
    return theta


def geometric(images: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor,
              theta: torch.Tensor | None = None) -> torch.Tensor:
    """Shear, translate and rotate each image by its own magnitude (others pass unchanged).

    `theta`, each image's matrix looked up in a policy's table (`PolicyAugment`), saves the
    trigonometry of `affine_of`: some sixty small ops per batch.
    """
    _, _, height, width = images.shape
    return _warp(images, affine_of(op, magnitude, height, width) if theta is None else theta)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's blend with a factor per image: clamp(x * f + y * (1 - f)), cast to uint8 (truncating)."""
    f = factor.view(-1, 1, 1, 1)
    return (images.float() * f + other * (1.0 - f)).clamp_(0, 255).to(images.dtype)


def _gray(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:  # already gray: torchvision's grayscale of one channel is itself
        return images.float()
    r, g, b = images.float().unbind(dim=1)
    return (r * 0.2989 + g * 0.587 + b * 0.114).unsqueeze(1).floor_()


@functools.lru_cache(maxsize=16)
def _smooth_kernel(device: torch.device, channels: int) -> torch.Tensor:
    """torchvision's sharpness kernel, built once per device (a constant, never a per-step copy)."""
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.full((3, 3), a, device=device)
    kernel[1, 1] = b
    return kernel.expand(channels, 1, 3, 3)


def _smoothed(images: torch.Tensor) -> torch.Tensor:
    """adjust_sharpness's degenerate image: the smoothed image inside, the original border."""
    out = images.float()
    blurred = F.conv2d(out, _smooth_kernel(images.device, images.shape[1]), groups=images.shape[1]).round_()
    out = out.clone()
    out[..., 1:-1, 1:-1] = blurred
    return out


def sharpen(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_sharpness with a factor per image: a blend with `_smoothed`."""
    return _blend(images, _smoothed(images), factor)


def blends(images: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Brightness, color, contrast and sharpness as one blend, each image with its own op's
    degenerate image (black, gray, mean gray, smoothed) and factor 1 + magnitude.

    On one-channel images color leaves the image as it is (torchvision's adjust_saturation
    returns a grayscale image unchanged): its factor is set to 1."""
    if images.shape[1] == 1:
        magnitude = torch.where(op == OP["color"], torch.zeros_like(magnitude), magnitude)
    gray = _gray(images)
    other = torch.where((op == OP["color"]).view(-1, 1, 1, 1), gray, _smoothed(images))
    other = torch.where((op == OP["contrast"]).view(-1, 1, 1, 1), gray.mean(dim=(1, 2, 3), keepdim=True), other)
    other = torch.where((op == OP["brightness"]).view(-1, 1, 1, 1), 0.0, other)
    return _blend(images, other, 1.0 + magnitude)


def _posterize(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    bits = magnitude.to(torch.int64).clamp(0, 8)
    return images & ((0xFF << (8 - bits)) & 0xFF).to(images.dtype).view(-1, 1, 1, 1)


def _solarize(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    return torch.where(images >= (255.0 * magnitude).view(-1, 1, 1, 1), 255 - images, images)


# The ops in groups that each run as one function of (uint8 images, magnitudes, op ids):
# the geometric ops are one warp, the blend ops one blend.
GROUPS = {
    "geometric": ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"),
    "blend": ("brightness", "color", "contrast", "sharpness"),
    "posterize": ("posterize",), "solarize": ("solarize",), "autocontrast": ("autocontrast",),
    "equalize": ("equalize",), "invert": ("invert",),
}
_OPS = {
    "geometric": lambda x, m, op, theta: geometric(x, op, m, theta),
    "blend": lambda x, m, op, theta: blends(x, op, m),
    "posterize": lambda x, m, op, theta: _posterize(x, m),
    "solarize": lambda x, m, op, theta: _solarize(x, m),
    "autocontrast": lambda x, m, op, theta: TF.autocontrast(x),
    "equalize": lambda x, m, op, theta: TF.equalize(x),
    "invert": lambda x, m, op, theta: TF.invert(x),
}
# On the CPU each blend op runs on its own images: there the arithmetic is the cost, and
# the fused blend would smooth (a convolution) images that only needed a brightness change.
_BLEND_OPS = {
    "brightness": lambda x, m: _blend(x, torch.zeros((), device=x.device), 1.0 + m),
    "color": lambda x, m: x if x.shape[1] == 1 else _blend(x, _gray(x), 1.0 + m),
    "contrast": lambda x, m: _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), 1.0 + m),
    "sharpness": lambda x, m: sharpen(x, 1.0 + m),
}


def _chosen(name: str, op: torch.Tensor) -> torch.Tensor:
    members = [OP[member] for member in GROUPS[name]]
    if len(members) == 1:
        return op == members[0]
    return (op >= min(members)) & (op <= max(members))  # each group's ops are contiguous in OPS


def groups_of(op_names: "set[str] | tuple[str, ...]") -> tuple[str, ...]:
    """The groups that hold any of `op_names`: the only ones a policy drawing them need run."""
    return tuple(name for name, members in GROUPS.items() if set(members) & set(op_names))


def apply_ops(images: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor,
              grouped: bool | None = None, groups: tuple[str, ...] = tuple(GROUPS),
              theta: torch.Tensor | None = None) -> torch.Tensor:
    """Apply to each uint8 image (B, C, H, W), C = 3 or 1, its own op (an index into OPS) at its magnitude.

    On a GPU every op runs over the whole batch and `torch.where` keeps each image's own
    result: finding which images drew an op would read a count back to the host (a sync
    per op per batch), and the extra arithmetic on 32x32 images is cheap there. On the CPU,
    where the arithmetic is the cost and reading a count is free, each op runs only on
    the images that drew it. `grouped` picks the path (default: grouped on the CPU).
    """
    if grouped is None:
        grouped = images.device.type == "cpu"
    if grouped:
        out = images.clone()
        for name in groups:
            if name == "blend":
                for member, fn in _BLEND_OPS.items():
                    index = (op == OP[member]).nonzero().flatten()
                    if len(index):
                        out[index] = fn(images[index], magnitude[index])
                continue
            index = _chosen(name, op).nonzero().flatten()
            if len(index):
                out[index] = _OPS[name](images[index], magnitude[index], op[index],
                                        None if theta is None else theta[index])
        return out
    out = images
    for name in groups:
        out = torch.where(_chosen(name, op).view(-1, 1, 1, 1), _OPS[name](images, magnitude, op, theta), out)
    return out


# ----------------------------------------------------------------------------- the policies
class PolicyAugment:
    """Draws, per image, the op and magnitude of a policy, and applies them with `apply_ops`.

    >>> x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    >>> PolicyAugment("trivialaugment")(x, torch.Generator().manual_seed(0)).shape
    torch.Size([4, 3, 32, 32])
    """

    def __init__(self, policy: str, n: int = 2, m: int = 9, image_size: int | tuple[int, int] = 32):
        if policy not in POLICIES or policy == "none":
            raise ValueError(f"unknown policy {policy!r}")
        self.policy, self.n, self.m = policy, n, m
        self.image_size = image_sides(image_size)  # (height, width)
        drawn = WIDE_OPS if policy != "autoaugment" else {name for sub in CIFAR10_POLICY for name, _, _ in sub}
        self.groups = groups_of(drawn)  # ops the policy cannot draw are never computed
        self._constants: dict[torch.device, dict[str, torch.Tensor]] = {}

    def constants(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The policy's tables on `device`, made on the first batch there and kept: no step
        copies anything from the host (each copy from pageable memory waits for the GPU)."""
        device = torch.device(device)
        if device not in self._constants:
            steps = [[(OP[name], p, -1 if level is None else level) for name, p, level in sub]
                     for sub in CIFAR10_POLICY]
            self._constants[device] = {
                "table": magnitude_table(self.policy, self.image_size).to(device),
                "signed": torch.tensor([name in SIGNED for name in OPS]).to(device),
                "wide": torch.tensor([OP[name] for name in WIDE_OPS]).to(device),
                "sub_policies": torch.tensor(steps, dtype=torch.float32).to(device),  # (25, 2, 3): op, p, bin
                "m": torch.tensor(self.m).to(device),
            }
            # Every (op, bin, sign) has one affine matrix: a table of them replaces the
            # per-batch trigonometry (indexed [op, bin, negated]).
            table = self._constants[device]["table"]
            ops, bins = table.shape
            op = torch.arange(ops, device=device).view(-1, 1, 1).expand(ops, bins, 2).flatten()
            magnitude = (table.unsqueeze(-1) * torch.tensor([1.0, -1.0]).to(device)).flatten()
            theta = affine_of(op, magnitude, *self.image_size)
            self._constants[device]["theta"] = theta.view(ops, bins, 2, 2, 3)
        return self._constants[device]

    def draw(self, batch: int, generator: torch.Generator | None,
             device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The (op, signed magnitude, affine matrix) of each step for each image: one step, n, or two."""
        const = self.constants(device)
        table, signed = const["table"], const["signed"]

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, device=device, generator=generator)

        def with_sign(op: torch.Tensor, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            magnitude = table[op, level.clamp_min(0)] * (level >= 0)
            flip = signed[op] & (rand(batch) <= 0.5)
            theta = const["theta"][op, level.clamp_min(0), flip.long()]
            return torch.where(flip, -magnitude, magnitude), theta

        if self.policy == "trivialaugment":
            op = const["wide"][torch.randint(len(WIDE_OPS), (batch,), device=device, generator=generator)]
            level = torch.randint(table.shape[1], (batch,), device=device, generator=generator)
            return [(op, *with_sign(op, level))]
        if self.policy == "randaugment":
            steps = []
            for _ in range(self.n):
                op = const["wide"][torch.randint(len(WIDE_OPS), (batch,), device=device, generator=generator)]
                steps.append((op, *with_sign(op, const["m"].expand(batch))))
            return steps
        chosen = const["sub_policies"][torch.randint(len(CIFAR10_POLICY), (batch,), device=device,
                                                     generator=generator)]
        steps = []
        for step in range(2):
            op, probability, level = chosen[:, step, 0].long(), chosen[:, step, 1], chosen[:, step, 2].long()
            applied = rand(batch) <= probability
            steps.append((torch.where(applied, op, torch.zeros_like(op)), *with_sign(op, level)))
        return steps

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for op, magnitude, theta in self.draw(len(images), generator, images.device):
            images = apply_ops(images, op, magnitude, groups=self.groups, theta=theta)
        return images


def op_frequencies(ops: torch.Tensor) -> dict[str, float]:
    """Share of each op among drawn op ids (a check that a policy draws what it should)."""
    counts = torch.bincount(ops.flatten().cpu(), minlength=len(OPS)).double()
    return {name: float(c) / max(1.0, float(counts.sum())) for name, c in zip(OPS, counts)}

