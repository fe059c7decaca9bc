"""TensorFlow's OrderedCode encodings and tensor-slice keys.

Oracles: the byte strings TensorFlow's own tests expect
(tensorflow/core/lib/strings/ordered_code_test.cc), the bytewise ordering the
encodings exist to preserve, and the keys real TensorFlow writes into V1 and V2
checkpoints of partitioned variables (in a subprocess, so pytest never imports it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from weightconv.codecs import snappy
from weightconv.codecs.ordered_code import (
    decode_num_increasing,
    decode_signed_num_increasing,
    decode_slice_key,
    decode_string,
    encode_num_increasing,
    encode_signed_num_increasing,
    encode_slice_key,
    encode_string,
    is_slice_key,
)
from weightconv.errors import FormatError

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1

int64s = st.integers(INT64_MIN, INT64_MAX)
uint64s = st.integers(0, UINT64_MAX)

# --- known answers ---------------------------------------------------------------------------

# From TEST(EncodingIsExpected, Unsigned): a value at every length and at byte boundaries.
UNSIGNED = [
    (0x0, b"\x00"),
    (0x1, b"\x01\x01"),
    (0x7F, b"\x01\x7f"),
    (0xFF, b"\x01\xff"),
    (0x100, b"\x02\x01\x00"),
    (0xFFFF, b"\x02\xff\xff"),
    (0x10000, b"\x03\x01\x00\x00"),
    (0x1000001, b"\x04\x01\x00\x00\x01"),
    (0xFFFFFFFF, b"\x04\xff\xff\xff\xff"),
    (0x100000000, b"\x05\x01\x00\x00\x00\x00"),
    (0x10000000000, b"\x06\x01\x00\x00\x00\x00\x00"),
    (0x1000000000000, b"\x07\x01\x00\x00\x00\x00\x00\x00"),
    (0x100000000000000, b"\x08\x01\x00\x00\x00\x00\x00\x00\x00"),
    (0x7FFFFFFFFFFFFFFF, b"\x08\x7f\xff\xff\xff\xff\xff\xff\xff"),
    (0x8000000000000001, b"\x08\x80\x00\x00\x00\x00\x00\x00\x01"),
]

# From TEST(EncodingIsExpected, Signed): both ends of every encoding length, both signs.
SIGNED = [
    (0, b"\x80"),
    (1, b"\x81"),
    (63, b"\xbf"),
    (64, b"\xc0@"),
    (256, b"\xc1\x00"),
    (8191, b"\xdf\xff"),
    (8192, b"\xe0 \x00"),
    (1048575, b"\xef\xff\xff"),
    (1048576, b"\xf0\x10\x00\x00"),
    (134217727, b"\xf7\xff\xff\xff"),
    (134217728, b"\xf8\x08\x00\x00\x00"),
    (17179869184, b"\xfc\x04\x00\x00\x00\x00"),
    (2199023255552, b"\xfe\x02\x00\x00\x00\x00\x00"),
    (281474976710656, b"\xff\x01\x00\x00\x00\x00\x00\x00"),
    (36028797018963967, b"\xff\x7f\xff\xff\xff\xff\xff\xff"),
    (36028797018963968, b"\xff\x80\x80\x00\x00\x00\x00\x00\x00"),
    (4611686018427387903, b"\xff\xbf\xff\xff\xff\xff\xff\xff\xff"),
    (4611686018427387904, b"\xff\xc0@\x00\x00\x00\x00\x00\x00\x00"),
    (9223372036854775807, b"\xff\xc0\x7f\xff\xff\xff\xff\xff\xff\xff"),
    (-1, b"\x7f"),
    (-2, b"~"),
    (-64, b"@"),
    (-65, b"?\xbf"),
    (-8192, b" \x00"),
    (-8193, b"\x1f\xdf\xff"),
    (-1048577, b"\x0f\xef\xff\xff"),
    (-134217729, b"\x07\xf7\xff\xff\xff"),
    (-17179869185, b"\x03\xfb\xff\xff\xff\xff"),
    (-2199023255553, b"\x01\xfd\xff\xff\xff\xff\xff"),
    (-281474976710657, b"\x00\xfe\xff\xff\xff\xff\xff\xff"),
    (-36028797018963968, b"\x00\x80\x00\x00\x00\x00\x00\x00"),
    (-36028797018963969, b"\x00\x7f\x7f\xff\xff\xff\xff\xff\xff"),
    (-4611686018427387904, b"\x00@\x00\x00\x00\x00\x00\x00\x00"),
    (-4611686018427387905, b"\x00?\xbf\xff\xff\xff\xff\xff\xff\xff"),
    (-9223372036854775807, b"\x00?\x80\x00\x00\x00\x00\x00\x00\x01"),
]

# From TEST(EncodingIsExpected, String).
STRINGS = [
    (b"", b"\x00\x01"),
    (b"foo", b"foo\x00\x01"),
    (b"hello", b"hello\x00\x01"),
    (b"\x00\x01\xff", b"\x00\xff\x01\xff\x00\x00\x01"),
]


@pytest.mark.parametrize(("value", "encoded"), UNSIGNED)
def test_num_increasing_known(value, encoded):
    assert encode_num_increasing(value) == encoded
    assert decode_num_increasing(encoded, 0) == (value, len(encoded))


@pytest.mark.parametrize(("value", "encoded"), SIGNED)
def test_signed_num_increasing_known(value, encoded):
    assert encode_signed_num_increasing(value) == encoded
    assert decode_signed_num_increasing(encoded, 0) == (value, len(encoded))


@pytest.mark.parametrize(("value", "encoded"), STRINGS)
def test_string_known(value, encoded):
    assert encode_string(value) == encoded
    assert decode_string(encoded, 0) == (value, len(encoded))


def test_decoders_start_at_pos_and_return_the_next():
    stream = b"junk" + b"\x02\x01\x00" + b"?\xbf" + b"a\x00\xffb\x00\x01" + b"\x80"
    value, pos = decode_num_increasing(stream, 4)
    assert (value, pos) == (0x100, 7)
    value, pos = decode_signed_num_increasing(stream, pos)
    assert (value, pos) == (-65, 9)
    value, pos = decode_string(stream, pos)
    assert (value, pos) == (b"a\x00b", 15)
    assert decode_signed_num_increasing(stream, pos) == (0, 16)


# --- invalid encodings -----------------------------------------------------------------------

# The overflow cases are TEST(OrderedCodeInvalidEncodingsTest, Overflow): 1 << 64 unsigned,
# 1 << 63 signed, and that signed encoding with every bit inverted.
K2XX63 = b"\xff\xc0\x80" + bytes(7)


@pytest.mark.parametrize(
    ("decoder", "encoded", "message"),
    [
        (decode_num_increasing, b"\x09\x01" + bytes(8), "9 bytes"),
        (decode_num_increasing, b"", "truncated"),
        (decode_num_increasing, b"\x03\x01\x00", "truncated"),
        (decode_signed_num_increasing, K2XX63, "overflows"),
        (decode_signed_num_increasing, bytes(b ^ 0xFF for b in K2XX63), "overflows"),
        (decode_signed_num_increasing, b"\xff\xe0" + bytes(9), "more than 10 bytes"),
        (decode_signed_num_increasing, b"\x00\x1f" + bytes(9), "more than 10 bytes"),
        (decode_signed_num_increasing, b"\xff\xff" + bytes(14), "more than 10 bytes"),
        (decode_signed_num_increasing, b"", "truncated"),
        (decode_string, b"abc", "unterminated"),
        (decode_string, b"abc\x00", "unterminated"),
        (decode_string, b"abc\xff", "unterminated"),
        (decode_string, b"a\x00\x02b\x00\x01", "invalid escape 0002"),
        (decode_string, b"a\xff\xffb\x00\x01", "invalid escape ffff"),
        (decode_string, b"a\xff\x01b\x00\x01", "invalid escape ff01"),
    ],
)
def test_invalid_encodings(decoder, encoded, message):
    with pytest.raises(FormatError, match=message):
        decoder(encoded, 0)


@settings(max_examples=300, deadline=None)
@given(int64s, uint64s, st.binary(max_size=40))
@example(INT64_MIN, UINT64_MAX, b"\x00\xff")
@example(INT64_MAX, 0, b"")
def test_every_proper_prefix_is_refused(signed, unsigned, string):
    # As TestRead in ordered_code_test.cc does for every number it round-trips.
    for decoder, encoded in [
        (decode_signed_num_increasing, encode_signed_num_increasing(signed)),
        (decode_num_increasing, encode_num_increasing(unsigned)),
        (decode_string, encode_string(string)),
    ]:
        for end in range(len(encoded)):
            with pytest.raises(FormatError):
                decoder(encoded[:end], 0)


@pytest.mark.parametrize(
    ("encoder", "value"),
    [
        (encode_num_increasing, -1),
        (encode_num_increasing, 1 << 64),
        (encode_signed_num_increasing, INT64_MAX + 1),
        (encode_signed_num_increasing, INT64_MIN - 1),
    ],
)
def test_encoders_refuse_out_of_range(encoder, value):
    with pytest.raises(ValueError, match="64-bit"):
        encoder(value)


# --- order preservation and round trips ------------------------------------------------------


def sign(x: int) -> int:
    return (x > 0) - (x < 0)


@settings(max_examples=500, deadline=None)
@given(int64s, int64s)
@example(INT64_MIN, INT64_MIN + 1)
@example(INT64_MAX - 1, INT64_MAX)
@example(-65, -64)
@example(63, 64)
@example(-1, 0)
@example(INT64_MIN, INT64_MAX)
def test_signed_order_and_round_trip(a, b):
    ea, eb = encode_signed_num_increasing(a), encode_signed_num_increasing(b)
    assert sign((ea > eb) - (ea < eb)) == sign(a - b)
    assert decode_signed_num_increasing(ea, 0) == (a, len(ea))


@settings(max_examples=500, deadline=None)
@given(uint64s, uint64s)
@example(0, 1)
@example(0xFF, 0x100)
@example(UINT64_MAX - 1, UINT64_MAX)
def test_unsigned_order_and_round_trip(a, b):
    ea, eb = encode_num_increasing(a), encode_num_increasing(b)
    assert sign((ea > eb) - (ea < eb)) == sign(a - b)
    assert decode_num_increasing(ea, 0) == (a, len(ea))


special_bytes = st.binary(max_size=30) | st.lists(
    st.sampled_from([0, 1, 0xFE, 0xFF, 0x61]), max_size=30
).map(bytes)


@settings(max_examples=500, deadline=None)
@given(special_bytes, special_bytes)
@example(b"", b"\x00")
@example(b"\x00", b"\x01")
@example(b"aa", b"\xff")
@example(b"\xff", b"\xff\x00")
def test_string_order_and_round_trip(a, b):
    ea, eb = encode_string(a), encode_string(b)
    assert sign((ea > eb) - (ea < eb)) == sign((a > b) - (a < b))
    assert decode_string(ea + eb, 0) == (a, len(ea))
    assert decode_string(ea + eb, len(ea)) == (b, len(ea) + len(eb))


# --- tensor-slice keys ----------------------------------------------------------------------

names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
extents = st.one_of(
    st.just((0, -1)), st.tuples(st.integers(0, INT64_MAX), st.integers(0, INT64_MAX))
)


def test_slice_key_layout():
    # NumIncreasing(0), String("w"), NumIncreasing(2), then (4, 3) and (0, -1) signed.
    assert encode_slice_key("w", [(4, 3), (0, -1)]) == b"\x00w\x00\x01\x01\x02\x84\x83\x80\x7f"
    assert decode_slice_key(b"\x00w\x00\x01\x01\x02\x84\x83\x80\x7f") == ("w", [(4, 3), (0, -1)])


@settings(max_examples=300, deadline=None)
@given(names, st.lists(extents, max_size=6))
def test_slice_key_round_trip(name, dims):
    key = encode_slice_key(name, dims)
    assert is_slice_key(key)
    assert decode_slice_key(key) == (name, dims)


def test_full_extent_start_is_ignored_like_tensorflow():
    # TensorFlow's DecodeTensorNameSlice ignores the start of a full extent.
    assert decode_slice_key(b"\x00w\x00\x01\x01\x01\x85\x7f") == ("w", [(0, -1)])


def test_is_slice_key():
    assert is_slice_key(b"\x00w\x00\x01\x01\x00")
    assert not is_slice_key(b"w")
    assert not is_slice_key(b"")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (b"", "truncated"),
        (b"\x01\x01w\x00\x01\x01\x01\x80\x7f", "starts with 1, not 0"),
        (b"w\x00\x01\x01\x01\x80\x7f", "unsigned number of 119 bytes"),
        (b"\x00w\x00\x01", "truncated unsigned"),
        (b"\x00w\x01\x01\x01\x80\x7f", "unterminated string"),
        (b"\x00w\x00\x01\x01\x02\x80\x7f", "truncated signed"),
        (b"\x00w\x00\x01\x01\x01\x80", "truncated signed"),
        (b"\x00w\x00\x01\x01\x01\x80\x7f\x80", "1 trailing bytes"),
        (b"\x00w\x00\x01\x01\x01\x80\x7e", r"invalid extent \(0, -2\)"),
        (b"\x00w\x00\x01\x01\x01\x7f\x83", r"invalid extent \(-1, 3\)"),
        (b"\x00\xc3\x28\x00\x01\x01\x01\x80\x7f", "not UTF-8"),
        (b"\x00w\x00\x01\x04\x80\x00\x00\x00\x80\x7f", "rank 2147483648"),
    ],
)
def test_malformed_slice_keys(key, message):
    with pytest.raises(FormatError, match=message):
        decode_slice_key(key)


@pytest.mark.parametrize("extent", [(-1, 4), (0, -2), (3, -1)])
def test_encode_slice_key_refuses_invalid_extents(extent):
    with pytest.raises(ValueError, match="invalid slice extent"):
        encode_slice_key("w", [extent])


# --- oracle: the keys TensorFlow writes -----------------------------------------------------

#: The exit code WRITE_CHECKPOINTS uses when TensorFlow is not importable.
TF_MISSING = 77

# Saves the same variables in both checkpoint formats and reports how TensorFlow itself
# partitioned them (each partition's offset and shape within the full variable).
WRITE_CHECKPOINTS = """
import json, sys
try:
    import tensorflow as tf
