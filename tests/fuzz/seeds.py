"""Valid seed files for the fuzzer, built deterministically into a folder.

Each seed is a folder ``<root>/<seed name>/`` holding one model's files, described by a
`Seed`: which file is the entry given to ``weightconv.load``, which reader options name
which sibling file, and which format it is. Generated seeds come from the synthetic Caffe
writer, our own writers (`weightconv.save`), h5py and zipfile; corpus seeds are copied from
``/work/shared/corpus`` (or ``$WEIGHTCONV_CORPUS``) when it is there.

`READERS` says, for each fuzzed reader, which seeds it mutates and which of their files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CORPUS = Path(os.environ.get("WEIGHTCONV_CORPUS", "/work/shared/corpus"))
SEED_VERSION = 1  # bump when a generated seed changes, so stale folders are rebuilt
BOMB_BYTES = 1536 << 20  # zeros appended to the bomb archive's model.weights.h5


@dataclass(frozen=True)
class Seed:
    name: str
    entry: str  # the path given to load(), relative to the seed folder
    format: str  # the registry name, for the runs that name it explicitly
    files: tuple[str, ...]  # every file of the seed (relative)
    options: dict[str, str] = field(default_factory=dict)  # reader option -> relative file
    corpus: bool = False


@dataclass(frozen=True)
class Reader:
    name: str
    action: str  # "load" (load+consume / inspect / convert), "sstable" or "snappy"
    targets: tuple[tuple[str, str], ...]  # (seed name, file to mutate)
    optional: tuple[str, ...] = ()  # reader options passed on half the inputs only
    struct: tuple[str, ...] = ()  # structure-aware mutations that apply (see mutate.STRUCT)


def _synthetic(width: float, encoding: str) -> Any:
    from weightconv.testing import synthetic

    return synthetic.build("lenet", width=width, seed=7, encoding=encoding)  # type: ignore[arg-type]


def _caffe(root: Path, name: str, encoding: str) -> Seed:
    folder = root / name
    net = _synthetic(0.1, encoding)
    net.write_caffemodel(folder / "model.caffemodel")
    (folder / "deploy.prototxt").write_text(net.deploy_prototxt)
    return Seed(
        name,
        "model.caffemodel",
        "caffemodel",
        ("model.caffemodel", "deploy.prototxt"),
        {"prototxt": "deploy.prototxt"},
    )


def _caffe_h5(root: Path) -> Seed:
    import h5py

    folder = root / "caffe_h5_synth"
    net = _synthetic(0.1, "v2")
    with h5py.File(folder / "model.caffemodel.h5", "w", track_order=True) as handle:
        data = handle.create_group("data", track_order=True)
        for layer, blobs in net.weights.items():
            group = data.create_group(layer, track_order=True)
            for i, blob in enumerate(blobs):
                group.create_dataset(str(i), data=blob, track_times=False)
    (folder / "deploy.prototxt").write_text(net.deploy_prototxt)
    return Seed(
        "caffe_h5_synth",
        "model.caffemodel.h5",
        "caffe-h5",
        ("model.caffemodel.h5", "deploy.prototxt"),
        {"prototxt": "deploy.prototxt"},
    )


def _lenet_weights(width: float) -> Any:
    import weightconv

    net = _synthetic(width, "v2")
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"wc-fuzz-seed-{os.getpid()}"
    scratch.mkdir(exist_ok=True)
    model = scratch / f"lenet{width}.caffemodel"
    proto = scratch / f"lenet{width}.prototxt"
    net.write_caffemodel(model)
    proto.write_text(net.deploy_prototxt)
    ws = weightconv.load(model, prototxt=proto)
    return ws, scratch


def _dense_dict() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(11)
    return {
        "dense": {
            "weights": rng.standard_normal((8, 4)).astype(np.float32),
            "biases": rng.standard_normal(4).astype(np.float32),
        },
        "dense_1": {
            "weights": rng.standard_normal((4, 3)).astype(np.float32),
            "biases": rng.standard_normal(3).astype(np.float32),
        },
    }


KERAS_CONFIG = {
    "module": "keras",
    "class_name": "Sequential",
    "config": {
        "name": "sequential",
        "trainable": True,
        "layers": [
            {
                "module": "keras.layers",
                "class_name": "InputLayer",
                "config": {"batch_shape": [None, 8], "dtype": "float32", "name": "input_layer"},
            },
            {
                "module": "keras.layers",
                "class_name": "Dense",
                "config": {"name": "dense", "units": 4, "activation": "relu", "use_bias": True},
            },
            {
                "module": "keras.layers",
                "class_name": "Dense",
                "config": {"name": "dense_1", "units": 3, "activation": "linear", "use_bias": True},
            },
        ],
    },
    "build_config": {"input_shape": [None, 8]},
}
KERAS_METADATA = {"keras_version": "3.5.0", "date_saved": "2025-01-01@00:00:00"}
_ZIP_DATE = (2025, 1, 1, 0, 0, 0)


def write_archive(path: Path, members: dict[str, bytes], deflate: bool = False) -> None:
    """A zip with fixed timestamps; `deflate` compresses every member."""
    kind = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, _ZIP_DATE)
            info.compress_type = kind
            archive.writestr(info, data)


def _keras_archive(root: Path, weights_h5: Path) -> Seed:
    folder = root / "keras_archive_synth"
    write_archive(
        folder / "model.keras",
        {
            "metadata.json": json.dumps(KERAS_METADATA).encode(),
            "config.json": json.dumps(KERAS_CONFIG).encode(),
            "model.weights.h5": weights_h5.read_bytes(),
        },
    )
    return Seed("keras_archive_synth", "model.keras", "keras-h5", ("model.keras",))


def _bomb(root: Path, weights_h5: Path) -> None:
    """A .keras whose model.weights.h5 is a valid file plus 1.5 GiB of deflated zeros."""
    path = root / "_extra" / "bomb.keras"
    path.parent.mkdir(exist_ok=True)
    chunk = bytes(16 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr(zipfile.ZipInfo("metadata.json", _ZIP_DATE), json.dumps(KERAS_METADATA))
        zf.writestr(zipfile.ZipInfo("config.json", _ZIP_DATE), json.dumps(KERAS_CONFIG))
        info = zipfile.ZipInfo("model.weights.h5", _ZIP_DATE)
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as member:
            member.write(weights_h5.read_bytes())
            for _ in range(BOMB_BYTES // len(chunk)):
                member.write(chunk)


def _v1_checkpoint(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A TF V1 (tensor_slice) checkpoint: the meta under the empty key, one slice each."""
    from weightconv._proto import tf_checkpoint_pb2 as pb
    from weightconv.codecs import ordered_code, sstable

    meta = pb.SavedTensorSlices()
    slices: dict[bytes, bytes] = {}
    for name, array in tensors.items():
        entry = meta.meta.tensor.add()
        entry.name = name
        entry.type = pb.DT_FLOAT
        for dim in array.shape:
            entry.shape.dim.add().size = dim
        entry.slice.add().extent.extend([pb.TensorSliceProto.Extent() for _ in array.shape])
        record = pb.SavedTensorSlices()
        record.data.name = name
        record.data.slice.extent.extend([pb.TensorSliceProto.Extent() for _ in array.shape])
        record.data.data.dtype = pb.DT_FLOAT
        for dim in array.shape:
            record.data.data.tensor_shape.dim.add().size = dim
        record.data.data.float_val.extend(array.astype(np.float32).ravel().tolist())
        key = ordered_code.encode_slice_key(name, [(0, -1)] * array.ndim)
        slices[key] = record.SerializeToString()
    meta.meta.versions.producer = 1
    with open(path, "wb") as handle:
        table = sstable.TableWriter(handle)
        table.add(b"", meta.SerializeToString())
        for key in sorted(slices):
            table.add(key, slices[key])
        table.finish()


