"""Verification: does a converted model predict what its source predicts?

The converted weights run in the built-in AlexNet graph (`weightconv.nets.alexnet`, TensorFlow)
on images preprocessed as Caffe's examples do; the reference is either

- the source ``.caffemodel`` run by OpenCV's Caffe importer on the very same inputs
  (`opencv_predictions`): an independent implementation of Caffe's layers, or
- a reference card (`load_card`): JSON with the model's identity, the preprocessing, and
  per-image top-k classes and probabilities, such as the published CaffeNet predictions in
  ``caffenet_cat.json`` or one `write_card` made from a source model.

`compare` puts the two side by side per image: top-k of both with ImageNet labels, top-1
and top-5 agreement, the largest probability and logit differences, and a verdict against a
`Tolerance` (default: top-1 and top-5 agree on every image and max |Δprob| < 1e-4).

Inputs are image files or built-in synthetic images (seeded smooth patterns, so a check needs
no files). Preprocessing as in Caffe's classification example: read the image (OpenCV, BGR),
scale to [0, 1], resize bilinearly to the net's input, multiply by 255, subtract the mean
(per-channel BGR values, or a mean image), feed in the channel order the weights expect.

Example::

    result = verify("alexnet.npy", against="alexnet.caffemodel", prototxt="deploy.prototxt")
    print(result.report())
    sys.exit(result.exit_code)          # 0 pass, 1 fail

    write_card("alexnet.caffemodel", "alexnet.card.json", prototxt="deploy.prototxt")
    verify("alexnet.ckpt", card="alexnet.card.json").exit_code
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from weightconv._util.files import atomic_output, check_writable
from weightconv._version import __version__
from weightconv.errors import EXIT_CHECK_FAILED, EXIT_OK, CheckFailed, FormatError, UsageError
from weightconv.model import WeightSet
from weightconv.nets.alexnet import AlexNet, softmax

#: Per-channel (B, G, R) average of Caffe's ImageNet mean image ``ilsvrc_2012_mean.npy``.
IMAGENET_MEAN_BGR = (104.0069879317889, 116.66876761696767, 122.6789143406786)
CARD_FORMAT = "weightconv-reference-card/1"
#: Images and seed of the built-in synthetic inputs.
SYNTHETIC_COUNT = 8
SYNTHETIC_GENERATOR = "weightconv smooth patterns v1"
CHANNEL_ORDERS = ("bgr", "rgb")
TOP = 5
_CAFFE_FORMATS = ("caffemodel", "caffe-h5")


# --- labels --------------------------------------------------------------------------------


def imagenet_labels() -> list[str]:
    """The 1000 ILSVRC-2012 class names in index order (shipped with the package; from
    caffe-tensorflow's examples/imagenet/imagenet-classes.txt)."""
    return list(_imagenet_labels())


_LABELS: list[str] = []


def _imagenet_labels() -> list[str]:
    if not _LABELS:
        text = (
            resources.files("weightconv")
            .joinpath("data/imagenet_classes.txt")
            .read_text(encoding="utf-8")
        )
        _LABELS.extend(line.strip() for line in text.splitlines() if line.strip())
    return _LABELS


def class_label(index: int, num_classes: int | None) -> str:
    """The ImageNet name of `index` for a 1000-class model, else ``class <index>``."""
    labels = _imagenet_labels()
    if num_classes == len(labels) and 0 <= index < len(labels):
        return labels[index]
    return f"class {index}"


# --- preprocessing -------------------------------------------------------------------------


def _cv2() -> Any:
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
            hwc = _cv2().resize(
                hwc, (self.size[1], self.size[0]), interpolation=_cv2().INTER_LINEAR
            )
        return hwc

    def apply(self, image: np.ndarray) -> np.ndarray:
        """One decoded image (H, W, 3) BGR with 0..255 pixel values -> (H', W', 3) float32
        BGR input."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise UsageError(f"an image must be (height, width, 3) BGR, got {image.shape}")
        x = image.astype(np.float32) / np.float32(255.0)
        if x.shape[:2] != tuple(self.size):
            cv2 = _cv2()
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
            entry["mean_file"] = _card_path(Path(self.mean_file), base or Path.cwd())
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
    cv2 = _cv2()
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
        entries = [{"file": p.name, "sha256": _sha256(p)} for p in paths]
        return Inputs(
            _unique([p.name for p in paths]),
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


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- predictions ---------------------------------------------------------------------------


@dataclass
class Predictions:
    """One side of a comparison: full probabilities (and logits) for a model, or per-image
    top-k lists (class, probability) for a card."""

    source: str
    probabilities: np.ndarray | None = None
    logits: np.ndarray | None = None
    top: list[list[tuple[int, float]]] | None = None
    num_classes: int | None = None
    notes: list[str] = field(default_factory=list)
    #: Class names a card gives, by class index.
    labels: dict[int, str] = field(default_factory=dict)

    def label(self, cls: int, num_classes: int | None = None) -> str:
        return self.labels.get(cls) or class_label(cls, self.num_classes or num_classes)

    def top_k(self, image: int, k: int) -> list[tuple[int, float]]:
        if self.probabilities is not None:
            row = self.probabilities[image]
            order = np.argsort(-row, kind="stable")[:k]
            return [(int(c), float(row[c])) for c in order]
        assert self.top is not None
        return self.top[image][:k]

    def prob_of(self, image: int, cls: int) -> float | None:
        if self.probabilities is not None:
            row = self.probabilities[image]
            return float(row[cls]) if 0 <= cls < row.shape[0] else None
        assert self.top is not None
        for c, p in self.top[image]:
            if c == cls:
                return p
        return None

    @property
    def count(self) -> int:
        if self.probabilities is not None:
            return int(self.probabilities.shape[0])
        return len(self.top or [])


def _softmax_layer(prototxt: Path) -> tuple[str, str | None]:
    """(logits blob, probability blob or None) of a deploy net."""
    from weightconv.formats.caffe.net import net_def_from_message, parse_prototxt

    net = net_def_from_message(parse_prototxt(prototxt)[0])
    layers = [layer for layer in net.layers if layer.phase != "TRAIN"]
    softmaxes = [layer for layer in layers if layer.type == "Softmax"]
    if softmaxes:
        return softmaxes[-1].bottoms[0], softmaxes[-1].tops[0]
    if not layers or not layers[-1].tops:
        raise FormatError(f"{prototxt}: cannot tell which blob holds the logits")
    return layers[-1].tops[0], None


def _lrn_k_notes(prototxt: Path) -> list[str]:
    from weightconv.formats.caffe.net import net_def_from_message, parse_prototxt

    net = net_def_from_message(parse_prototxt(prototxt)[0])
    odd = [
        layer.name
        for layer in net.layers
        if layer.type == "LRN" and not math.isclose(layer.params.get("k", 1.0), 1.0)
    ]
    if odd:
        return [
            f"{', '.join(odd)}: LRN k is not 1; OpenCV's Caffe importer ignores k, so its "
            f"reference for this net is not Caffe's"
        ]
    return []


def opencv_predictions(
    caffemodel: str | os.PathLike[str],
    prototxt: str | os.PathLike[str],
    inputs: Inputs,
    *,
    channel_order: str = "bgr",
) -> Predictions:
    """The source Caffe model run by OpenCV's Caffe importer (``cv2.dnn.readNetFromCaffe``)
    on `inputs` (fed NCHW in `channel_order`, BGR for Caffe-trained models)."""
    cv2 = _cv2()
    model, deploy = Path(caffemodel), Path(prototxt)
    for path, what in ((model, "caffemodel"), (deploy, "prototxt")):
        if not path.is_file():
            raise UsageError(f"{path}: no such {what}")
    logits_blob, prob_blob = _softmax_layer(deploy)
    try:
        net = cv2.dnn.readNetFromCaffe(str(deploy), str(model))
    except cv2.error as exc:
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else str(exc)
        raise FormatError(f"{model}: OpenCV's Caffe importer refuses it: {message}") from None
    batch = np.ascontiguousarray(
        inputs.in_order(channel_order).transpose(0, 3, 1, 2), dtype=np.float32
    )
    net.setInput(batch)
    try:
        outputs = net.forward([logits_blob, *([prob_blob] if prob_blob else [])])
    except cv2.error as exc:
        raise FormatError(f"{model}: OpenCV cannot run it: {str(exc).strip()}") from None
    n = batch.shape[0]
    logits = np.asarray(outputs[0], dtype=np.float64).reshape(n, -1)
    probabilities = (
        np.asarray(outputs[1], dtype=np.float64).reshape(n, -1) if prob_blob else softmax(logits)
    )
    return Predictions(
        f"{model.name} run by OpenCV {cv2.__version__}'s Caffe importer",
        probabilities,
        logits,
        num_classes=logits.shape[1],
        notes=_lrn_k_notes(deploy),
    )


def graph_predictions(
    net: AlexNet, inputs: Inputs, *, channel_order: str | None = None, name: str = "weights"
) -> Predictions:
    """The weights run in the built-in graph, fed in `channel_order` (default: the one the
    weights record, else BGR with a note)."""
    notes = []
    order = channel_order or net.channel_order
    if order is None:
        order = "bgr"
        notes.append(
            "the weights do not record their input channel order; fed BGR (Caffe's "
            "convention): give the channel order (rgb) if they were converted to RGB"
        )
    logits = net.logits(inputs.in_order(order)).astype(np.float64)
    graph = net.architecture.source
    graph = Path(graph).name if os.sep in graph else graph
    return Predictions(
        f"{name} in the built-in {net.variant} graph ({graph}), {order.upper()} input",
        softmax(logits),
        logits,
        num_classes=logits.shape[1],
        notes=notes,
    )


# --- cards ---------------------------------------------------------------------------------


def load_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a reference card; ``_path`` is added (the card's location)."""
    source = Path(path)
    try:
        card = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{source}: no such reference card") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{source}: not a JSON reference card: {exc}") from None
    if not isinstance(card, dict) or not isinstance(card.get("images"), list) or not card["images"]:
        raise FormatError(f"{source}: a reference card needs a non-empty 'images' list")
    for index, entry in enumerate(card["images"]):
        key = _top_key(entry)
        if key is None or not isinstance(entry[key], list) or not entry[key]:
            raise FormatError(f"{source}: image {index} has no top-k list ('top5')")
        for item in entry[key]:
            if not isinstance(item, dict) or not {"class", "prob"} <= item.keys():
                raise FormatError(
                    f"{source}: image {index}: each top-k entry needs 'class' "
                    f"and 'prob', got {item!r}"
                )
        if "file" not in entry and "synthetic" not in entry:
            raise FormatError(f"{source}: image {index} names no 'file' and no 'synthetic' input")
    card["_path"] = str(source)
    return card


