"""Each committed *_pb2 module must be what protoc makes of its proto/*.proto today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from weightconv._proto import caffe_pb2, tf_checkpoint_pb2

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "stem, module", [("caffe", caffe_pb2), ("tf_checkpoint", tf_checkpoint_pb2)]
)
def test_generated_module_matches_the_proto_file(tmp_path, stem, module):
    pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools (test extra) absent")
    out = tmp_path / f"{stem}.desc"
    # In a child process: protoc's bundled C++ protobuf crashes in a process where another
    # test has already loaded TensorFlow's.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO / 'proto'}",
            f"--descriptor_set_out={out}",
            str(REPO / "proto" / f"{stem}.proto"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    committed = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
    for descriptor in (fresh, committed):
        _normalise(descriptor.message_type)
    assert committed == fresh, (
        f"weightconv/_proto/{stem}_pb2.py is stale: run scripts/regen_protos.py "
        "(see its docstring for the pinned grpcio-tools)"
    )


def _normalise(messages) -> None:
    """Leave out what differs between protoc releases but not in meaning: json_name (filled
    in by --descriptor_set_out) and the spelling of float defaults (0.999 vs 0.999000013)."""
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
            if field.type == field.TYPE_FLOAT and field.HasField("default_value"):
                field.default_value = repr(float(np.float32(float(field.default_value))))
            elif field.type == field.TYPE_DOUBLE and field.HasField("default_value"):
                field.default_value = repr(float(field.default_value))
        _normalise(message.nested_type)