def _canonical(weights: Any) -> dict[str, np.ndarray]:
    from weightconv.model.canonical import canonical_layers

    return {
        f"{layer.name}/{'kernel' if role == 'weights' else 'bias'}": np.asarray(tensor)
        for layer in canonical_layers(weights)
        for role, tensor in layer.tensors.items()
    }


def _v2_checkpoint(prefix: Path, tensors: dict[str, np.ndarray]) -> None:
    """A TF V2 (tensor bundle) checkpoint written by hand: one shard, float32 tensors."""
    from weightconv._proto import tf_checkpoint_pb2 as pb
    from weightconv.codecs import crc32c, sstable

    header = pb.BundleHeaderProto(num_shards=1)
    header.version.producer = 1
    entries: dict[bytes, bytes] = {b"": header.SerializeToString()}
    offset = 0
    with open(f"{prefix}.data-00000-of-00001", "wb") as data:
        for name, array in tensors.items():
            raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
            entry = pb.BundleEntryProto(dtype=pb.DT_FLOAT, offset=offset, size=len(raw))
            entry.crc32c = crc32c.mask(crc32c.value(raw))
            for dim in array.shape:
                entry.shape.dim.add().size = dim
            entries[name.encode()] = entry.SerializeToString()
            data.write(raw)
            offset += len(raw)
    with open(f"{prefix}.index", "wb") as handle:
        table = sstable.TableWriter(handle)
        for key in sorted(entries):
            table.add(key, entries[key])
        table.finish()


