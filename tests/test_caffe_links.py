"""A fully-connected layer's input is never guessed: .caffemodel files whose layers carry no
bottom/top links (as some converters and generators write them), and conversions that
fail half-way through a mapped output.

Oracles: the blobs and links as protobuf's own parser (`caffe_pb2`) decodes the file, the
row order of a Caffe InnerProduct on a C, H, W blob written out here, and the conversion
of the same weights from the file with its links and its deploy prototxt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import weightconv
from weightconv import cli
from weightconv._proto import caffe_pb2
from weightconv.mapping import Mapping
from weightconv.model.canonical import canonical_layers
from weightconv.testing import synthetic

from .conftest import corpus_file

SMALL_ALEXNET = {"width": 0.125, "num_classes": 7}
#: (net, build options, its first fc layer, the C,H,W of that layer's input, a later fc).
NETS = [
    ("alexnet", SMALL_ALEXNET, "fc6", (32, 6, 6), "fc7"),
    ("lenet", {}, "ip1", (50, 4, 4), "ip2"),
]
NET_IDS = [name for name, *_ in NETS]


def blobs_of(path: Path) -> dict[str, list[np.ndarray]]:
    """Each layer's blobs as protobuf decodes them, legacy 4-D shapes squeezed to 2-D/1-D."""
    net = caffe_pb2.NetParameter.FromString(path.read_bytes())
    out = {}
    for layer in list(net.layer) or list(net.layers):
        blobs = []
        for blob in layer.blobs:
            values = np.array(blob.data, dtype=np.float32)
            if blob.HasField("shape"):
                shape = tuple(blob.shape.dim)
            else:
                dims = (blob.num, blob.channels, blob.height, blob.width)
                shape = tuple(d for d in dims if d != 1) if dims[:2] == (1, 1) else dims
            blobs.append(values.reshape(shape))
        if blobs:
            out[layer.name] = blobs
    return out


def chw_rows_to_hwc(weights: np.ndarray, chw: tuple[int, int, int]) -> np.ndarray:
    """Caffe (out, C*H*W) with inputs in C, H, W order -> (H*W*C, out) in H, W, C order."""
    c, h, w = chw
    return weights.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)


def fc_as_conv(first_fc: str) -> Mapping:
    return Mapping(fc_as_conv=True, fc_pattern=first_fc.rstrip("0123456789") + "*")


def write_pair(tmp_path: Path, name: str, options: dict, encoding: str) -> tuple[Path, Path, Path]:
    """The same seeded net with links, without links, and its deploy prototxt."""
    net = synthetic.build(name, seed=4, encoding=encoding, **options)
    linked, unlinked = tmp_path / "linked.caffemodel", tmp_path / "unlinked.caffemodel"
    net.write_caffemodel(linked)
    net.write_caffemodel(unlinked, links=False)
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(net.deploy_prototxt)
    return linked, unlinked, prototxt


@pytest.mark.parametrize("encoding", synthetic.ENCODINGS)
def test_writer_without_links_writes_the_same_layers_and_blobs(encoding):
    net = synthetic.build("alexnet", seed=2, encoding=encoding, **SMALL_ALEXNET)
    data = net.caffemodel_bytes(links=False)
    assert len(data) == net.caffemodel_size(links=False)
    bare = caffe_pb2.NetParameter.FromString(data)
    full = caffe_pb2.NetParameter.FromString(net.caffemodel_bytes())
    bare_layers = list(bare.layer) or list(bare.layers)
    full_layers = list(full.layer) or list(full.layers)
    assert all(not layer.bottom and not layer.top for layer in bare_layers)
    assert any(layer.bottom for layer in full_layers)
    for a, b in zip(bare_layers, full_layers, strict=True):
        b.ClearField("bottom")
        b.ClearField("top")
        assert a == b
    assert list(bare.input_dim) == list(full.input_dim)


