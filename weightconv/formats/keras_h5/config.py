"""Keras model configs: reading one, naming its objects as Keras 3 does, or deriving one.

A config (``config.json``, a model's JSON, a ``.keras`` archive's ``config.json``, a full-model
``.h5``'s ``model_config``) becomes a tree of `Node`s. Keras 3 names a layer's place in a
``.weights.h5`` by its class, not its name: ``layers/<snake_case(class)>`` with ``_1``, ``_2``...
counters in container order, nested models recursing (``layers/functional/layers/dense``);
`keras3_paths` spells those places. `model_slots` lays a WeightSet's layers into a given model,
`derived_slots` into the model ``model=None`` stands for (one Conv2D, Dense, BatchNormalization
or DepthwiseConv2D per weighted layer, in order). The helpers at the end are shared by the
package's readers and writers.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from weightconv.errors import FormatError, MappingError, UsageError
from weightconv.model import Kind, Layer, WeightSet
from weightconv.model.canonical import canonical_layers

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
ARCHIVE_WEIGHTS = "model.weights.h5"
ARCHIVE_CONFIG = "config.json"
#: The largest config.json read.
MAX_CONFIG_BYTES = 64 << 20

MODEL_CLASSES = ("Sequential", "Functional", "Model")
#: Classes with a ``kernel`` (and ``bias``), by the kernel's spatial rank.
KERNEL_CLASSES = {
    "Conv1D": 1,
    "Conv2D": 2,
    "Conv3D": 3,
    "Conv1DTranspose": 1,
    "Conv2DTranspose": 2,
    "Conv3DTranspose": 3,
    "Dense": 0,
}
#: Classes that hold no variables.
WEIGHTLESS = (
    "InputLayer",
    "Flatten",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianDropout",
    "GaussianNoise",
    "AlphaDropout",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "Softmax",
    "Reshape",
    "Permute",
    "RepeatVector",
    "Lambda",
    "Rescaling",
    "Identity",
    "ActivityRegularization",
    "Masking",
    "MaxPooling1D",
    "MaxPooling2D",
    "MaxPooling3D",
    "AveragePooling1D",
    "AveragePooling2D",
    "AveragePooling3D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "GlobalMaxPooling3D",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalAveragePooling3D",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "ZeroPadding3D",
    "Cropping1D",
    "Cropping2D",
    "Cropping3D",
    "UpSampling1D",
    "UpSampling2D",
    "UpSampling3D",
    "Add",
    "Subtract",
    "Multiply",
    "Average",
    "Maximum",
    "Minimum",
    "Concatenate",
    "Dot",
)
#: Classes whose variables this package reads by role and writes.
WEIGHTED = (
    *KERNEL_CLASSES,
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "SeparableConv1D",
    "SeparableConv2D",
    "BatchNormalization",
    "LayerNormalization",
    "Embedding",
    "CaffeAffine",
    "PReLU",
)


#: Keras variable names (last part of a weight name) that are canonical roles under another name.
ROLE_OF_VARIABLE = {"kernel": "weights", "bias": "biases"}
VARIABLE_OF_ROLE = {"weights": "kernel", "biases": "bias"}


NON_TRAINABLE = ("moving_mean", "moving_variance")
COUNTER = re.compile(r"_\d+$")


def snake_case(class_name: str) -> str:
    """The name Keras 3 gives a class's objects in a weights file: ``Conv2D`` -> ``conv2d``,
    ``BatchNormalization`` -> ``batch_normalization``, ``ReLU`` -> ``re_lu``."""
    words = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", words).lower()


CLASS_OF_SNAKE = {
    snake_case(name): name for name in (*WEIGHTED, *WEIGHTLESS, "Sequential", "Functional")
}


@dataclass
class Node:
    """One layer of a Keras model config; models hold their layers as children."""

    name: str
    class_name: str
    config: dict[str, Any]
    children: list[Node] = field(default_factory=list)
    is_model: bool = False

    def container(self) -> list[Node]:
        """The model's ``layers`` as Keras lists them: a Sequential's InputLayer is not one."""
        if (
            self.class_name == "Sequential"
            and self.children
            and (self.children[0].class_name == "InputLayer")
        ):
            return self.children[1:]
        return self.children

    def leaves(self, trail: tuple[str, ...] = ()) -> Iterator[tuple[Node, tuple[str, ...]]]:
        """Every non-model layer under this model, in order, with the models above it."""
        for child in self.container():
            if child.is_model:
                yield from child.leaves((*trail, child.name))
            else:
                yield child, trail


def parse_config(text: str, where: str) -> dict[str, Any]:
    """A config's JSON text as a dict; `where` names it in the error."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{where}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(config, dict):
        raise FormatError(f"{where}: not a Keras model config (a JSON {type(config).__name__})")
    return config