def snappy_compress(data: bytes) -> bytes:
    """A simple valid raw-Snappy encoder (greedy 4-byte matches), for snappy seeds only."""
    out = bytearray()
    n = len(data)
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            break
    table: dict[bytes, int] = {}
    pos = literal_start = 0

    def literal(end: int) -> None:
        chunk = data[literal_start:end]
        while chunk:
            piece, chunk = chunk[:60], chunk[60:]
            out.append((len(piece) - 1) << 2)
            out.extend(piece)

    while pos + 4 <= len(data):
        key = data[pos : pos + 4]
        previous = table.get(key)
        table[key] = pos
        if previous is not None and pos - previous < 65536:
            length = 4
            while (
                pos + length < len(data)
                and length < 64
                and data[previous + length] == data[pos + length]
            ):
                length += 1
            literal(pos)
            out.append(((length - 1) << 2) | 2)
            out.extend(struct.pack("<H", pos - previous))
            pos += length
            literal_start = pos
        else:
            pos += 1
    literal_start_end = len(data)
    literal(literal_start_end)
    return bytes(out)


def _copy_corpus(root: Path, name: str, sources: dict[str, str]) -> bool:
    if not all((CORPUS / s).is_file() for s in sources.values()):
        return False
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for target, source in sources.items():
        shutil.copyfile(CORPUS / source, folder / target)
    return True