def _top_key(entry: dict[str, Any]) -> str | None:
    return next((key for key in entry if re.fullmatch(r"top\d+", key)), None)


def card_predictions(card: dict[str, Any]) -> Predictions:
    top = [
        [(int(item["class"]), float(item["prob"])) for item in entry[_top_key(entry)]]
        for entry in card["images"]
    ]
    model = card.get("model", {})
    name = model.get("name") or model.get("caffemodel") or "the model"
    who = card.get("computed_by", "")
    source = f"reference card {Path(card.get('_path', 'card')).name} ({name}" + (
        f", {who})" if who else ")"
    )
    labels = {
        int(item["class"]): str(item["label"])
        for entry in card["images"]
        for item in entry[_top_key(entry)]
        if item.get("label")
    }
    return Predictions(source, top=top, num_classes=model.get("num_classes"), labels=labels)


def card_inputs(card: dict[str, Any], preprocessing: Preprocessing | None = None) -> Inputs:
    """The card's images, preprocessed as the card says (or as `preprocessing` overrides)."""
    base = Path(card.get("_path", ".")).parent
    prep = preprocessing or Preprocessing.from_card(card.get("preprocessing", {}), base)
    names, batch, entries = [], [], []
    for index, entry in enumerate(card["images"]):
        if "file" in entry:
            path = Path(entry["file"])
            path = path if path.is_absolute() else base / path
            if not path.is_file():
                raise UsageError(f"{card.get('_path')}: image {index}: {path} not found")
            if entry.get("sha256") and _sha256(path) != entry["sha256"]:
                raise CheckFailed(f"{path}: not the image the card was made with (sha256 differs)")
            names.append(entry.get("name") or path.name)
            batch.append(prep.load(path))
        else:
            spec = entry["synthetic"]
            if spec.get("generator", SYNTHETIC_GENERATOR) != SYNTHETIC_GENERATOR:
                raise FormatError(
                    f"{card.get('_path')}: image {index} comes from "
                    f"{spec['generator']!r}, not {SYNTHETIC_GENERATOR!r}"
                )
            size = tuple(spec.get("size", prep.size))
            raw = synthetic_images(
                int(spec["index"]) + 1, seed=int(spec.get("seed", 0)), size=size
            )[-1]  # type: ignore[arg-type]
            if (
                entry.get("pixels_sha256")
                and hashlib.sha256(raw.tobytes()).hexdigest() != entry["pixels_sha256"]
            ):
                raise CheckFailed(
                    f"{card.get('_path')}: synthetic image {index} differs from "
                    f"the one the card was made with"
                )
            names.append(entry.get("name") or f"synthetic-{spec['index']}")
            batch.append(prep.apply(raw))
        entries.append(entry)
    return Inputs(
        _unique(names),
        np.stack(batch),
        entries,
        prep,
        f"{len(names)} image{'s' if len(names) != 1 else ''} from the card, {prep.describe()}",
    )