def node_of(entry: dict[str, Any], where: str) -> Node:
    """The `Node` tree of a config entry (``{"class_name": ..., "config": ...}``)."""
    class_name = entry.get("class_name")
    config = entry.get("config")
    if not isinstance(class_name, str):
        raise FormatError(f"{where}: not a Keras model config (no class_name)")
    if isinstance(config, list):  # Keras 2.0-2.2 Sequential: the config is the layer list
        config = {"name": "sequential", "layers": config}
    if not isinstance(config, dict):
        config = {}
    if isinstance(entry.get("build_config"), dict) and "build_config" not in config:
        config = {**config, "build_config": entry["build_config"]}  # Keras 3 keeps it beside
    name = config.get("name") or entry.get("name") or ""
    layers = config.get("layers")
    if isinstance(layers, list) and (
        class_name in MODEL_CLASSES or "input_layers" in config or class_name not in WEIGHTED
    ):
        children = [node_of(child, where) for child in layers if isinstance(child, dict)]
        # Keras 3 rebuilds a Keras 2 "Model" config as Functional, and names its path so.
        return Node(
            str(name),
            "Functional" if class_name == "Model" else class_name,
            config,
            children,
            is_model=True,
        )
    return Node(str(name), class_name, config)


def keras3_paths(root: Node) -> Iterator[tuple[str, Node]]:
    """(``.weights.h5`` path, layer) for the model and every layer under it, in save order."""

    def walk(node: Node, path: str) -> Iterator[tuple[str, Node]]:
        yield path, node
        if node.is_model:
            counters: dict[str, int] = {}
            for child in node.container():
                yield from walk(
                    child, join_path(path, "layers", counted(child.class_name, counters))
                )

    yield from walk(root, "")


def counted(class_name: str, counters: dict[str, int]) -> str:
    """The next Keras 3 name of a class in one container: ``conv2d``, ``conv2d_1``..."""
    base = snake_case(class_name)
    count = counters.get(base, -1) + 1
    counters[base] = count
    return base if count == 0 else f"{base}_{count}"