def _corpus_seeds(root: Path) -> list[Seed]:
    seeds: list[Seed] = []
    caffe = {
        "corpus_cifar_v1": (
            "cifar10_v1/cifar10_quick_iter_5000.caffemodel",
            "cifar10_v1/cifar10_quick.prototxt",
        ),
        "corpus_cifar_v2": (
            "cifar10_v2/cifar10_quick_iter_4000.caffemodel",
            "cifar10_v2/cifar10_quick.prototxt",
        ),
        "corpus_mtcnn": ("mtcnn/det1.caffemodel", "mtcnn/det1.prototxt"),
    }
    for name, (model, proto) in caffe.items():
        files = {"model.caffemodel": f"caffe/{model}", "deploy.prototxt": f"caffe/{proto}"}
        if _copy_corpus(root, name, files):
            seeds.append(
                Seed(
                    name,
                    "model.caffemodel",
                    "caffemodel",
                    tuple(files),
                    {"prototxt": "deploy.prototxt"},
                    True,
                )
            )
    files = {
        "model.caffemodel.h5": "caffe/cifar10_v2/cifar10_quick_iter_5000.caffemodel.h5",
        "deploy.prototxt": "caffe/cifar10_v2/cifar10_quick.prototxt",
    }
    if _copy_corpus(root, "corpus_cifar_h5", files):
        seeds.append(
            Seed(
                "corpus_cifar_h5",
                "model.caffemodel.h5",
                "caffe-h5",
                tuple(files),
                {"prototxt": "deploy.prototxt"},
                True,
            )
        )
    if _copy_corpus(root, "corpus_det1_npy", {"det1.npy": "npy/mtcnn/det1.npy"}):
        seeds.append(Seed("corpus_det1_npy", "det1.npy", "npy", ("det1.npy",), corpus=True))
    for name, folder in (
        ("corpus_tf_half", "tf/saved_model_half_plus_two_cpu/variables"),
        ("corpus_tf2_half", "tf/saved_model_half_plus_two_tf2_cpu/variables"),
        ("corpus_tf_slim", "tf/ultralight_slim"),
    ):
        files = {
            "variables.index": f"{folder}/variables.index",
            "variables.data-00000-of-00001": f"{folder}/variables.data-00000-of-00001",
        }
        if _copy_corpus(root, name, files):
            seeds.append(Seed(name, "variables", "ckpt", tuple(files), corpus=True))
    files = {"export": "tf/bad_half_plus_two_v1/export"}
    if _copy_corpus(root, "corpus_tf_v1", files):
        seeds.append(Seed("corpus_tf_v1", "export", "ckpt", ("export",), corpus=True))
    if _copy_corpus(root, "corpus_digits", {"digits.weights.h5": "keras/digits.weights.h5"}):
        seeds.append(
            Seed(
                "corpus_digits",
                "digits.weights.h5",
                "keras-h5",
                ("digits.weights.h5",),
                corpus=True,
            )
        )
    return seeds


def _snappy_blocks(root: Path, seeds: dict[str, Seed]) -> Seed:
    """Raw Snappy blocks: the corpus indexes' compressed blocks, and some of our own."""
    from weightconv.codecs import sstable

    folder = root / "snappy_blocks"
    folder.mkdir(exist_ok=True)
    blocks: list[bytes] = []
    for seed in seeds.values():
        for name in seed.files:
            if not name.endswith(".index"):
                continue
            with sstable.TableReader(root / seed.name / name) as table:
                buffer = table.buffer
                for handle in [*table.data_blocks()]:
                    kind = buffer[handle.offset + handle.size]
                    if kind == sstable.SNAPPY_COMPRESSION:
                        blocks.append(bytes(buffer[handle.offset : handle.offset + handle.size]))
    text = (root / "caffe_v2_synth" / "deploy.prototxt").read_bytes()
    index = (root / "ckpt_v2_synth" / "x.ckpt.index").read_bytes()
    blocks += [snappy_compress(text), snappy_compress(index), snappy_compress(bytes(300) + text)]
    names = []
    for i, block in enumerate(blocks):
        names.append(f"block{i}.snappy")
        (folder / names[-1]).write_bytes(block)
    return Seed("snappy_blocks", names[0], "snappy", tuple(names))


