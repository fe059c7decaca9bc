"""weightconv: move neural-network weights between Caffe, .npy, TensorFlow and Keras files,
exact or refused.

Example::

    import weightconv
    ws = weightconv.load("lenet.caffemodel", prototxt="lenet.prototxt")
    weightconv.save(ws, "lenet.npy")
    report = weightconv.convert("lenet.caffemodel", "lenet.ckpt", prototxt="lenet.prototxt",
                                mapping=weightconv.Mapping(names="tf1"))
"""

from weightconv._version import __version__
from weightconv.access import WeightFile, load_dict, open, save_dict
from weightconv.errors import (
    CheckFailed,
    FormatError,
    MappingError,
    OutputError,
    OutputExistsError,
    ShapeError,
    UnsafeInputError,
    UsageError,
    WeightconvError,
)
from weightconv.formats.base import WriteResult
from weightconv.mapping import MapFile, Mapping
from weightconv.model import Kind, Layer, LazyTensor, Provenance, Tensor, WeightSet
from weightconv.pipeline import (
    SCHEMA_VERSION,
    ConversionReport,
    DiffReport,
    DiffSide,
    Inventory,
    TensorReport,
    convert,
    diff,
    inspect,
    inspect_tensor,
    load,
    save,
)

__all__ = [
    "SCHEMA_VERSION",
    "CheckFailed",
    "ConversionReport",
    "DiffReport",
    "DiffSide",
    "FormatError",
    "Inventory",
    "Kind",
    "Layer",
    "LazyTensor",
    "MapFile",
    "Mapping",
    "MappingError",
    "OutputError",
    "OutputExistsError",
    "Provenance",
    "ShapeError",
    "Tensor",
    "TensorReport",
    "UnsafeInputError",
    "UsageError",
    "WeightFile",
    "WeightSet",
    "WeightconvError",
    "WriteResult",
    "__version__",
    "convert",
    "diff",
    "inspect",
    "inspect_tensor",
    "load",
    "load_dict",
    "open",
    "save",
    "save_dict",
]
