"""The inputs of a check: image files or built-in synthetic images, preprocessed as Caffe's
classification example does it.

Read the image (OpenCV, BGR), scale to [0, 1], resize bilinearly to the net's input, multiply
by 255, subtract the mean (per-channel BGR values, or a mean image such as
``ilsvrc_2012_mean.npy``), and feed in the channel order the weights expect. Synthetic images
are seeded smooth patterns, so a check needs no files.

Example::

    inputs = make_inputs(["cat.jpg"], preprocessing=Preprocessing(size=(227, 227)))
    inputs.in_order("rgb").shape     # (1, 227, 227, 3), float32, mean subtracted
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightconv.errors import FormatError, UsageError

#: Per-channel (B, G, R) average of Caffe's ImageNet mean image ``ilsvrc_2012_mean.npy``.
IMAGENET_MEAN_BGR = (104.0069879317889, 116.66876761696767, 122.6789143406786)
#: Images and seed of the built-in synthetic inputs.
SYNTHETIC_COUNT = 8
SYNTHETIC_GENERATOR = "weightconv smooth patterns v1"
CHANNEL_ORDERS = ("bgr", "rgb")


def cv2_module() -> Any:
    """The ``cv2`` module; a UsageError naming the package when OpenCV is absent."""
    try:
        import cv2
    except ImportError:
        raise UsageError(
            "reading and resizing images, and running the source .caffemodel, "
            "need OpenCV: pip install opencv-python-headless"
        ) from None
    return cv2


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the net's input, as Caffe's classification example does it.

    The image is read as BGR, scaled to [0, 1], resized bilinearly (whole image, no crop) to
    `size` (H, W), multiplied by `scale`, and the mean subtracted: `mean_bgr`, or the mean
    image in `mean_file` ((3, H, W) BGR .npy such as ilsvrc_2012_mean.npy), averaged per
    channel (`mean_mode` "channel", what Caffe's example does) or resized ("image").
    """

    size: tuple[int, int] = (227, 227)
    scale: float = 255.0
    mean_bgr: tuple[float, float, float] = IMAGENET_MEAN_BGR
    mean_file: str | None = None
    mean_mode: str = "channel"

    def __post_init__(self) -> None:
        if self.mean_mode not in ("channel", "image"):
            raise UsageError(f"mean_mode must be 'channel' or 'image', not {self.mean_mode!r}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise UsageError(f"size must be (height, width), got {self.size}")
        if len(self.mean_bgr) != 3:
            raise UsageError(f"mean_bgr needs 3 values (B, G, R), got {self.mean_bgr}")

    def mean(self) -> np.ndarray:
        """The mean to subtract, BGR: (3,) per channel or (H, W, 3) for a resized image."""
        if self.mean_file is None:
            return np.asarray(self.mean_bgr, dtype=np.float32)
        image = _load_mean_file(Path(self.mean_file))
        if self.mean_mode == "channel":
            return image.reshape(3, -1).mean(axis=1).astype(np.float32)
        hwc = np.ascontiguousarray(image.transpose(1, 2, 0), dtype=np.float32)
        if hwc.shape[:2] != tuple(self.size):
            cv2 = cv2_module()
            hwc = cv2.resize(hwc, (self.size[1], self.size[0]), interpolation=cv2.INTER_LINEAR)
        return hwc

    def apply(self, image: np.ndarray) -> np.ndarray:
        """One decoded image (H, W, 3) BGR with 0..255 pixel values -> (H', W', 3) float32
        BGR input."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise UsageError(f"an image must be (height, width, 3) BGR, got {image.shape}")
        x = image.astype(np.float32) / np.float32(255.0)
        if x.shape[:2] != tuple(self.size):
            cv2 = cv2_module()
            x = cv2.resize(x, (self.size[1], self.size[0]), interpolation=cv2.INTER_LINEAR)
        x = x * np.float32(self.scale)
        return (x - self.mean()).astype(np.float32)

    def load(self, path: str | os.PathLike[str]) -> np.ndarray:
        """Read an image file with OpenCV and `apply` this preprocessing."""
        return self.apply(read_image(path))

    def to_card(self, *, base: Path | None = None, channel_order: str = "bgr") -> dict[str, Any]:
        """The card's ``preprocessing`` entry (the vocabulary of caffenet_cat.json, plus
        ``size`` and, for a resized mean image, ``mean_file`` relative to `base`)."""
        h, w = self.size
        if self.mean_file is None:
            mean = [float(v) for v in self.mean_bgr]
        else:
            mean = [
                float(v) for v in _load_mean_file(Path(self.mean_file)).reshape(3, -1).mean(axis=1)
            ]
        entry: dict[str, Any] = {
            "load": "image read as BGR, scaled to float in [0, 1]",
            "resize": f"whole image resized to {h}x{w} (no crop), bilinear",
            "size": [h, w],
            "scale": self.scale,
            "channel_order": channel_order.upper(),
            "mean_bgr": mean,
            "mean_source": self._mean_source(),
            "layout": "NCHW for Caffe, NHWC for TensorFlow",
        }
        if self.mean_file and self.mean_mode == "image":
            entry["mean_file"] = portable_path(Path(self.mean_file), base or Path.cwd())
            entry["mean_mode"] = "image"
        return entry

    def _mean_source(self) -> str:
        if self.mean_file is None:
            return "per-channel BGR values"
        name = Path(self.mean_file).name
        if self.mean_mode == "channel":
            return f"per-channel average of {name}"
        h, w = self.size
        return f"{name} resized to {h}x{w}"

    @classmethod
    def from_card(cls, entry: dict[str, Any], base: Path | None = None) -> Preprocessing:
        """The preprocessing a card records (its machine fields, or the size in ``resize``)."""
        size = entry.get("size")
        if size is None:
            match = re.search(r"(\d+)\s*x\s*(\d+)", str(entry.get("resize", "")))
            size = (int(match.group(1)), int(match.group(2))) if match else (227, 227)
        if "bilinear" not in str(entry.get("resize", "bilinear")):
            raise FormatError(
                f"card preprocessing resizes with {entry['resize']!r}; only "
                f"bilinear resizing is implemented"
            )
        mean_file = entry.get("mean_file")
        if mean_file and base is not None and not Path(mean_file).is_absolute():
            mean_file = str(base / mean_file)
        try:
            return cls(
                size=(int(size[0]), int(size[1])),
                scale=float(entry.get("scale", 255)),
                mean_bgr=tuple(
                    float(v)
                    for v in entry.get("mean_bgr", IMAGENET_MEAN_BGR)  # type: ignore[arg-type]
                ),
                mean_file=mean_file,
                mean_mode=entry.get("mean_mode", "channel"),
            )
        except (TypeError, ValueError) as exc:
            raise FormatError(f"card preprocessing is malformed: {exc}") from None

    def describe(self) -> str:
        """One line for reports: size, resizing, scale and mean."""
        h, w = self.size
        if self.mean_file:
            mean = f"mean of {Path(self.mean_file).name}" + (
                " per channel" if self.mean_mode == "channel" else " (image)"
            )
        else:
            mean = "mean BGR " + "/".join(f"{v:.1f}" for v in self.mean_bgr)
        return f"{h}x{w} bilinear, scale {self.scale:g}, {mean}"


def _load_mean_file(path: Path) -> np.ndarray:
    try:
        mean = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such mean file") from None
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path}: not a .npy mean image: {exc}") from None
    if mean.ndim == 1 and mean.shape[0] == 3:
        return mean.astype(np.float64).reshape(3, 1, 1)
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3 or mean.shape[0] != 3:
        raise FormatError(f"{path}: a mean image must be (3, H, W) BGR, got {mean.shape}")
    return mean.astype(np.float64)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as (H, W, 3) uint8 BGR, as ``cv2.imread`` decodes it."""
    cv2 = cv2_module()
    source = Path(path)
    if not source.is_file():
        raise UsageError(f"{source}: no such image")
    image = cv2.imread(str(source), cv2.IMREAD_COLOR)
    if image is None:
        raise FormatError(f"{source}: OpenCV cannot decode this image")
    return image


