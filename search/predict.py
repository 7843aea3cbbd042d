"""Label unlabeled images with a retrained model and write a submission CSV.

    python -m search.predict runs/NAME/final --input cifar_test_nolabel.pkl --out submission.csv --tta

The input is the course's pickle (a dict with b'data' and b'ids', or the same keys as
strings; data uint8 N x 32 x 32 x 3 in height-width-channel order, or N x 3072 in the
original CIFAR layout: the red plane, then green, then blue), a folder of images, or a
.npy array N x H x W x 3. A grayscale model (FashionMNIST, a grayscale ImageFolder) reads
N x H x W (or N x H x W x 1) arrays, N x H*W flat rows, and any image as its gray. The CSV has the header `ID,Labels` and one row per image in the
input's order; labels are class indices in the model's class order (CIFAR-10: airplane=0
... truck=9). When the model's classes are not CIFAR-10's, the mapping is printed;
`--classes` refuses a model whose classes differ from the list you expect.
"""

from __future__ import annotations

import csv
import io
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from trainable.checkpoint import load_checkpoint, write_text
from trainable.cli import ArgumentParser, read_json, run_main
from trainable.config import validate_config
from trainable.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def images_from_array(array: Any, what: str, size: Sequence[int] | None = None, channels: int = 3) -> torch.Tensor:
    """N x H x W x C (transposed), or N x C*H*W in CIFAR's planar layout (reshaped), to N x C x H x W."""
    if isinstance(array, np.ndarray) and array.ndim == 2 and array.dtype == np.uint8:
        height, width = size or (32, 32)
        if array.shape[1] != channels * height * width:
            planes = " (red plane, green plane, blue plane)" if channels == 3 else ""
            raise UserError(f"{what} is N x {array.shape[1]}; a flat image must hold {channels} x {height} x {width} = "
                            f"{channels * height * width} values{planes}")
        # Planar rows: the bytes already run channel by channel, so a reshape is the right move here.
        return torch.from_numpy(np.ascontiguousarray(array.reshape(-1, channels, height, width)))
    return images_from_hwc(array, what, size, channels)


def decode_id(value: Any) -> Any:
    """An id as the CSV should show it: ints as ints, bytes decoded, numpy scalars unwrapped."""
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode()
    return str(value) if isinstance(value, np.str_) else value


def images_from_hwc(array: Any, what: str, size: Sequence[int] | None = None, channels: int = 3) -> torch.Tensor:
    """Check a uint8 N x H x W x C array (N x H x W for a grayscale model) and make it
    N x C x H x W by transposing axes.

    A reshape to (-1, C, H, W) would keep the bytes in place and scramble every image.
    """
    if not isinstance(array, np.ndarray):
        raise UserError(f"{what} must be a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise UserError(f"{what} must be uint8 pixels, got dtype {array.dtype}")
    if channels == 1 and array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] != channels:
        gray = " (or N x H x W)" if channels == 1 else ""
        raise UserError(f"{what} must have shape N x H x W x {channels}{gray} (height-width-channel) for this "
                        f"{'grayscale' if channels == 1 else 'colour'} model, got {array.shape}")
    if size is not None and tuple(array.shape[1:3]) != tuple(size):
        raise UserError(f"{what} holds {array.shape[1]}x{array.shape[2]} images; the model was trained on "
                        f"{size[0]}x{size[1]}")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