except ImportError:
    sys.exit(77)
out = sys.argv[1]
tf.compat.v1.disable_eager_execution()
get = tf.compat.v1.get_variable
variables = [
    get("w", shape=[10, 4], partitioner=tf.compat.v1.fixed_size_partitioner(3)),
    get("scope/v", shape=[3, 7], partitioner=lambda shape, dtype: [1, 2]),
    get("b", shape=[5]),
    get("s", shape=[]),
]
layout = {}
for var in variables:
    if isinstance(var, tf.Variable):
        layout[var.op.name] = {"shape": var.shape.as_list(), "parts": None}
        continue
    for part in var:
        info = part._save_slice_info
        entry = layout.setdefault(info.full_name, {"shape": info.full_shape, "parts": []})
        entry["parts"].append([info.var_offset, info.var_shape])
with tf.compat.v1.Session() as sess:
    sess.run(tf.compat.v1.global_variables_initializer())
    tf.compat.v1.train.Saver().save(sess, out + "/v2")
    tf.compat.v1.train.Saver(write_version=tf.compat.v1.train.SaverDef.V1).save(sess, out + "/v1")
with open(out + "/layout.json", "w") as f:
    json.dump(layout, f)
"""

TABLE_MAGIC = bytes.fromhex("57fb808b247547db")


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def block_entries(table: bytes, handle: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs of the LevelDB-format table block `handle` points at."""
    offset, pos = read_varint(handle, 0)
    size, _ = read_varint(handle, pos)
    block = table[offset : offset + size]
    compression = table[offset + size]
    if compression == 1:
        block = snappy.decompress(block)
    else:
        assert compression == 0, f"unexpected block compression {compression}"
    restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 - 4 * restarts
    entries, key, pos = [], b"", 0
    while pos < limit:
        shared, pos = read_varint(block, pos)
        unshared, pos = read_varint(block, pos)
        value_size, pos = read_varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        entries.append((key, block[pos : pos + value_size]))
        pos += value_size
    return entries