@pytest.mark.parametrize("encoding", synthetic.ENCODINGS)
@pytest.mark.parametrize(("name", "options", "first_fc", "chw", "later_fc"), NETS, ids=NET_IDS)
def test_without_links_the_first_fc_is_refused_not_guessed(
    tmp_path, name, options, first_fc, chw, later_fc, encoding
):
    _, unlinked, _ = write_pair(tmp_path, name, options, encoding)
    ws = weightconv.load(unlinked)
    assert ws[first_fc].input_shape is None and ws[first_fc].params["follows_spatial"]
    assert ws[later_fc].params["follows_spatial"] is False  # fed by a dense layer, sizes agree
    with pytest.raises(weightconv.ShapeError) as caught:
        list(canonical_layers(ws))
    message = str(caught.value)
    assert "\n" not in message and first_fc in message
    assert "prototxt=" in message and "input_shape=" in message
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(weightconv.ShapeError, match=first_fc):
        weightconv.convert(unlinked, out / "w.npy")
    with pytest.raises(
        weightconv.ShapeError, match=rf"{first_fc}/weights.*prototxt=.*input_shape="
    ):
        weightconv.convert(unlinked, out / "c.npy", mapping=fc_as_conv(first_fc))
    assert not list(out.iterdir())


@pytest.mark.parametrize("encoding", synthetic.ENCODINGS)
@pytest.mark.parametrize(("name", "options", "first_fc", "chw", "later_fc"), NETS, ids=NET_IDS)
def test_without_links_the_prototxt_or_input_shape_gives_the_same_bytes(
    tmp_path, name, options, first_fc, chw, later_fc, encoding
):
    linked, unlinked, prototxt = write_pair(tmp_path, name, options, encoding)
    input_shape = synthetic.net_spec(name, **options).input_shape[1:]
    reference = tmp_path / "reference.npy"
    weightconv.convert(linked, reference, prototxt=prototxt)
    for label, given in [
        ("prototxt", {"prototxt": prototxt}),
        ("shape", {"input_shape": input_shape}),
    ]:
        out = tmp_path / f"{label}.npy"
        weightconv.convert(unlinked, out, **given)
        assert out.read_bytes() == reference.read_bytes(), label
    blob = blobs_of(unlinked)[first_fc][0]
    converted = np.load(tmp_path / "shape.npy", allow_pickle=True).item()
    np.testing.assert_array_equal(converted[first_fc][0], chw_rows_to_hwc(blob, chw))
    np.testing.assert_array_equal(converted[later_fc][0], blobs_of(unlinked)[later_fc][0].T)
    fc_conv = {}
    for label, path, given in [
        ("linked", linked, {"prototxt": prototxt}),
        ("unlinked", unlinked, {"input_shape": input_shape}),
    ]:
        fc_conv[label] = tmp_path / f"{label}_fc_conv.npy"
        weightconv.convert(path, fc_conv[label], mapping=fc_as_conv(first_fc), **given)
    assert fc_conv["linked"].read_bytes() == fc_conv["unlinked"].read_bytes()


@pytest.mark.parametrize(("name", "options", "first_fc", "chw", "later_fc"), NETS, ids=NET_IDS)
def test_without_links_a_dense_layer_after_a_dense_layer_converts(
    tmp_path, name, options, first_fc, chw, later_fc
):
    _, unlinked, _ = write_pair(tmp_path, name, options, "v2")
    out = tmp_path / "rest.npy"
    weightconv.convert(unlinked, out, skip=[first_fc])
    converted = np.load(out, allow_pickle=True).item()
    np.testing.assert_array_equal(converted[later_fc][0], blobs_of(unlinked)[later_fc][0].T)