def write_card(
    model: str | os.PathLike[str],
    path: str | os.PathLike[str] | None = None,
    *,
    prototxt: str | os.PathLike[str] | None = None,
    images: Sequence[str | os.PathLike[str]] | None = None,
    preprocessing: Preprocessing | None = None,
    count: int = SYNTHETIC_COUNT,
    seed: int = 0,
    top: int = TOP,
    variant: str | None = None,
    channel_order: str | None = None,
    force: bool = False,
    tolerance: Tolerance | None = None,
) -> dict[str, Any]:
    """A reference card for `model`: its identity (file, sha1, deploy net), the
    preprocessing, and each image's top-`top` classes and probabilities.

    A ``.caffemodel`` is run by OpenCV's Caffe importer (needs `prototxt`); any other weight
    file by the built-in AlexNet graph. Images are files (stored relative to the card, with
    their sha256) or `count` synthetic ones. Writes JSON to `path` when given (refusing to
    overwrite unless `force`); returns the card.
    """
    source = Path(model)
    if not source.exists() and not Path(f"{source}.index").exists():
        raise UsageError(f"{source}: no such model")
    if top < 1:
        raise UsageError(f"top must be at least 1, got {top}")
    target = Path(path) if path is not None else None
    if target is not None:
        check_writable(target, force)
    if _is_caffe(source):
        if prototxt is None:
            raise UsageError(f"{source}: a .caffemodel needs its deploy prototxt (--prototxt)")
        size = _prototxt_input_size(Path(prototxt))
        prep = preprocessing or Preprocessing(size=size)
        inputs = make_inputs(images, preprocessing=prep, count=count, seed=seed)
        predictions = opencv_predictions(
            source, prototxt, inputs, channel_order=channel_order or "bgr"
        )
        identity = {"caffemodel": source.name, "caffemodel_sha1": _sha1(source)}
    else:
        net = AlexNet.from_weights(source, prototxt=prototxt, variant=variant)
        prep = preprocessing or Preprocessing(size=net.architecture.input_size)
        inputs = make_inputs(images, preprocessing=prep, count=count, seed=seed)
        predictions = graph_predictions(net, inputs, channel_order=channel_order, name=source.name)
        identity = {"weights": source.name}
        if source.is_file():
            identity["weights_sha1"] = _sha1(source)
    base = target.parent if target is not None else Path.cwd()
    model_entry: dict[str, Any] = {
        "name": _net_name(prototxt) or source.stem,
        **identity,
        "num_classes": predictions.num_classes,
    }
    if prototxt is not None:
        model_entry["deploy_prototxt"] = _card_path(Path(prototxt), base)
        model_entry["deploy_prototxt_sha1"] = _sha1(Path(prototxt))
    entries = []
    for index, entry in enumerate(inputs.entries):
        entry = dict(entry)
        if "file" in entry and images:
            entry["file"] = _card_path(Path(images[index]), base)
        entry["name"] = inputs.names[index]
        entry[f"top{top}"] = [
            {"class": c, "label": class_label(c, predictions.num_classes), "prob": p}
            for c, p in predictions.top_k(index, top)
        ]
        entries.append(entry)
    card = {
        "about": f"Reference predictions of {source.name}, written by weightconv "
        f"{__version__} (`weightconv reference`). Verify a conversion with "
        f"`weightconv verify CONVERTED --card THIS`.",
        "format": CARD_FORMAT,
        "model": model_entry,
        "computed_by": predictions.source,
        "preprocessing": inputs.preprocessing.to_card(
            base=base, channel_order=channel_order or "bgr"
        ),
        "tolerance": (tolerance or Tolerance()).to_dict(),
        "images": entries,
    }
    if predictions.notes:
        card["notes"] = predictions.notes
    if target is not None:
        with atomic_output(target, force=force) as handle:
            handle.write((json.dumps(card, indent=2) + "\n").encode("utf-8"))
    return card


