"""Reference cards: a model's predictions written down, to verify conversions against later.

A card is JSON: the model's identity (file name, sha1, deploy net), the preprocessing, the
tolerance, and per image its input (a file, stored relative to the card with its sha256, or
a synthetic image by generator, seed and index) and its top-k classes and probabilities.
`write_card` makes one from a source model; published predictions such as
``caffenet_cat.json`` (a file name, no sha256) are cards too.

A card's images are found relative to the card. A card copied elsewhere without them is
pointed at them with ``images=``: each given image is matched to the card's entry with the
same sha256, else the same file name, and one that matches no entry is refused.

Example::

    write_card("alexnet.caffemodel", "alexnet.card.json", prototxt="deploy.prototxt")
    card = load_card("alexnet.card.json")
    inputs = card_inputs(card, images=["photos/cat.jpg"])
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from weightconv import formats
from weightconv._util.files import atomic_output, check_writable
from weightconv._version import __version__
from weightconv.errors import CheckFailed, FormatError, UsageError
from weightconv.formats.caffe.net import parse_prototxt
from weightconv.nets import AlexNet
from weightconv.nets.architecture import prototxt_input_size
from weightconv.verify.comparison import TOP, Tolerance
from weightconv.verify.inputs import (
    SYNTHETIC_COUNT,
    SYNTHETIC_GENERATOR,
    Inputs,
    Preprocessing,
    file_digest,
    file_sha256,
    make_inputs,
    portable_path,
    synthetic_images,
    unique_names,
)
from weightconv.verify.labels import class_label
from weightconv.verify.predictions import graph_predictions, opencv_predictions, top_key

CARD_FORMAT = "weightconv-reference-card/1"
_CAFFE_FORMATS = ("caffemodel", "caffe-h5")
#: Image names a refusal lists at most.
_LISTED = 5


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
        key = top_key(entry) if isinstance(entry, dict) else None
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


def card_inputs(
    card: dict[str, Any],
    preprocessing: Preprocessing | None = None,
    images: Sequence[str | os.PathLike[str]] | None = None,
) -> Inputs:
    """The card's images, preprocessed as the card says (or as `preprocessing` overrides).

    Image files are found relative to the card, or given as `images` (each matched to the
    card's entry by sha256, else by file name; entries not given are left out, with a note).
    ``Inputs.entries`` are the card's entries of the images used, in the card's order.
    """
    where = card.get("_path", "the reference card")
    base = Path(card.get("_path", ".")).parent
    prep = preprocessing or Preprocessing.from_card(card.get("preprocessing", {}), base)
    given = _match_images(card, [Path(p) for p in images]) if images else None
    names, batch, entries, left_out = [], [], [], []
    for index, entry in enumerate(card["images"]):
        if "file" not in entry:
            names.append(entry.get("name") or f"synthetic-{entry['synthetic']['index']}")
            batch.append(prep.apply(_synthetic_image(card, index, entry, prep)))
        elif given is None:
            path = _card_image(where, base, index, entry)
            if entry.get("sha256") and file_sha256(path) != entry["sha256"]:
                raise CheckFailed(f"{path}: not the image the card was made with (sha256 differs)")
            names.append(entry.get("name") or path.name)
            batch.append(prep.load(path))
        elif index in given:
            names.append(entry.get("name") or given[index].name)
            batch.append(prep.load(given[index]))
        else:
            left_out.append(_entry_name(entry))
            continue
        entries.append(entry)
    notes = []
    if left_out:
        notes.append(
            f"the card's image{'s' if len(left_out) > 1 else ''} {', '.join(left_out)} "
            f"{'were' if len(left_out) > 1 else 'was'} not given and not checked"
        )
    return Inputs(
        unique_names(names),
        np.stack(batch),
        entries,
        prep,
        f"{len(names)} image{'s' if len(names) != 1 else ''} from the card, {prep.describe()}",
        notes,
    )


def _entry_name(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or Path(entry["file"]).name)


def _card_image(where: str, base: Path, index: int, entry: dict[str, Any]) -> Path:
    """A card image's file, relative to the card; a usage error saying how to point at it."""
    path = Path(entry["file"])
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise UsageError(
            f"{where}: image {index} ({entry['file']}) is not at {path}; give its location "
            f"with images=PATH (matched to the card by sha256 or file name)"
        )
    return path


def _match_images(card: dict[str, Any], images: list[Path]) -> dict[int, Path]:
    """Which card entry each given image is: the one with its sha256, else its file name."""
    where = card.get("_path", "the reference card")
    files = [(index, entry) for index, entry in enumerate(card["images"]) if "file" in entry]
    matched: dict[int, Path] = {}
    for image in images:
        if not image.is_file():
            raise UsageError(f"{image}: no such image")
        digest = file_sha256(image)
        same_content = [i for i, entry in files if entry.get("sha256") == digest]
        same_name = [
            i for i, entry in files if image.name in (_entry_name(entry), Path(entry["file"]).name)
        ]
        unhashed = [i for i in same_name if not card["images"][i].get("sha256")]
        candidates = same_content or unhashed
        free = [i for i in candidates if i not in matched]
        if free:
            matched[free[0]] = image
        elif candidates:
            raise UsageError(
                f"{image}: the card's {_entry_name(card['images'][candidates[0]])} is given "
                f"twice, also as {matched[candidates[0]]}"
            )
        elif same_name:
            raise CheckFailed(
                f"{image}: not the image the card was made with (sha256 differs from the "
                f"card's {_entry_name(card['images'][same_name[0]])})"
            )
        elif not files:
            raise UsageError(
                f"{image}: not an image of {where}, whose inputs are all synthetic; leave "
                f"images= out to verify with them"
            )
        else:
            known = [_entry_name(entry) for _, entry in files]
            listed = ", ".join(known[:_LISTED]) + (", ..." if len(known) > _LISTED else "")
            raise UsageError(
                f"{image}: not an image of {where}: none of its {len(known)} images has "
                f"this sha256 or file name ({listed})"
            )
    return matched


def _synthetic_image(
    card: dict[str, Any], index: int, entry: dict[str, Any], prep: Preprocessing
) -> np.ndarray:
    """A card's synthetic input regenerated, checked against the pixels' sha256 it records."""
    where = card.get("_path", "the reference card")
    spec = entry["synthetic"]
    if spec.get("generator", SYNTHETIC_GENERATOR) != SYNTHETIC_GENERATOR:
        raise FormatError(
            f"{where}: image {index} comes from {spec['generator']!r}, not {SYNTHETIC_GENERATOR!r}"
        )
    size = spec.get("size", prep.size)
    raw = synthetic_images(
        int(spec["index"]) + 1, seed=int(spec.get("seed", 0)), size=(int(size[0]), int(size[1]))
    )[-1]
    if (
        entry.get("pixels_sha256")
        and hashlib.sha256(raw.tobytes()).hexdigest() != entry["pixels_sha256"]
    ):
        raise CheckFailed(
            f"{where}: synthetic image {index} differs from the one the card was made with"
        )
    return raw


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
    format: str | None = None,
    read_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A reference card for `model`: its identity (file, sha1, deploy net), the
    preprocessing, and each image's top-`top` classes and probabilities.

    A ``.caffemodel`` is run by OpenCV's Caffe importer (needs `prototxt`); any other weight
    file by the built-in AlexNet graph. Images are files (stored relative to the card, with
    their sha256) or `count` synthetic ones. Writes JSON to `path` when given (refusing to
    overwrite unless `force`); returns the card. `format` and `read_options` are for reading
    a weight file that is not a Caffe model (as in `weightconv.load`).
    """
    source = Path(model)
    if not source.exists() and not Path(f"{source}.index").exists():
        raise UsageError(f"{source}: no such model")
    if top < 1:
        raise UsageError(f"top must be at least 1, got {top}")
    target = Path(path) if path is not None else None
    if target is not None:
        check_writable(target, force)
    if is_caffe(source, format):
        if prototxt is None:
            raise UsageError(
                f"{source}: a Caffe model needs its deploy net: prototxt=DEPLOY.prototxt"
            )
        size = prototxt_input_size(prototxt)
        if size is None:
            raise UsageError(f"{prototxt}: does not declare its input size")
        prep = preprocessing or Preprocessing(size=size)
        inputs = make_inputs(images, preprocessing=prep, count=count, seed=seed)
        predictions = opencv_predictions(
            source, prototxt, inputs, channel_order=channel_order or "bgr"
        )
        identity = {"caffemodel": source.name, "caffemodel_sha1": file_sha1(source)}
    else:
        net = AlexNet.from_weights(
            source, prototxt=prototxt, variant=variant, format=format, read_options=read_options
        )
        prep = preprocessing or Preprocessing(size=net.architecture.input_size)
        inputs = make_inputs(images, preprocessing=prep, count=count, seed=seed)
        predictions = graph_predictions(net, inputs, channel_order=channel_order, name=source.name)
        identity = {"weights": source.name}
        if source.is_file():
            identity["weights_sha1"] = file_sha1(source)
    base = target.parent if target is not None else Path.cwd()
    model_entry: dict[str, Any] = {
        "name": _net_name(prototxt) or source.stem,
        **identity,
        "num_classes": predictions.num_classes,
    }
    if prototxt is not None:
        model_entry["deploy_prototxt"] = portable_path(Path(prototxt), base)
        model_entry["deploy_prototxt_sha1"] = file_sha1(Path(prototxt))
    entries = []
    for index, entry in enumerate(inputs.entries):
        entry = dict(entry)
        if "file" in entry and images:
            entry["file"] = portable_path(Path(images[index]), base)
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


def file_sha1(path: Path) -> str:
    return file_digest(path, "sha1")


def is_caffe(path: Path, format: str | None = None) -> bool:
    """Whether `path` is a Caffe model file (.caffemodel or Caffe's HDF5)."""
    if not path.is_file():
        return False
    try:
        return formats.detect(path, format).name in _CAFFE_FORMATS
    except (FormatError, UsageError):
        return False


def _net_name(prototxt: str | os.PathLike[str] | None) -> str | None:
    if prototxt is None:
        return None
    return parse_prototxt(Path(prototxt))[0].name or None


__all__ = [
    "CARD_FORMAT",
    "card_inputs",
    "file_sha1",
    "is_caffe",
    "load_card",
    "write_card",
]