def load_model_config(model: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    """A Keras model config from a ``config.json`` or model JSON, a ``.keras`` archive, a
    full-model ``.h5`` (its ``model_config``), or the parsed dict itself."""
    if isinstance(model, dict):
        return model
    path = Path(model)
    if not path.is_file():
        raise UsageError(
            f"{path}: no such model config (expected config.json, a model JSON, "
            f"a .keras archive or a full-model .h5)"
        )
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo(ARCHIVE_CONFIG)
                if info.file_size > MAX_CONFIG_BYTES or info.file_size > 1100 * max(
                    info.compress_size, 1
                ):
                    raise UsageError(
                        f"{path}:{ARCHIVE_CONFIG}: declares {info.file_size:,} bytes "
                        f"from {info.compress_size:,} compressed; more than the "
                        f"{MAX_CONFIG_BYTES:,} read here"
                    )
                text = archive.read(ARCHIVE_CONFIG).decode("utf-8", "replace")
        except (zipfile.BadZipFile, KeyError) as exc:
            raise UsageError(
                f"{path}: not a .keras archive with a {ARCHIVE_CONFIG} ({one_line(exc)})"
            ) from None
        return parse_config(text, f"{path}:{ARCHIVE_CONFIG}")
    if head.startswith(HDF5_MAGIC):
        try:
            with h5py.File(path, "r") as h5:
                if "model_config" not in h5.attrs:
                    raise UsageError(
                        f"{path}: an HDF5 file without a model_config attribute; "
                        f"pass the model's config.json or .keras"
                    )
                text = attr_text(h5.attrs["model_config"])
        except OSError as exc:
            raise UsageError(f"{path}: not a readable HDF5 file ({one_line(exc)})") from None
        return parse_config(text, f"{path} model_config")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a Keras model config (not JSON, .keras or .h5)") from None
    try:
        return parse_config(text, str(path))
    except FormatError as exc:
        raise UsageError(str(exc)) from None


def variable_roles(class_name: str, config: dict[str, Any]) -> list[str] | None:
    """Canonical roles of a layer's variables in Keras's order (trainable, then not); None
    for classes this module does not know."""
    bias = ["biases"] if config.get("use_bias", True) else []
    if class_name in KERNEL_CLASSES:
        return ["weights", *bias]
    if class_name in ("DepthwiseConv1D", "DepthwiseConv2D"):
        return ["depthwise_kernel", *bias]
    if class_name in ("SeparableConv1D", "SeparableConv2D"):
        return ["depthwise_kernel", "pointwise_kernel", *bias]
    scale = ["gamma"] if config.get("scale", True) else []
    center = ["beta"] if config.get("center", True) else []
    if class_name == "BatchNormalization":
        return [*scale, *center, *NON_TRAINABLE]
    if class_name == "LayerNormalization":
        return [*scale, *([] if config.get("rms_scaling") else center)]
    if class_name == "Embedding":
        return ["embeddings"]
    if class_name == "PReLU":
        return ["alpha"]
    if class_name == "CaffeAffine":  # weightconv's Caffe Scale layer (weightconv.nets.keras_layers)
        return [
            *(["scale"] if config.get("scale", True) else []),
            *(["offset"] * bool(config.get("offset"))),
        ]
    if class_name in WEIGHTLESS or class_name in MODEL_CLASSES:
        return []
    return None


def role_variants(class_name: str) -> list[list[str]]:
    """The role lists a class has over its options (``use_bias``, ``scale``, ``center``)."""
    variants = []
    for use_bias, scale, center, offset in itertools.product((True, False), repeat=4):
        config = {"use_bias": use_bias, "scale": scale, "center": center, "offset": offset}
        roles = variable_roles(class_name, config)
        if roles is not None and roles not in variants:
            variants.append(roles)
    return variants


@dataclass
class Slot:
    """One Keras layer of the target model and the WeightSet layer that fills it."""

    path: str
    name: str
    class_name: str
    config: dict[str, Any]
    layer: Layer | None = None
    is_model: bool = False
    top: str = ""
    trainable: bool = True


class _Pending:
    """WeightSet layers converted one at a time, taken by name in the model's order."""

    def __init__(self, weights: WeightSet) -> None:
        self._layers = canonical_layers(weights)
        self._held: dict[str, Layer] = {}

    def take(self, name: str) -> Layer | None:
        if name in self._held:
            return self._held.pop(name)
        for layer in self._layers:
            if layer.name == name:
                return layer
            self._held[layer.name] = layer
        return None


def leaf_keys(root: Node) -> list[tuple[str, Node, tuple[str, ...]]]:
    """(the WeightSet name it takes, layer, models above it) for every leaf: its own name,
    or ``model/name`` where two nested models use the same name."""
    leaves = list(root.leaves())
    counts: dict[str, int] = {}
    for leaf, _ in leaves:
        counts[leaf.name] = counts.get(leaf.name, 0) + 1
    return [
        (leaf.name if counts[leaf.name] == 1 else "/".join((*trail, leaf.name)), leaf, trail)
        for leaf, trail in leaves
    ]


def model_slots(root: Node, weights: WeightSet) -> Iterator[Slot]:
    """The given model's layers in save order, each weighted one with the WeightSet layer of
    its name (see `leaf_keys`), converted to the canonical layout as it is reached."""
    pending = _Pending(weights)
    key_of = {id(leaf): key for key, leaf, _ in leaf_keys(root)}

    def walk(node: Node, path: str, top: str, trainable: bool) -> Iterator[Slot]:
        trainable = trainable and node.config.get("trainable", True) is not False
        if not node.is_model:
            wanted = bool(variable_roles(node.class_name, node.config))
            layer = pending.take(key_of[id(node)]) if wanted else None
            yield Slot(path, node.name, node.class_name, node.config, layer, False, top, trainable)
            return
        yield Slot(path, node.name, node.class_name, node.config, None, True, top, trainable)
        counters: dict[str, int] = {}
        for child in node.container():
            child_path = join_path(path, "layers", counted(child.class_name, counters))
            yield from walk(child, child_path, top or child.name, trainable)

    yield from walk(root, "", "", True)


def derived_slots(weights: WeightSet, target: Path) -> Iterator[Slot]:
    """The model `model=None` stands for: a Sequential of one layer per weighted layer."""
    yield Slot("", "", "Sequential", {}, None, True)
    counters: dict[str, int] = {}
    for layer in canonical_layers(weights):
        class_name, config = _derive_class(layer, target)
        path = join_path("layers", counted(class_name, counters))
        yield Slot(path, layer.name, class_name, config, layer, False, layer.name)


def _derive_class(layer: Layer, target: Path) -> tuple[str, dict[str, Any]]:
    roles = set(layer.tensors)
    if "depthwise_kernel" in roles:
        return "DepthwiseConv2D", {"use_bias": "biases" in roles}
    if roles & {"moving_mean", "moving_variance", "mean", "variance"}:
        return "BatchNormalization", {"scale": "gamma" in roles, "center": "beta" in roles}
    kernel = layer.tensors.get("weights")
    if kernel is not None and layer.kind != Kind.DECONV and kernel.ndim in (2, 4):
        return ("Conv2D" if kernel.ndim == 4 else "Dense"), {"use_bias": "biases" in roles}
    shapes = ", ".join(f"{role} {tuple(t.shape)}" for role, t in layer.tensors.items())
    raise MappingError(
        f"{target}: layer {layer.name!r} ({layer.kind}: {shapes}) is not a "
        f"Conv2D, Dense, BatchNormalization or DepthwiseConv2D; pass the "
        f"Keras model (model=config.json or .keras) to write it"
    )


def class_of_path(path: str) -> str:
    """``layers/conv2d_1`` -> ``Conv2D``; an unknown snake name stays as it is."""
    snake = COUNTER.sub("", path.rpartition("/")[2])
    return CLASS_OF_SNAKE.get(snake, snake)


def path_name(path: str) -> str:
    """``layers/functional/layers/dense`` -> ``functional/dense``."""
    return "/".join(part for part in path.split("/") if part not in ("layers", "vars"))


def normal_path(path: str) -> str:
    """Keras 2.13-era files name the layers group ``_layer_checkpoint_dependencies``."""
    return "/".join(
        "layers" if p == "_layer_checkpoint_dependencies" else p for p in path.split("/")
    )


def config_input_shape(config: dict[str, Any]) -> list[Any] | None:
    """The batch input shape a layer's config records (``[None, 67, 67, 3]``), if any."""
    build = config.get("build_config")
    shape = build.get("input_shape") if isinstance(build, dict) else None
    shape = shape if shape is not None else config.get("batch_input_shape")
    if isinstance(shape, list) and shape and not isinstance(shape[0], list):
        return shape
    return None


def attr_text(value: Any) -> str:
    """An HDF5 attribute (bytes, str, a numpy string, or a one-element array of any of
    them) as text; anything else (garbage of another dtype or shape) is its repr, so a
    caller comparing it with a name finds no match."""
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        return str(value)
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "SUO":
        return attr_text(value.reshape(-1)[0])
    return repr(value) if value is not None else ""


def join_path(*parts: str) -> str:
    return "/".join(part.strip("/") for part in parts if part.strip("/"))


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