def test_without_links_the_cli_exits_2_with_one_line(tmp_path, capsys):
    _, unlinked, _ = write_pair(tmp_path, "alexnet", SMALL_ALEXNET, "v2")
    for extra in ([], ["--fc-as-conv"]):
        out = tmp_path / "cli.npy"
        assert cli.main(["caffe2npy", str(unlinked), "-o", str(out), *extra]) == 2
        err = capsys.readouterr().err
        (line,) = [line for line in err.splitlines() if line.startswith("weightconv: error")]
        assert "fc6" in line and "--prototxt" in line and "--input-shape" in line
        assert "internal error" not in err and "Traceback" not in err
        assert not out.exists()


def test_a_file_missing_its_pooling_layers_is_refused_with_input_shape(tmp_path):
    """Weights-only files leave out every layer without blobs: read as a chain they imply
    the wrong fc6 input, which the blob's size exposes."""
    _, unlinked, _ = write_pair(tmp_path, "alexnet", SMALL_ALEXNET, "v2")
    net = caffe_pb2.NetParameter.FromString(unlinked.read_bytes())
    kept = [layer for layer in net.layer if layer.blobs or layer.type == "Input"]
    net.ClearField("layer")
    net.layer.extend(kept)
    weights_only = tmp_path / "weights_only.caffemodel"
    weights_only.write_bytes(net.SerializeToString())
    with pytest.raises(weightconv.ShapeError, match=r"'fc6'.*chain in file order.*1152"):
        weightconv.load(weights_only, input_shape=(3, 227, 227))
    with pytest.raises(weightconv.ShapeError, match="fc6"):
        weightconv.convert(weights_only, tmp_path / "w.npy")


def test_links_outrank_file_order(tmp_path):
    """`b` follows `a` in the file and takes as many inputs as `a` has outputs, but its
    bottom link says it reads the convolution's 2x2x2 output: it is not known flat."""
    net = caffe_pb2.NetParameter(name="branches")
    net.layer.add(name="data", type="Data", top=["data"])
    conv = net.layer.add(name="conv", type="Convolution", bottom=["data"], top=["conv"])
    conv.convolution_param.num_output = 2
    conv.convolution_param.kernel_size.append(1)
    conv.blobs.add().shape.dim.extend([2, 3, 1, 1])
    conv.blobs[0].data.extend([0.5] * 6)
    for name in ("a", "b"):
        ip = net.layer.add(name=name, type="InnerProduct", bottom=["conv"], top=[name])
        ip.inner_product_param.num_output = 8
        ip.blobs.add().shape.dim.extend([8, 8])
        ip.blobs[0].data.extend(np.arange(64, dtype=np.float32).tolist())
    path = tmp_path / "branches.caffemodel"
    path.write_bytes(net.SerializeToString())
    ws = weightconv.load(path)
    assert ws["a"].params["follows_spatial"] and ws["b"].params["follows_spatial"]
    canonical = {
        layer.name: layer
        for layer in canonical_layers(weightconv.load(path, input_shape=(3, 2, 2)))
    }
    expected = chw_rows_to_hwc(np.arange(64, dtype=np.float32).reshape(8, 8), (2, 2, 2))
    np.testing.assert_array_equal(canonical["b"].tensors["weights"], expected)


# --- real files -----------------------------------------------------------------------------