def _card_path(path: Path, base: Path) -> str:
    """`path` relative to the card's folder when they share a folder below the root (so a
    card travels with its files), else absolute."""
    target, folder = path.resolve(), base.resolve()
    try:
        common = Path(os.path.commonpath([target, folder]))
    except ValueError:  # another drive
        return str(target)
    if common == Path(common.anchor):
        return str(target)
    return os.path.relpath(target, folder)


def _net_name(prototxt: str | os.PathLike[str] | None) -> str | None:
    if prototxt is None:
        return None
    from weightconv.formats.caffe.net import parse_prototxt

    return parse_prototxt(prototxt)[0].name or None


def _prototxt_input_size(prototxt: Path) -> tuple[int, int]:
    from weightconv.formats.caffe.net import net_def_from_message, parse_prototxt
    from weightconv.nets.alexnet import net_input_size

    size = net_input_size(net_def_from_message(parse_prototxt(prototxt)[0]))
    if size is None:
        raise UsageError(f"{prototxt}: does not declare its input size")
    return size


def _is_caffe(path: Path) -> bool:
    from weightconv import formats

    if not path.is_file():
        return False
    try:
        return formats.detect(path).name in _CAFFE_FORMATS
    except (FormatError, UsageError):
        return False


# --- comparison ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """What must hold on every image for a pass.

    `prob`: max |Δprobability| must be below it; `top1`/`top5`: the top-1 class / the top-5
    classes (in order) must agree, where two classes whose reference probabilities differ by
    no more than twice the image's own max |Δprob| may swap (a tie within rounding);
    `logit`: when set, max |Δlogit| / max(1, max |reference logit|) must be below it.
    """

    prob: float = 1e-4
    top1: bool = True
    top5: bool = True
    logit: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"prob": self.prob, "top1": self.top1, "top5": self.top5, "logit": self.logit}

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> Tolerance:
        return cls(
            prob=float(entry.get("prob", 1e-4)),
            top1=bool(entry.get("top1", True)),
            top5=bool(entry.get("top5", True)),
            logit=None if entry.get("logit") is None else float(entry["logit"]),
        )


#: For cards that do not state a tolerance: published predictions made by other software
#: (another JPEG decoder and resize) differ from a correct conversion's by more than float
#: rounding, so only gross differences count; the top-1 and top-5 classes still must agree.
PUBLISHED_CARD_TOLERANCE = Tolerance(prob=1e-2)


@dataclass
class VerifyResult:
    """The verdict, per image and overall; `to_dict` is JSON-ready, `report` is text."""

    subject: str
    reference: str
    inputs: str
    images: list[dict[str, Any]]
    summary: dict[str, Any]
    tolerance: Tolerance
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.summary["passed"])

    @property
    def exit_code(self) -> int:
        """0 when it passed, 1 (a check failed) when not."""
        return EXIT_OK if self.passed else EXIT_CHECK_FAILED

    def failures(self) -> list[dict[str, Any]]:
        return [image for image in self.images if not image["passed"]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.passed,
            "verdict": "pass" if self.passed else "fail",
            "exit_code": self.exit_code,
            "subject": self.subject,
            "reference": self.reference,
            "inputs": self.inputs,
            "tolerance": self.tolerance.to_dict(),
            "summary": self.summary,
            "images": self.images,
            "notes": self.notes,
        }

    def check(self) -> VerifyResult:
        """Raise CheckFailed (exit code 1) with a one-line summary unless it passed."""
        if not self.passed:
            raise CheckFailed(self.headline())
        return self

    def headline(self) -> str:
        s = self.summary
        verdict = "PASS" if self.passed else "FAIL"
        line = (
            f"{verdict}: top-1 agrees on {s['top1_agree']}/{s['images']} images, top-"
            f"{s['k']} on {s['topk_agree']}/{s['images']}; max |Δprob| "
            f"{_g(s['max_abs_prob_diff'])} (tolerance {self.tolerance.prob:g})"
        )
        if s.get("max_abs_logit_diff") is not None:
            line += (
                f"; max |Δlogit| {_g(s['max_abs_logit_diff'])} = "
                f"{_g(s['relative_logit_diff'])} of the logit scale "
                f"{s['logit_scale']:.3g}"
            )
        return line

    def report(self, *, all_images: bool = True) -> str:
        """A readable report: what was compared, a line per image, the disagreements in
        detail (both top-k lists), and the verdict."""
        lines = [
            f"verify {self.subject}",
            f"  against {self.reference}",
            f"  inputs  {self.inputs}",
        ]
        lines += [f"  note: {note}" for note in self.notes]
        width = max(12, *(len(image["image"]) for image in self.images))
        lines.append(
            f"  {'image':<{width}}  {'ours: top-1':<34}  {'reference: top-1':<34}"
            f"  {'max|Δprob|':>10}"
        )
        for image in self.images:
            if not all_images and image["passed"]:
                continue
            ours, ref = image["ours"][0], image["reference"][0]
            mark = "ok" if image["passed"] else "FAIL"
            lines.append(
                f"  {image['image']:<{width}}  {_entry(ours):<34}  {_entry(ref):<34}"
                f"  {_g(image['max_abs_prob_diff']):>10}  {mark}"
            )
        for image in self.failures():
            lines.append(f"  {image['image']}:")
            lines += [f"    - {problem}" for problem in image["problems"]]
            lines.append("      ours:      " + ", ".join(_entry(e) for e in image["ours"]))
            lines.append("      reference: " + ", ".join(_entry(e) for e in image["reference"]))
        lines.append(self.headline())
        return "\n".join(lines)


def _entry(entry: dict[str, Any]) -> str:
    label = entry["label"]
    label = label if len(label) <= 22 else label[:21] + "…"
    prob = "?" if entry["prob"] is None else f"{entry['prob']:.4f}"
    return f"{entry['class']} {label} {prob}"


def _g(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def _ranks_agree(
    ours: list[int], ref: list[int], ref_prob: Any, window: float
) -> tuple[bool, bool]:
    """(agree, by a tie): the same classes in the same order, or differing only where the
    reference's probabilities of the two classes are within `window`."""
    if ours == ref:
        return True, False
    for a, b in zip(ours, ref, strict=False):
        if a == b:
            continue
        pa, pb = ref_prob(a), ref_prob(b)
        if pa is None or pb is None or abs(pa - pb) > window:
            return False, False
    return len(ours) == len(ref), True