def synthetic_images(
    count: int = SYNTHETIC_COUNT, *, seed: int = 0, size: tuple[int, int] = (227, 227)
) -> np.ndarray:
    """`count` deterministic (N, H, W, 3) uint8 BGR images of smooth random patterns.

    Each channel is a few random low-frequency waves plus soft blobs, stretched to 0..255;
    image i depends only on (seed, i). No files and no OpenCV needed.
    """
    if count < 1:
        raise UsageError(f"need at least one synthetic image, got {count}")
    h, w = size
    yy, xx = np.meshgrid(np.linspace(0.0, 1.0, h), np.linspace(0.0, 1.0, w), indexing="ij")
    images = np.empty((count, h, w, 3), dtype=np.uint8)
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        for channel in range(3):
            plane = np.zeros((h, w))
            for _ in range(3):
                fy, fx = rng.uniform(0.5, 6.0, 2) * rng.choice([-1, 1], 2)
                plane += rng.uniform(0.3, 1.0) * np.sin(
                    2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 2 * np.pi)
                )
            for _ in range(2):
                cy, cx = rng.uniform(0.0, 1.0, 2)
                radius = rng.uniform(0.05, 0.3)
                plane += rng.uniform(-1.5, 1.5) * np.exp(
                    -((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2)
                )
            low, high = plane.min(), plane.max()
            plane = (plane - low) / (high - low if high > low else 1.0)
            images[index, :, :, channel] = np.round(plane * 255.0).astype(np.uint8)
    return images


@dataclass
class Inputs:
    """Preprocessed images, BGR, NHWC float32, with a name and a card entry each."""

    names: list[str]
    bgr: np.ndarray
    entries: list[dict[str, Any]]
    preprocessing: Preprocessing
    description: str = ""
    #: What a report should say about the choice of inputs.
    notes: list[str] = field(default_factory=list)

    def in_order(self, order: str) -> np.ndarray:
        """The batch in channel order "bgr" or "rgb"."""
        if order not in CHANNEL_ORDERS:
            raise UsageError(f"channel order must be bgr or rgb, not {order!r}")
        return self.bgr if order == "bgr" else np.ascontiguousarray(self.bgr[..., ::-1])


def make_inputs(
    images: Sequence[str | os.PathLike[str]] | None = None,
    *,
    preprocessing: Preprocessing | None = None,
    count: int = SYNTHETIC_COUNT,
    seed: int = 0,
) -> Inputs:
    """Image files (read with OpenCV), or `count` synthetic images when `images` is empty."""
    prep = preprocessing or Preprocessing()
    if images:
        paths = [Path(p) for p in images]
        batch = np.stack([prep.load(p) for p in paths])
        entries: list[dict[str, Any]] = [{"file": p.name, "sha256": file_sha256(p)} for p in paths]
        return Inputs(
            unique_names([p.name for p in paths]),
            batch,
            entries,
            prep,
            f"{len(paths)} image{'s' if len(paths) != 1 else ''}, {prep.describe()}",
        )
    raw = synthetic_images(count, seed=seed, size=prep.size)
    batch = np.stack([prep.apply(image) for image in raw])
    entries = [
        {
            "synthetic": {
                "generator": SYNTHETIC_GENERATOR,
                "seed": seed,
                "index": i,
                "size": list(prep.size),
            },
            "pixels_sha256": hashlib.sha256(raw[i].tobytes()).hexdigest(),
        }
        for i in range(count)
    ]
    return Inputs(
        [f"synthetic-{i}" for i in range(count)],
        batch,
        entries,
        prep,
        f"{count} synthetic images (seed {seed}), {prep.describe()}",
    )


def unique_names(names: list[str]) -> list[str]:
    """The names with a second ``a.png`` as ``a.png#2``, a third as ``a.png#3``, ..."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The digest of a file's bytes, hex: sha256 for images, sha1 for models (as Caffe's model
    zoo identifies a .caffemodel)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def file_sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def portable_path(path: Path, base: Path) -> str:
    """`path` relative to the card's folder `base` when they share a folder below the root
    (so a card travels with its files), else absolute."""
    target, folder = path.resolve(), base.resolve()
    try:
        common = Path(os.path.commonpath([target, folder]))
    except ValueError:  # another drive
        return str(target)
    if common == Path(common.anchor):
        return str(target)
    return os.path.relpath(target, folder)