def build(root: Path) -> dict[str, Seed]:
    """Build every seed into `root` (reused when already built by this seed version)."""
    root = Path(root)
    stamp = root / "seeds.json"
    corpus_here = CORPUS.is_dir()
    if stamp.is_file():
        saved = json.loads(stamp.read_text())
        if saved.get("version") == SEED_VERSION and saved.get("corpus") == corpus_here:
            return {s["name"]: Seed(**{**s, "files": tuple(s["files"])}) for s in saved["seeds"]}
    final = root
    root = final.with_name(f"{final.name}.building-{os.getpid()}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    built = _build_into(root, corpus_here)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(root, final)
    return built


def _build_into(root: Path, corpus_here: bool) -> dict[str, Seed]:
    import weightconv

    names = [
        "caffe_v1_synth",
        "caffe_v2_synth",
        "caffe_h5_synth",
        "npy_big",
        "npy_big_npsave",
        "npy_small",
        "npy_dense",
        "ckpt_v2_synth",
        "ckpt_v1_synth",
        "keras3_lenet",
        "keras3_dense",
        "keras2_lenet",
        "keras2_dense",
        "keras_archive_synth",
    ]
    for name in names:
        (root / name).mkdir(exist_ok=True)
    seeds = [_caffe(root, "caffe_v1_synth", "v1"), _caffe(root, "caffe_v2_synth", "v2")]
    seeds.append(_caffe_h5(root))
    big, scratch = _lenet_weights(0.25)
    small, _ = _lenet_weights(0.1)
    weightconv.save(big, root / "npy_big" / "model.npy")
    seeds.append(Seed("npy_big", "model.npy", "npy", ("model.npy",)))
    rng = np.random.default_rng(5)
    big_dict = {
        "fc": {
            "weights": rng.standard_normal((128, 160)).astype(np.float32),
            "biases": np.ones(160, np.float32),
        },
        "conv": {"weights": rng.standard_normal((3, 3, 16, 128)).astype(np.float32)},
    }
    np.save(root / "npy_big_npsave" / "model.npy", big_dict, allow_pickle=True)  # type: ignore[arg-type]
    seeds.append(Seed("npy_big_npsave", "model.npy", "npy", ("model.npy",)))
    weightconv.save(small, root / "npy_small" / "model.npy")
    seeds.append(Seed("npy_small", "model.npy", "npy", ("model.npy",)))
    np.save(root / "npy_dense" / "model.npy", _dense_dict(), allow_pickle=True)  # type: ignore[arg-type]
    seeds.append(Seed("npy_dense", "model.npy", "npy", ("model.npy",)))
    _v2_checkpoint(root / "ckpt_v2_synth" / "x.ckpt", _canonical(small))
    seeds.append(
        Seed("ckpt_v2_synth", "x.ckpt", "ckpt", ("x.ckpt.index", "x.ckpt.data-00000-of-00001"))
    )
    _v1_checkpoint(root / "ckpt_v1_synth" / "model.ckpt", _canonical(small))
    seeds.append(Seed("ckpt_v1_synth", "model.ckpt", "ckpt", ("model.ckpt",)))
    weightconv.save(small, root / "keras3_lenet" / "model.weights.h5")
    seeds.append(Seed("keras3_lenet", "model.weights.h5", "keras-h5", ("model.weights.h5",)))
    weightconv.save(small, root / "keras2_lenet" / "model.h5", keras_layout="keras2")
    seeds.append(Seed("keras2_lenet", "model.h5", "keras-h5", ("model.h5",)))
    np.save(scratch / "dense.npy", _dense_dict(), allow_pickle=True)  # type: ignore[arg-type]
    dense = weightconv.load(scratch / "dense.npy")
    weightconv.save(dense, root / "keras3_dense" / "model.weights.h5")
    seeds.append(Seed("keras3_dense", "model.weights.h5", "keras-h5", ("model.weights.h5",)))
    weightconv.save(dense, root / "keras2_dense" / "model.h5", keras_layout="keras2")
    seeds.append(Seed("keras2_dense", "model.h5", "keras-h5", ("model.h5",)))
    seeds.append(_keras_archive(root, root / "keras3_dense" / "model.weights.h5"))
    _bomb(root, root / "keras3_dense" / "model.weights.h5")
    shutil.rmtree(scratch, ignore_errors=True)
    seeds += _corpus_seeds(root)
    by_name = {s.name: s for s in seeds}
    by_name["snappy_blocks"] = _snappy_blocks(root, by_name)
    (root / "seeds.json").write_text(
        json.dumps(
            {
                "version": SEED_VERSION,
                "corpus": corpus_here,
                "seeds": [asdict(s) for s in by_name.values()],
            },
            indent=1,
        )
    )
    return by_name


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _files(seeds: dict[str, Seed], names: list[str], suffix: str) -> tuple[tuple[str, str], ...]:
    out = []
    for name in names:
        seed = seeds.get(name)
        if seed is None:
            continue
        out += [(name, f) for f in seed.files if f.endswith(suffix)]
    return tuple(out)


def readers(seeds: dict[str, Seed]) -> dict[str, Reader]:
    """Every fuzzed reader, with the (seed, file) pairs it mutates."""
    caffe_v1 = ["caffe_v1_synth", "corpus_cifar_v1"]
    caffe_v2 = ["caffe_v2_synth", "corpus_cifar_v2", "corpus_mtcnn"]
    h5 = ["caffe_h5_synth", "corpus_cifar_h5"]
    ckpt_v2 = ["ckpt_v2_synth", "corpus_tf_half", "corpus_tf2_half", "corpus_tf_slim"]
    ckpt_v1 = ["ckpt_v1_synth", "corpus_tf_v1"]
    keras3 = ["keras3_lenet", "keras3_dense", "corpus_digits"]
    keras2 = ["keras2_lenet", "keras2_dense"]
    table = [
        Reader(
            "caffemodel-v1",
            "load",
            _files(seeds, caffe_v1, ".caffemodel"),
            ("prototxt",),
            ("caffe_huge_dims", "caffe_lying_packed", "caffe_v1_huge_nchw"),
        ),
        Reader(
            "caffemodel-v2",
            "load",
            _files(seeds, caffe_v2, ".caffemodel"),
            ("prototxt",),
            ("caffe_huge_dims", "caffe_lying_packed"),
        ),
        Reader(
            "prototxt",
            "load",
            _files(seeds, caffe_v1 + caffe_v2, ".prototxt"),
            (),
            ("text_numbers",),
        ),
        Reader(
            "caffe-h5",
            "load",
            _files(seeds, h5, ".caffemodel.h5"),
            ("prototxt",),
            ("h5_huge_dataset", "h5_odd_dataset"),
        ),
        Reader(
            "npy-mapped",
            "load",
            _files(seeds, ["npy_big", "npy_big_npsave"], ".npy"),
            (),
            ("npy_header_garbage", "npy_pickle_lie"),
        ),
        Reader(
            "npy-small",
            "load",
            _files(seeds, ["npy_small", "npy_dense", "corpus_det1_npy"], ".npy"),
            (),
            ("npy_header_garbage", "npy_pickle_lie"),
        ),
        Reader(
            "ckpt-index",
            "load",
            _files(seeds, ckpt_v2, ".index"),
            (),
            ("ckpt_entry_lie", "ckpt_header_lie"),
        ),
        Reader("ckpt-data", "load", _files(seeds, ckpt_v2, "-of-00001"), ()),
        Reader("ckpt-v1", "load", _files(seeds, ckpt_v1, ""), (), ("ckpt_v1_lie",)),
        Reader("sstable", "sstable", _files(seeds, ckpt_v2 + ckpt_v1, ""), (), ("ckpt_entry_lie",)),
        Reader(
            "snappy", "snappy", _files(seeds, ["snappy_blocks"], ".snappy"), (), ("snappy_lie",)
        ),
        Reader(
            "keras3-h5",
            "load",
            _files(seeds, keras3, ".h5"),
            (),
            ("h5_huge_dataset", "h5_odd_dataset", "h5_attr_garbage"),
        ),
        Reader(
            "keras2-h5",
            "load",
            _files(seeds, keras2, ".h5"),
            (),
            ("h5_huge_dataset", "h5_odd_dataset", "h5_attr_garbage"),
        ),
        Reader(
            "keras-archive",
            "load",
            _files(seeds, ["keras_archive_synth"], ".keras"),
            (),
            (
                "zip_member_config",
                "zip_member_h5",
                "zip_size_lie",
                "zip_bomb",
                "text_numbers_config",
            ),
        ),
    ]
    # sstable and ckpt-v1 mutate table files only: index files and single-file V1 checkpoints
    tables = {"sstable": (".index",), "ckpt-v1": ()}
    table = [
        t
        if t.name not in tables
        else Reader(
            t.name,
            t.action,
            tuple(
                (s, f)
                for s, f in t.targets
                if f.endswith(tables[t.name] or ("\0",)) or seeds[s].entry == f
            ),
            (),
            t.struct,
        )
        for t in table
    ]
    return {t.name: t for t in table if t.targets}
