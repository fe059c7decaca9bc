"""The index records decoded by hand (`formats/ckpt/records`) against protobuf's own decoding
of the same bytes: random entries and headers, fields repeated, unknown fields, negative and
wrapped integers, and every truncation."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError

from weightconv._proto import tf_checkpoint_pb2 as pb
from weightconv.codecs.protowire import WireError, encode_key, encode_varint
from weightconv.formats.ckpt import records


def _random_entry(rng: random.Random) -> pb.BundleEntryProto:
    entry = pb.BundleEntryProto()
    entry.dtype = rng.choice([0, 1, 2, 7, 14, 19, 23, 99])
    for _ in range(rng.randrange(5)):
        dim = entry.shape.dim.add()
        dim.size = rng.choice([0, 1, 3, 4096, 2**40, -1])
        if rng.random() < 0.3:
            dim.name = rng.choice(["h", "w", "ä"])
    entry.shard_id = rng.choice([0, 1, 7, -3, 2**31 - 1])
    entry.offset = rng.choice([0, 5, 2**33, -(2**62)])
    entry.size = rng.choice([0, 12, 2**35, -1])
    entry.crc32c = rng.randrange(2**32)
    for _ in range(rng.choice([0, 0, 1, 2])):
        piece = entry.slices.add()
        for _ in range(rng.randrange(1, 4)):
            extent = piece.extent.add()
            extent.start = rng.randrange(0, 100)
            if rng.random() < 0.6:
                extent.length = rng.randrange(0, 100)
    return entry


def _expected_entry(message: pb.BundleEntryProto) -> records.EntryRecord:
    return records.EntryRecord(
        dtype=message.dtype,
        shape=[d.size for d in message.shape.dim],
        shard_id=message.shard_id,
        offset=message.offset,
        size=message.size,
        crc32c=message.crc32c,
        slices=[
            [(e.start, e.length if e.HasField("length") else -1) for e in piece.extent]
            for piece in message.slices
        ],
    )


def _protobuf_entry(data: bytes) -> records.EntryRecord | None:
    message = pb.BundleEntryProto()
    try:
        message.ParseFromString(data)
    except DecodeError:
        return None
    return _expected_entry(message)


def _ours(data: bytes) -> records.EntryRecord | None:
    try:
        return records.decode_entry(memoryview(data))
    except WireError:
        return None


@pytest.mark.parametrize("seed", range(40))
def test_entries_decode_as_protobuf_decodes_them(seed: int) -> None:
    rng = random.Random(seed)
    data = _random_entry(rng).SerializeToString()
    assert records.decode_entry(memoryview(data)) == _protobuf_entry(data)


def test_every_truncation_is_refused_or_read_as_protobuf_reads_it() -> None:
    rng = random.Random(7)
    for _ in range(10):
        data = _random_entry(rng).SerializeToString()
        for cut in range(len(data)):
            assert _ours(data[:cut]) == _protobuf_entry(data[:cut]), (data, cut)


def test_repeated_fields_unknown_fields_and_wrong_wire_types_as_protobuf() -> None:
    first = pb.BundleEntryProto(dtype=1, offset=10)
    first.shape.dim.add().size = 3
    second = pb.BundleEntryProto(dtype=2, offset=20)
    second.shape.dim.add().size = 5
    unknown = (
        encode_key(15, 0)
        + encode_varint(99)
        + encode_key(16, 2)
        + encode_varint(3)
        + b"abc"
        + encode_key(1, 5)  # dtype with a fixed32 wire type: an unknown field to protobuf
        + b"\x07\x00\x00\x00"
        + encode_key(3, 0)
        + encode_varint(2**40 + 5)  # an int32 field given a wider value: wraps
    )
    data = first.SerializeToString() + unknown + second.SerializeToString()
    ours = records.decode_entry(memoryview(data))
    assert ours == _protobuf_entry(data)
    assert ours.shape == [3, 5] and ours.dtype == 2 and ours.shard_id == 5


@pytest.mark.parametrize("seed", range(10))
def test_headers_decode_as_protobuf_decodes_them(seed: int) -> None:
    rng = random.Random(seed)
    header = pb.BundleHeaderProto(
        num_shards=rng.choice([0, 1, 16, -2]), endianness=rng.choice([0, 1, 5])
    )
    if rng.random() < 0.8:
        header.version.producer = rng.choice([0, 1, 2])
        header.version.min_consumer = rng.choice([0, 1, 3])
        header.version.bad_consumers.extend(rng.sample(range(10), rng.randrange(3)))
    data = header.SerializeToString()
    if seed % 2:
        data += pb.BundleHeaderProto(version=pb.VersionDef(min_consumer=4)).SerializeToString()
    message = pb.BundleHeaderProto.FromString(data)
    assert records.decode_header(memoryview(data)) == records.Header(
        num_shards=message.num_shards,
        endianness=message.endianness,
        producer=message.version.producer,
        min_consumer=message.version.min_consumer,
    )