def compare(
    ours: Predictions,
    reference: Predictions,
    names: Sequence[str],
    *,
    tolerance: Tolerance | None = None,
    k: int = TOP,
    subject: str = "",
    inputs: str = "",
    notes: Sequence[str] = (),
) -> VerifyResult:
    """Compare two sets of predictions image by image and give the verdict."""
    tol = tolerance or Tolerance()
    if ours.count != len(names) or reference.count != len(names):
        raise UsageError(f"{len(names)} images but {ours.count} and {reference.count} predictions")
    classes = ours.num_classes or reference.num_classes
    problems_all: list[str] = []
    if ours.num_classes and reference.num_classes and ours.num_classes != reference.num_classes:
        problems_all.append(
            f"{ours.num_classes} classes here, {reference.num_classes} in the reference"
        )
    images = []
    max_prob = 0.0
    max_logit: float | None = None
    logit_scale = 0.0
    top1_agree = topk_agree = ties = 0
    for i, name in enumerate(names):
        ref_top = reference.top_k(i, k)
        our_top = ours.top_k(i, len(ref_top))
        # probability differences over every class when both sides have them, else over the
        # classes the reference lists
        listed = [c for c, _ in ref_top]
        problems = list(problems_all)
        missing = [c for c in listed if ours.prob_of(i, c) is None]
        if (
            ours.probabilities is not None
            and reference.probabilities is not None
            and ours.probabilities.shape == reference.probabilities.shape
        ):
            diff = np.abs(ours.probabilities[i] - reference.probabilities[i])
            worst = int(np.argmax(diff))
            prob_diff = float(diff[worst])
        else:
            diffs = {c: abs((ours.prob_of(i, c) or 0.0) - p) for c, p in ref_top}
            worst = max(diffs, key=lambda c: diffs[c])
            prob_diff = diffs[worst]
            if missing:
                problems.append(
                    f"the reference lists class{'es' if len(missing) > 1 else ''} "
                    f"{', '.join(map(str, missing))}, which this model (with "
                    f"{ours.num_classes} classes) does not have"
                )
        logit_diff = None
        if (
            ours.logits is not None
            and reference.logits is not None
            and ours.logits.shape == reference.logits.shape
        ):
            logit_diff = float(np.abs(ours.logits[i] - reference.logits[i]).max())
            max_logit = max(max_logit or 0.0, logit_diff)
            logit_scale = max(logit_scale, float(np.abs(reference.logits[i]).max()))
        window = 2 * min(prob_diff, tol.prob)
        a1, tie1 = _ranks_agree(
            [c for c, _ in our_top[:1]], listed[:1], lambda c, i=i: reference.prob_of(i, c), window
        )
        ak, tiek = _ranks_agree(
            [c for c, _ in our_top], listed, lambda c, i=i: reference.prob_of(i, c), window
        )
        top1_agree += a1
        topk_agree += ak
        ties += bool((a1 and tie1) or (ak and tiek))
        if not a1:
            (oc, op), (rc, rp) = our_top[0], ref_top[0]
            theirs = reference.prob_of(i, oc)
            mine = ours.prob_of(i, rc)
            problems.append(
                f"top-1 differs: {oc} '{class_label(oc, classes)}' ({op:.4f}) here, "
                f"{rc} '{reference.label(rc, classes)}' ({rp:.4f}) in the reference; "
                + (
                    f"the reference gives {oc} {theirs:.4f}"
                    if theirs is not None
                    else f"the reference does not list {oc}"
                )
                + (
                    f", this model gives {rc} {mine:.4f}"
                    if mine is not None
                    else f", this model has no class {rc}"
                )
            )
        if not ak:
            mine = [c for c, _ in our_top]
            only_ours = [c for c in mine if c not in listed]
            only_ref = [c for c in listed if c not in mine]
            if only_ours or only_ref:
                problems.append(
                    f"top-{k} differ: only here "
                    + (", ".join(f"{c} '{class_label(c, classes)}'" for c in only_ours) or "-")
                    + "; only in the reference "
                    + (", ".join(f"{c} '{reference.label(c, classes)}'" for c in only_ref) or "-")
                )
            else:
                problems.append(
                    f"top-{k} are the same classes in another order: here "
                    f"{mine}, in the reference {listed}"
                )
        if not prob_diff < tol.prob:
            problems.append(
                f"max |Δprob| {_g(prob_diff)} at class {worst} "
                f"'{reference.label(worst, classes)}' "
                f"({_p(ours.prob_of(i, worst), 'no such class')} here, "
                f"{_p(reference.prob_of(i, worst))} in the reference) is not below "
                f"{tol.prob:g}"
            )
        max_prob = max(max_prob, prob_diff)
        passed = (
            not problems_all
            and (a1 or not tol.top1)
            and (ak or not tol.top5)
            and prob_diff < tol.prob
            and not missing
        )
        images.append(
            {
                "image": name,
                "passed": bool(passed),
                "top1_agree": bool(a1),
                f"top{k}_agree": bool(ak),
                "tie": bool(tie1 or tiek),
                "max_abs_prob_diff": prob_diff,
                "max_abs_logit_diff": logit_diff,
                "ours": [_json_entry(c, p, classes) for c, p in our_top],
                "reference": [
                    {**_json_entry(c, p, classes), "label": reference.label(c, classes)}
                    for c, p in ref_top
                ],
                "problems": problems,
            }
        )
    relative = None if max_logit is None else max_logit / max(1.0, logit_scale)
    logit_ok = tol.logit is None or relative is None or relative < tol.logit
    passed = all(image["passed"] for image in images) and logit_ok
    summary = {
        "passed": passed,
        "images": len(names),
        "k": k,
        "top1_agree": top1_agree,
        "topk_agree": topk_agree,
        "ties": ties,
        "max_abs_prob_diff": max_prob,
        "max_abs_logit_diff": max_logit,
        "logit_scale": logit_scale if max_logit is not None else None,
        "relative_logit_diff": relative,
        "failed_images": [image["image"] for image in images if not image["passed"]],
    }
    all_notes = [*notes, *ours.notes, *reference.notes]
    if not logit_ok:
        all_notes.append(
            f"max |Δlogit| is {_g(relative)} of the logit scale, not below {tol.logit:g}"
        )
    return VerifyResult(
        subject or ours.source,
        reference.source,
        inputs,
        images,
        summary,
        tol,
        list(dict.fromkeys(all_notes)),
    )