@pytest.mark.corpus
def test_lenet_without_prototxt_is_a_shape_error_not_a_buffer_error(tmp_path, capsys):
    model = corpus_file("caffe/lenet/lenet_iter_10000.caffemodel")
    out = tmp_path / "x.npy"
    with pytest.raises(weightconv.ShapeError, match=r"'ip1'.*prototxt=.*input_shape="):
        weightconv.convert(model, out)
    assert not list(tmp_path.iterdir())
    assert cli.main(["caffe2npy", str(model), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ip1" in err and "--prototxt" in err
    assert "BufferError" not in err and "internal error" not in err
    assert not list(tmp_path.iterdir())


@pytest.mark.corpus
def test_real_lenet_stripped_of_its_links(tmp_path):
    """BVLC's trained LeNet with every bottom/top removed by protobuf: ip1 (after pool2) is
    refused without a prototxt or input shape, ip2 (after ip1) is known flat."""
    model = corpus_file("caffe/lenet/lenet_iter_10000.caffemodel")
    prototxt = corpus_file("caffe/lenet/lenet.prototxt")
    net = caffe_pb2.NetParameter.FromString(model.read_bytes())
    for layer in net.layer:
        layer.ClearField("bottom")
        layer.ClearField("top")
    stripped = tmp_path / "stripped.caffemodel"
    stripped.write_bytes(net.SerializeToString())
    with pytest.raises(weightconv.ShapeError, match=r"'ip1'.*prototxt="):
        weightconv.convert(stripped, tmp_path / "no.npy")
    reference = tmp_path / "reference.npy"
    weightconv.convert(model, reference, prototxt=prototxt)
    for label, given in [
        ("prototxt", {"prototxt": prototxt}),
        ("shape", {"input_shape": (1, 28, 28)}),
    ]:
        out = tmp_path / f"{label}.npy"
        weightconv.convert(stripped, out, **given)
        assert out.read_bytes() == reference.read_bytes(), label
    converted = np.load(tmp_path / "shape.npy", allow_pickle=True).item()
    blobs = blobs_of(model)
    np.testing.assert_array_equal(converted["ip1"][0], chw_rows_to_hwc(blobs["ip1"][0], (50, 4, 4)))
    weightconv.convert(stripped, tmp_path / "rest.npy", skip=["ip1"])
    rest = np.load(tmp_path / "rest.npy", allow_pickle=True).item()
    np.testing.assert_array_equal(rest["ip2"][0], blobs["ip2"][0].T)


def test_an_inner_product_after_a_flatten_gets_the_row_reorder(tmp_path):
    """Caffe's Flatten keeps C,H,W order, so fc after `Flatten(pool1)` needs the same
    C,H,W -> H,W,C reorder as fc reading pool1 itself. Expected rows by index arithmetic on
    the blob protobuf decodes."""
    from google.protobuf import text_format

    from weightconv._proto import caffe_pb2

    rng = np.random.default_rng(4)
    net = caffe_pb2.NetParameter(name="flat")
    data = net.layer.add(name="data", type="Input", top=["data"])
    data.input_param.shape.add().dim.extend([1, 3, 4, 4])
    conv = net.layer.add(name="conv1", type="Convolution", bottom=["data"], top=["conv1"])
    conv.convolution_param.num_output = 2
    conv.convolution_param.kernel_size.append(1)
    net.layer.add(name="relu1", type="ReLU", bottom=["conv1"], top=["conv1"])
    net.layer.add(name="flat", type="Flatten", bottom=["conv1"], top=["flat"])
    fc = net.layer.add(name="fc1", type="InnerProduct", bottom=["flat"], top=["fc1"])
    fc.inner_product_param.num_output = 3
    deploy = text_format.MessageToString(net)
    for layer, shape in [(conv, (2, 3, 1, 1)), (fc, (3, 2 * 4 * 4))]:
        for blob_shape in (shape, shape[:1]):
            blob = layer.blobs.add()
            blob.shape.dim.extend(blob_shape)
            blob.data.extend(rng.standard_normal(int(np.prod(blob_shape))).astype(np.float32))
    model = tmp_path / "flat.caffemodel"
    model.write_bytes(net.SerializeToString())
    (tmp_path / "deploy.prototxt").write_text(deploy)
    weightconv.convert(model, tmp_path / "flat.npy", prototxt=tmp_path / "deploy.prototxt")
    written = np.load(tmp_path / "flat.npy", allow_pickle=True).item()["fc1"][0]
    caffe = np.array(
        caffe_pb2.NetParameter.FromString(model.read_bytes()).layer[4].blobs[0].data,
        dtype=np.float32,
    ).reshape(3, 2, 4, 4)
    for h in range(4):
        for w in range(4):
            for c in range(2):
                assert np.array_equal(written[(h * 4 + w) * 2 + c], caffe[:, c, h, w])