def table_keys(path: Path) -> list[bytes]:
    table = path.read_bytes()
    assert table[-8:] == TABLE_MAGIC, f"{path} is not a LevelDB-format table"
    footer = table[-48:]
    _, pos = read_varint(footer, 0)
    _, pos = read_varint(footer, pos)
    return [
        key
        for _, handle in block_entries(table, footer[pos:])
        for key, _ in block_entries(table, handle)
    ]


@pytest.fixture(scope="module")
def tf_checkpoints(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tf_checkpoints")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-c", WRITE_CHECKPOINTS, str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if result.returncode == TF_MISSING:
        pytest.skip("TensorFlow (test extra) is not importable; pip install tensorflow")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def expected_slices(layout: dict, partitioned_only: bool) -> list[tuple[str, list]]:
    """What the keys should decode to, from TensorFlow's own partition layout."""
    slices = []
    for name, entry in layout.items():
        if entry["parts"] is None:
            if not partitioned_only:
                slices.append((name, [(0, -1)] * len(entry["shape"])))
            continue
        for offset, shape in entry["parts"]:
            slices.append((name, list(zip(offset, shape, strict=True))))
    return sorted(slices)


@pytest.mark.oracle
@pytest.mark.parametrize(("table", "partitioned_only"), [("v2.index", True), ("v1", False)])
def test_tensorflow_slice_keys(tf_checkpoints, table, partitioned_only):
    layout = json.loads((tf_checkpoints / "layout.json").read_text())
    keys = [key for key in table_keys(tf_checkpoints / table) if is_slice_key(key)]
    assert sorted(decode_slice_key(key) for key in keys) == expected_slices(
        layout, partitioned_only
    )
    for key in keys:
        assert encode_slice_key(*decode_slice_key(key)) == key


@pytest.mark.oracle
def test_tensorflow_partition_key_bytes(tf_checkpoints):
    # The second of w's three row blocks: rows 4..6, all 4 columns, written out explicitly.
    keys = table_keys(tf_checkpoints / "v2.index")
    assert b"\x00w\x00\x01\x01\x02\x84\x83\x80\x84" in keys
    assert encode_slice_key("w", [(4, 3), (0, 4)]) == b"\x00w\x00\x01\x01\x02\x84\x83\x80\x84"