def _p(value: float | None, absent: str = "not listed") -> str:
    return absent if value is None else f"{value:.4f}"


def _json_entry(cls: int, prob: float | None, classes: int | None) -> dict[str, Any]:
    return {
        "class": int(cls),
        "label": class_label(cls, classes),
        "prob": None if prob is None else float(prob),
    }


# --- the entry point -----------------------------------------------------------------------


def verify(
    weights: WeightSet | AlexNet | str | os.PathLike[str],
    *,
    against: str | os.PathLike[str] | None = None,
    prototxt: str | os.PathLike[str] | None = None,
    card: str | os.PathLike[str] | dict[str, Any] | None = None,
    images: Sequence[str | os.PathLike[str]] | None = None,
    count: int = SYNTHETIC_COUNT,
    seed: int = 0,
    preprocessing: Preprocessing | None = None,
    tolerance: Tolerance | None = None,
    variant: str | None = None,
    channel_order: str | None = None,
    top: int = TOP,
    **load_options: Any,
) -> VerifyResult:
    """Check converted weights against their source model or a reference card.

    Args:
        weights: a weight file in any format, a WeightSet, or a built `AlexNet`.
        against: the source ``.caffemodel``, run by OpenCV on the same inputs (with
            `prototxt`, which also defines our graph's strides, pads, groups and LRN).
        prototxt: the deploy net; for a card, defaults to the card's ``deploy_prototxt``
            when that file exists, else BVLC's definition of `variant`.
        card: a reference card (path or `load_card` dict) instead of `against`.
        images: image files; default the card's images, or `count` synthetic images.
        preprocessing: default 227x227 (or the net's input), ImageNet mean; a card's own.
        tolerance: default `Tolerance()`; for a card, the card's, else
            `PUBLISHED_CARD_TOLERANCE`.
        variant: "alexnet" or "caffenet" when no prototxt defines the graph.
        channel_order: the order the converted weights expect (default: recorded, else bgr).
        **load_options: passed to `weightconv.load` (e.g. ``trust_pickle=True``).

    Returns a VerifyResult (``.passed``, ``.exit_code``, ``.report()``, ``.to_dict()``).
    """
    if (against is None) == (card is None):
        raise UsageError(
            "give either the source model to verify against (--against "
            "MODEL.caffemodel --prototxt DEPLOY.prototxt) or a reference card "
            "(--card CARD.json), not both and not neither"
        )
    if channel_order is not None and channel_order not in CHANNEL_ORDERS:
        raise UsageError(f"channel order must be bgr or rgb, not {channel_order!r}")
    notes: list[str] = []
    subject = _subject(weights)
    if against is not None:
        if prototxt is None:
            raise UsageError(
                "verifying against a .caffemodel needs its deploy prototxt (--prototxt)"
            )
        if not _is_caffe(Path(against)):
            raise UsageError(
                f"{against}: --against takes the source Caffe model (run by "
                f"OpenCV's Caffe importer); to compare two converted files use "
                f"`weightconv diff`, or make a card with `weightconv reference`"
            )
        net = _build(weights, prototxt, variant, load_options)
        prep = preprocessing or Preprocessing(size=net.architecture.input_size)
        inputs = make_inputs(images, preprocessing=prep, count=count, seed=seed)
        reference = opencv_predictions(against, prototxt, inputs)
        tol = tolerance or Tolerance()
    else:
        if images:
            raise UsageError("a card brings its own images; --image is for --against")
        card_data = card if isinstance(card, dict) else load_card(card)  # type: ignore[arg-type]
        graph_prototxt = prototxt or _card_prototxt(card_data)
        net = _build(weights, graph_prototxt, variant, load_options)
        inputs = card_inputs(card_data, preprocessing)
        reference = card_predictions(card_data)
        if "tolerance" in card_data and tolerance is None:
            tol = Tolerance.from_dict(card_data["tolerance"])
        elif tolerance is None:
            tol = PUBLISHED_CARD_TOLERANCE
            notes.append(
                f"the card states no tolerance; using max |Δprob| < "
                f"{tol.prob:g} for predictions made by other software"
            )
        else:
            tol = tolerance
        notes += _identity_notes(weights, card_data)
    if inputs.bgr.shape[1:3] != tuple(net.architecture.input_size):
        raise UsageError(
            f"the inputs are {inputs.bgr.shape[1]}x{inputs.bgr.shape[2]}; the "
            f"graph takes {net.architecture.input_size[0]}x"
            f"{net.architecture.input_size[1]}"
        )
    ours = graph_predictions(net, inputs, channel_order=channel_order, name=subject)
    notes += [note for note in net.notes if "matched to the graph" in note]
    return compare(
        ours,
        reference,
        inputs.names,
        tolerance=tol,
        k=top,
        subject=ours.source,
        inputs=inputs.description,
        notes=notes,
    )