def read_input(path: Path, size: Sequence[int] | None = None, channels: int = 3) -> tuple[torch.Tensor, list[Any]]:
    """Images (N, C, H, W) uint8 and their ids from a pickle, a .npy file or an image folder."""
    if path.is_dir():
        from PIL import Image

        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        arrays = []
        for file in files:
            with Image.open(file) as image:
                arrays.append(np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8))
        if len({a.shape for a in arrays}) > 1:
            raise UserError(f"images in {path} have mixed sizes; resize them to one size first")
        ids = [int(f.stem) if f.stem.isdigit() else f.stem for f in files]
        seen: dict[Any, Path] = {}
        for image_id, file in zip(ids, files):
            if image_id in seen:
                raise UserError(f"{seen[image_id]} and {file} would both get id {image_id!r}; ids must be unique, "
                                "so rename one of them")
            seen[image_id] = file
        return images_from_hwc(np.stack(arrays), f"images in {path}", size, channels), ids
    if not path.is_file():
        raise UserError(f"input {path} does not exist")
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise UserError(f"{path} is not a plain .npy array: {exc}") from None
        return images_from_hwc(array, str(path), size, channels), list(range(len(array)))
    try:
        with open(path, "rb") as handle:
            data = pickle.load(handle, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise UserError(f"{path} is not a readable pickle: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a dict with keys b'data' and b'ids', got {type(data).__name__}")
    values = {}
    for key in ("data", "ids"):
        found = [k for k in (key.encode(), key) if k in data]
        if not found:
            raise UserError(f"{path} has no key b'{key}' (or '{key}'); expected b'data' and b'ids'")
        values[key] = data[found[0]]
    images = images_from_array(values["data"], f"{path}['data']", size, channels)
    ids = [decode_id(i) for i in list(values["ids"])]
    if len(ids) != len(images):
        raise UserError(f"{path} has {len(images)} images but {len(ids)} ids")
    return images, ids


def load_model(folder: Path, use_ema: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The retrained model in `folder` (config.json, model.json, weights.pt) on the best device."""
    from trainable.loop import default_device
    from trainable.model import build_model

    for name in ("config.json", "model.json"):
        if not (folder / name).is_file():
            raise UserError(f"{folder} is not a retrained model folder (no {name}); run search.retrain first")
    weights = folder / ("weights_ema.pt" if use_ema else "weights.pt")
    if not weights.is_file():
        hint = "retrain with --ema" if use_ema else "the retrain did not finish; rerun it with --resume"
        raise UserError(f"{folder} has no {weights.name} ({hint})")
    config = validate_config(read_json(folder / "config.json", "config file"))  # a model folder is an entry point
    info = {**read_json(folder / "model.json", "model file"), "config": config}
    model = build_model(config, info["num_classes"], info.get("channels", 3))  # model.json files before channels: RGB
    try:
        state = load_checkpoint(weights)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        # weights_only loading refuses anything but tensors and plain values: no code runs.
        raise UserError(f"{weights} is not a plain weights file (a safe load refused it: "
                        f"{str(exc).splitlines()[0][:160]})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{weights} does not fit the config in {folder / 'config.json'}: {str(exc)[:200]}") from None
    device = default_device()
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, info


def predict_labels(folder: Path, images: torch.Tensor, tta: bool = False, use_ema: bool = False,
                   loaded: tuple[torch.nn.Module, dict[str, Any]] | None = None) -> torch.Tensor:
    """Class indices for uint8 images (N, C, H, W) from the model in `folder` (or `loaded`)."""
    from trainable.augment import tta_views
    from trainable.loop import predict_logits

    model, info = loaded or load_model(folder, use_ema)
    device = next(model.parameters()).device
    mean = torch.tensor(info["mean"], device=device, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info["std"], device=device, dtype=torch.float32).view(1, -1, 1, 1)
    # Only the views the training augmentation covered (no mirror for a model trained without flips).
    views = tta_views(info["config"]) if tta else None
    return predict_logits(model, images, mean, std, views, device, progress="predict").argmax(1).cpu()


def write_submission(path: Path, ids: Sequence[Any], labels: Sequence[int]) -> None:
    """`ID,Labels` CSV, one row per id in the given order, written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["ID", "Labels"])
    writer.writerows(zip(ids, (int(label) for label in labels)))
    write_text(path, buffer.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m search.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a retrained model folder (runs/NAME/final)")
    parser.add_argument("--input", required=True, help="pickle with b'data' and b'ids', a .npy array, or an image folder")
    parser.add_argument("--out", default="submission.csv", help="CSV to write (default submission.csv)")
    parser.add_argument("--tta", action="store_true", help="average over flips and 1-px shifts")
    parser.add_argument("--ema", action="store_true", help="use the EMA weights (retrained with --ema)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument("--classes", help="the class names you expect, comma-separated, in label order "
                                          "(e.g. the Kaggle set's); a model with other classes is refused")
    args = parser.parse_args(argv)
    folder, out = Path(args.model), Path(args.out)
    if not (folder / "config.json").is_file() and (folder / "final" / "config.json").is_file():
        folder = folder / "final"  # the experiment was named: its retrained model is in final/
        print(f"predicting with the retrained model in {folder}", flush=True)
    if not out.parent.is_dir():  # as search.auto: a mistyped folder is refused, not created
        raise UserError(f"--out {args.out}: the folder {out.parent} does not exist")
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to overwrite it or choose another --out")
    model, info = load_model(folder, args.ema)  # a bad model folder is reported before reading the input
    classes = [str(c) for c in info.get("classes", [])]
    if args.classes is not None:
        expected = [c.strip() for c in args.classes.split(",")]
        if expected != classes:
            raise UserError(f"the model's classes are {','.join(classes)}, not the --classes {','.join(expected)}; "
                            "its labels would mean other classes")
    images, ids = read_input(Path(args.input), info.get("image_size"), info.get("channels", 3))
    labels = predict_labels(folder, images, tta=args.tta, loaded=(model, info))
    write_submission(out, ids, labels.tolist())
    counts = np.bincount(labels.numpy(), minlength=info.get("num_classes", 0))
    print(f"wrote {out}: {len(ids)} rows; predictions per class {counts.tolist()}")
    if classes != CIFAR10_CLASSES:
        # Labels are indices in the model's class order, which need not be CIFAR-10's.
        print("labels are this model's class indices: " + ", ".join(f"{i}={c}" for i, c in enumerate(classes)))
    return 0


if __name__ == "__main__":
    run_main(main)
