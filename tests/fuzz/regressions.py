"""Every distinct crash, hang or blowup the fuzzer found, as code that rebuilds its input.

Each function returns a `Case`: the reader, a generated seed (or a corpus one, skipped when
the corpus is absent), the file to mutate, how to read it, and the mutation (byte operations
or a structure-aware rewrite from `tests.fuzz.mutate`). ``tests/test_fuzz_regressions.py``
runs each in a child and expects a WeightconvError or a clean load within 10 s. Found by
``python benchmarks/fuzz.py --inputs 20000 --jobs 2 --seed 0`` on 2026-12-01; the docstring
says what the reader did then (the first line of the message, where in our code).

To look at one input: ``python -m tests.fuzz.runner --replay "$(python -c 'from
tests.fuzz import regressions as r; import json; print(json.dumps(r.CASES["NAME"]()))')"
--keep /tmp/case``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Case = dict[str, Any]
CASES: dict[str, Callable[[], Case]] = {}


def regression(make: Callable[[], Case]) -> Callable[[], Case]:
    CASES[make.__name__] = make
    return make


def ops(*operations: list[Any]) -> dict[str, Any]:
    """Byte-level operations: ``["flip", offset, bit]``, ``["write", offset, hex]``, ..."""
    return {"kind": "bytes", "ops": [list(op) for op in operations]}


def struct(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """A structure-aware mutation from `tests.fuzz.mutate.STRUCT`."""
    return {"kind": "struct", "name": name, "params": params}


def case(
    reader: str,
    seed: str,
    target: str,
    mode: str,
    mutation: dict[str, Any],
    *,
    options: bool = False,
    explicit_format: bool = False,
) -> Case:
    return {
        "id": 0,
        "reader": reader,
        "seed": seed,
        "target": target,
        "mode": mode,
        "with_options": options,
        "explicit_format": explicit_format,
        "mutation": mutation,
    }


@regression
def caffe_h5_memoryerror_formats_caffe_hdf5_73() -> Case:
    """blowup (192x of 20,000): MemoryError at formats/caffe/hdf5.py:73 in <listcomp>.

    Unable to allocate 16.0 TiB for an array with shape (1099511627776, 4) and data type fl...
    """
    return case(
        "caffe-h5",
        "caffe_h5_synth",
        "model.caffemodel.h5",
        "load",
        struct(
            "h5_huge_dataset",
            {
                "pick": 7925,
                "shape": [1099511627776, 4],
                "chunked": True,
                "fill": 0.0,
                "dtype": "<f4",
            },
        ),
        options=False,
        explicit_format=False,
    )


@regression
def keras3_h5_runtimeerror_formats_keras_h5_read_114() -> Case:
    """crashed (92x of 20,000): RuntimeError at formats/keras_h5/read.py:114 in _layout_of.

    Object specific failed (addr overflow, addr = 9064, size = 328, eoa = 6440)
    """
    return case(
        "keras3-h5",
        "keras3_dense",
        "model.weights.h5",
        "inspect",
        ops(["flip", 41, 5]),
        options=False,
        explicit_format=True,
    )


@regression
def keras2_h5_memoryerror_formats_keras_h5_read_219() -> Case:
    """blowup (56x of 20,000): MemoryError at formats/keras_h5/read.py:219 in load.

    Unable to allocate 2.00 PiB for an array with shape (1125899906842624,) and data type f...
    """
    return case(
        "keras2-h5",
        "keras2_lenet",
        "model.h5",
        "load",
        struct(
            "h5_huge_dataset",
            {
                "pick": 1087,
                "shape": [1125899906842624],
                "chunked": True,
                "fill": 0.0,
                "dtype": "<f2",
            },
        ),
        options=False,
        explicit_format=False,
    )


@regression
def caffe_h5_valueerror_formats_caffe_hdf5_73() -> Case:
    """crashed (54x of 20,000): ValueError at formats/caffe/hdf5.py:73 in <listcomp>.

    array is too big; `arr.size * arr.dtype.itemsize` is larger than the maximum possible s...
    """
    return case(
        "caffe-h5",
        "caffe_h5_synth",
        "model.caffemodel.h5",
        "load",
        struct(
            "h5_huge_dataset",
            {
                "pick": 9226,
                "shape": [2147483648, 2147483648],
                "chunked": True,
                "fill": float("nan"),
                "dtype": "<f4",
            },
        ),
        options=True,
        explicit_format=False,
    )


@regression
def keras3_h5_memoryerror_formats_keras_h5_read_219() -> Case:
    """blowup (51x of 20,000): MemoryError at formats/keras_h5/read.py:219 in load.

    Unable to allocate 16.0 TiB for an array with shape (1099511627776, 4) and data type fl...
    """
    return case(
        "keras3-h5",
        "keras3_lenet",
        "model.weights.h5",
        "load",
        struct(
            "h5_huge_dataset",
            {
                "pick": 2845,
                "shape": [1099511627776, 4],
                "chunked": True,
                "fill": 0.0,
                "dtype": "<f4",
            },
        ),
        options=False,
        explicit_format=False,
    )


@regression
def caffe_h5_keyerror_formats_keras_h5_read_96() -> Case:
    """crashed (42x of 20,000): KeyError at formats/keras_h5/read.py:96 in _layout_of.

    'Unable to synchronously open object (address of object past end of allocation)'
    """
    return case(
        "caffe-h5",
        "caffe_h5_synth",
        "model.caffemodel.h5",
        "load",
        ops(["flip", 69, 5]),
        options=False,
        explicit_format=False,
    )


@regression
def keras_archive_runtimeerror_formats_keras_h5_read_114() -> Case:
    """crashed (25x of 20,000): RuntimeError at formats/keras_h5/read.py:114 in _layout_of.

    Object specific failed (corrupt object header)
    """
    return case(
        "keras-archive",
        "keras_archive_synth",
        "model.keras",
        "inspect",
        ops(["flip", 9693, 3]),
        options=False,
        explicit_format=False,
    )


@regression
def keras2_h5_runtimeerror_formats_keras_h5_archive_272() -> Case:
    """crashed (24x of 20,000): RuntimeError at formats/keras_h5/archive.py:272 in read_name_list.

    Can't synchronously determine if attribute exists by name (mantissa and sign positions ...
    """
    return case(
        "keras2-h5",
        "keras2_dense",
        "model.h5",
        "load",
        ops(["flip", 13834, 5]),
        options=False,
        explicit_format=False,
    )


@regression
def caffe_h5_runtimeerror_formats_caffe_hdf5_46() -> Case:
    """crashed (19x of 20,000): RuntimeError at formats/caffe/hdf5.py:46 in is_caffe_snapshot.

    Unable to get group info (bad symbol table node signature)
    """
    return case(
        "caffe-h5",
        "corpus_cifar_h5",
        "model.caffemodel.h5",
        "convert",
        ops(["insert", 318743, "7f"]),
        options=True,
        explicit_format=True,
    )


@regression
def caffe_h5_keyerror_formats_caffe_hdf5_73() -> Case:
    """crashed (18x of 20,000): KeyError at formats/caffe/hdf5.py:73 in <listcomp>.

    'Unable to synchronously open object (bad version number for layout message)'
    """
    return case(
        "caffe-h5",
        "caffe_h5_synth",
        "model.caffemodel.h5",
        "inspect",
        ops(["write", 5534, "0000807f"]),
        options=False,
        explicit_format=True,
    )


@regression
def ckpt_v1_valueerror_codecs_ordered_code_157() -> Case:
    """crashed (17x of 20,000): ValueError at codecs/ordered_code.py:157 in encode_slice_key.

    invalid slice extent (-5, 3) for 'conv1/bias'
    """
    return case(
        "ckpt-v1",
        "ckpt_v1_synth",
        "model.ckpt",
        "load",
        struct(
            "ckpt_v1_lie",
            {
                "what": "meta_extent",
                "tensor": 44153,
                "dims": [-3],
                "extent": [-5, 3],
                "type": 0,
                "count": 1,
            },
        ),
        options=False,
        explicit_format=False,
    )


@regression
def keras3_h5_runtimeerror_formats_keras_h5_read_282() -> Case:
    """crashed (14x of 20,000): RuntimeError at formats/keras_h5/read.py:282 in <listcomp>.

    Special link traversal failed (too many links)
    """
    return case(
        "keras3-h5",
        "keras3_dense",
        "model.weights.h5",
        "load",
        struct("h5_odd_dataset", {"pick": 5769, "what": "soft_loop"}),
        options=False,
        explicit_format=True,
    )


@regression
def caffe_h5_oserror_formats_caffe_hdf5_73() -> Case:
    """crashed (13x of 20,000): OSError at formats/caffe/hdf5.py:73 in <listcomp>.

    Can't synchronously read data (unable to open external raw data file)
    """
    return case(
        "caffe-h5",
        "caffe_h5_synth",
        "model.caffemodel.h5",
        "load",
        struct("h5_odd_dataset", {"pick": 761, "what": "external_missing"}),
        options=True,
        explicit_format=True,
    )


@regression
def caffe_h5_runtimeerror_formats_caffe_hdf5_73() -> Case:
    """crashed (13x of 20,000): RuntimeError at formats/caffe/hdf5.py:73 in <listcomp>.

    Special link traversal failed (too many links)
    """
    return case(
        "caffe-h5",
        "caffe_h5_synth",
        "model.caffemodel.h5",
        "load",
        struct("h5_odd_dataset", {"pick": 2281, "what": "soft_loop"}),
        options=True,
        explicit_format=False,
    )


@regression
def caffe_h5_typeerror_formats_caffe_hdf5_73() -> Case:
    """crashed (12x of 20,000): TypeError at formats/caffe/hdf5.py:73 in <listcomp>.

    Accessing a group is done with bytes or str, not <class 'tuple'>
    """
    return case(
        "caffe-h5",
        "caffe_h5_synth",
        "model.caffemodel.h5",
        "load",
        struct("h5_odd_dataset", {"pick": 4084, "what": "group"}),
        options=False,
        explicit_format=True,
    )


@regression
def keras3_h5_overflowerror__util_files_270() -> Case:
    """crashed (10x of 20,000): OverflowError at _util/files.py:270 in reserve.

    Python int too large to convert to C long
    """
    return case(
        "keras3-h5",
        "keras3_lenet",
        "model.weights.h5",
        "convert",
        struct(
            "h5_huge_dataset",
            {
                "pick": 3713,
                "shape": [2147483648, 2147483648],
                "chunked": True,
                "fill": 1.0,
                "dtype": "<f2",
            },
        ),
        options=False,
        explicit_format=True,
    )


@regression
def ckpt_v1_overflowerror__util_files_270() -> Case:
    """crashed (9x of 20,000): OverflowError at _util/files.py:270 in reserve.

    Python int too large to convert to C long
    """
    return case(
        "ckpt-v1",
        "ckpt_v1_synth",
        "model.ckpt",
        "convert",
        struct(
            "ckpt_v1_lie",
            {
                "what": "meta_shape",
                "tensor": 33773,
                "dims": [2147483648, 2147483648],
                "extent": [0, 0],
                "type": 99,
                "count": 1,
            },
        ),
        options=False,
        explicit_format=True,
    )


@regression
def keras2_h5_keyerror_formats_keras_h5_read_96() -> Case:
    """crashed (8x of 20,000): KeyError at formats/keras_h5/read.py:96 in _layout_of.

    'Unable to synchronously open object (unable to determine object type)'
    """
    return case(
        "keras2-h5",
        "keras2_dense",
        "model.h5",
        "convert",
        ops(["flip", 112, 5]),
        options=False,
        explicit_format=True,
    )


@regression
def keras2_h5_runtimeerror_formats_keras_h5_read_339() -> Case:
    """crashed (7x of 20,000): RuntimeError at formats/keras_h5/read.py:339 in _read_legacy.

    Special link traversal failed (too many links)
    """
    return case(
        "keras2-h5",
        "keras2_dense",
        "model.h5",
        "convert",
        struct("h5_odd_dataset", {"pick": 402, "what": "soft_loop"}),
        options=False,
        explicit_format=True,
    )


@regression
def keras3_h5_keyerror_formats_keras_h5_read_96() -> Case:
    """crashed (7x of 20,000): KeyError at formats/keras_h5/read.py:96 in _layout_of.

    'Unable to synchronously open object (unable to determine object type)'
    """
    return case(
        "keras3-h5",
        "keras3_lenet",
        "model.weights.h5",
        "load",
        ops(["flip", 113, 3]),
        options=False,
        explicit_format=False,
    )


@regression
def keras_archive_notimplementederror_formats_keras_h5_archive_153() -> Case:
    """crashed (6x of 20,000): NotImplementedError at formats/keras_h5/archive.py:153,
    in open_source.

    That compression method is not supported
    """
    return case(
        "keras-archive",
        "keras_archive_synth",
        "model.keras",
        "load",
        struct(
            "zip_size_lie",
            {"member": "config.json", "field": "method", "value": 1, "where": "both"},
        ),
        options=False,
        explicit_format=True,
    )


@regression
def keras2_h5_runtimeerror_formats_keras_h5_read_184() -> Case:
    """crashed (6x of 20,000): RuntimeError at formats/keras_h5/read.py:184 in _set_aside.

    Object visitation failed (attempting I/O in temporary file space)
    """
    return case(
        "keras2-h5",
        "keras2_dense",
        "model.h5",
        "inspect",
        ops(["flip", 154, 0]),
        options=False,
        explicit_format=True,
    )


@regression
def keras_archive_memoryerror_formats_keras_h5_archive_117() -> Case:
    """blowup (6x of 20,000): MemoryError at formats/keras_h5/archive.py:117 in open.

    Unable to allocate output buffer.
    """
    return case(
        "keras-archive",
        "keras_archive_synth",
        "model.keras",
        "load",
        struct("zip_bomb", {}),
        options=False,
        explicit_format=False,
    )


@regression
def keras2_h5_oserror_formats_keras_h5_archive_273() -> Case:
    """crashed (5x of 20,000): OSError at formats/keras_h5/archive.py:273 in read_name_list.

    Can't synchronously read data (ran off end of input buffer while decoding)
    """
    return case(
        "keras2-h5",
        "keras2_dense",
        "model.h5",
        "load",
        ops(["write", 8597, "ffffff7f"]),
        options=False,
        explicit_format=False,
    )


@regression
def keras2_h5_overflowerror__util_files_270() -> Case:
    """crashed (3x of 20,000): OverflowError at _util/files.py:270 in reserve.

    Python int too large to convert to C long
    """
    return case(
        "keras2-h5",
        "keras2_dense",
        "model.h5",
        "convert",
        struct(
            "h5_huge_dataset",
            {
                "pick": 39593,
                "shape": [2147483648, 2147483648],
                "chunked": True,
                "fill": 0.0,
                "dtype": "<f8",
            },
        ),
        options=False,
        explicit_format=True,
    )


@regression
def ckpt_index_valueerror_formats_ckpt_bundle_219() -> Case:
    """crashed (3x of 20,000): ValueError at formats/ckpt/bundle.py:219 in _read_entry.

    maximum supported dimension for an ndarray is currently 64, found 70
    """
    return case(
        "ckpt-index",
        "ckpt_v2_synth",
        "x.ckpt.index",
        "load",
        struct(
            "ckpt_entry_lie",
            {
                "entry": 47634,
                "field": "shape",
                "value": [
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                ],
            },
        ),
        options=False,
        explicit_format=True,
    )


@regression
def keras3_h5_keyerror_formats_keras_h5_read_114() -> Case:
    """crashed (3x of 20,000): KeyError at formats/keras_h5/read.py:114 in _layout_of.

    'Unable to synchronously open object (mantissa starting position out of bounds)'
    """
    return case(
        "keras3-h5",
        "keras3_dense",
        "model.weights.h5",
        "convert",
        ops(["write", 9462, "3c299e"]),
        options=False,
        explicit_format=False,
    )


@regression
def keras_archive_notimplementederror_formats_keras_h5_archive_117() -> Case:
    """crashed (3x of 20,000): NotImplementedError at formats/keras_h5/archive.py:117 in open.

    That compression method is not supported
    """
    return case(
        "keras-archive",
        "keras_archive_synth",
        "model.keras",
        "load",
        struct(
            "zip_size_lie",
            {"member": "model.weights.h5", "field": "method", "value": 1, "where": "both"},
        ),
        options=False,
        explicit_format=False,
    )


@regression
def keras_archive_keyerror_formats_keras_h5_read_114() -> Case:
    """crashed (3x of 20,000): KeyError at formats/keras_h5/read.py:114 in _layout_of.

    'Unable to synchronously open object (dataspace dim 0 size of 48783492678418436 is grea...
    """
    return case(
        "keras-archive",
        "keras_archive_synth",
        "model.keras",
        "inspect",
        ops(["write", 14550, "5450ad"]),
        options=False,
        explicit_format=True,
    )


# --- accepted, but quietly wrong: these must be refused ------------------------------------
#
# Found by reading what the fuzzer's structure-aware HDF5 mutations were accepted as (not a
# crash, so not in the table's bad columns): the promise is "exact or refused".

QUIET: dict[str, Callable[[], Case]] = {}


def quiet(make: Callable[[], Case]) -> Callable[[], Case]:
    QUIET[make.__name__] = make
    return make


@quiet
def keras3_kernel_stored_in_another_local_file() -> Case:
    """A .weights.h5 whose first kernel uses HDF5 external storage naming /proc/self/cmdline:
    the bytes of that other file are converted as the kernel (8x4 float32 of garbage). Any
    readable local file could be exfiltrated into a converted model this way."""
    mutation = struct("h5_odd_dataset", {"pick": 0, "what": "external_self"})
    return case("keras3-h5", "keras3_dense", "model.weights.h5", "convert", mutation)


@quiet
def keras2_kernel_stored_in_another_local_file() -> Case:
    """The same external-storage dataset in a Keras 2 .h5 (its first dataset, a bias)."""
    mutation = struct("h5_odd_dataset", {"pick": 0, "what": "external_self"})
    return case("keras2-h5", "keras2_dense", "model.h5", "convert", mutation)


@quiet
def caffe_h5_blob_stored_in_another_local_file() -> Case:
    """The same in a Caffe HDF5 snapshot: data/conv1/0 is read from /proc/self/cmdline."""
    mutation = struct("h5_odd_dataset", {"pick": 0, "what": "external_self"})
    return case("caffe-h5", "caffe_h5_synth", "model.caffemodel.h5", "convert", mutation,
                options=True)  # fmt: skip


@quiet
def keras3_bias_slides_into_the_kernel_role() -> Case:
    """layers/dense/vars/0 replaced by an (empty) group: the reader takes vars/1, the bias
    (4,), as the layer's weights and converts 3 tensors instead of refusing."""
    mutation = struct("h5_odd_dataset", {"pick": 0, "what": "group"})
    return case("keras3-h5", "keras3_dense", "model.weights.h5", "convert", mutation)


@quiet
def keras3_scalar_kernel_for_a_dense_layer() -> Case:
    """A Dense kernel stored as a 0-d dataset (3.0) is converted as such."""
    mutation = struct("h5_odd_dataset", {"pick": 0, "what": "scalar"})
    return case("keras3-h5", "keras3_dense", "model.weights.h5", "convert", mutation)


@quiet
def keras3_complex_kernel() -> Case:
    """A complex64 Dense kernel is converted to a complex .npy (no Keras layer has one)."""
    mutation = struct("h5_odd_dataset", {"pick": 0, "what": "complex"})
    return case("keras3-h5", "keras3_dense", "model.weights.h5", "convert", mutation)