def _subject(weights: Any) -> str:
    if isinstance(weights, AlexNet):
        return "the weights"
    if isinstance(weights, WeightSet):
        return Path(weights.source.path).name if weights.source else "the given weights"
    return Path(weights).name


def _build(
    weights: Any, prototxt: Any, variant: str | None, load_options: dict[str, Any]
) -> AlexNet:
    if isinstance(weights, AlexNet):
        return weights
    return AlexNet.from_weights(weights, prototxt=prototxt, variant=variant, **load_options)


def _card_prototxt(card: dict[str, Any]) -> Path | None:
    relative = card.get("model", {}).get("deploy_prototxt")
    if not relative:
        return None
    path = Path(card.get("_path", ".")).parent / relative
    return path if path.is_file() else None


def _identity_notes(weights: Any, card: dict[str, Any]) -> list[str]:
    model = card.get("model", {})
    expected = model.get("caffemodel_sha1")
    if not expected:
        return []
    if isinstance(weights, str | os.PathLike) and _is_caffe(Path(weights)):
        actual = _sha1(Path(weights))
        if actual != expected:
            return [
                f"{Path(weights).name} has sha1 {actual}; the card is for "
                f"{model.get('caffemodel', 'a model')} with sha1 {expected}"
            ]
        return [f"{Path(weights).name} is the card's model (sha1 matches)"]
    return [
        f"the card is for {model.get('caffemodel', 'a model')} (sha1 {expected}); a "
        f"converted file cannot be matched by checksum, only by its predictions"
    ]


__all__ = [
    "CARD_FORMAT",
    "IMAGENET_MEAN_BGR",
    "PUBLISHED_CARD_TOLERANCE",
    "Inputs",
    "Predictions",
    "Preprocessing",
    "Tolerance",
    "VerifyResult",
    "card_inputs",
    "card_predictions",
    "class_label",
    "compare",
    "graph_predictions",
    "imagenet_labels",
    "load_card",
    "make_inputs",
    "opencv_predictions",
    "read_image",
    "synthetic_images",
    "verify",
    "write_card",
]
