"""Regenerate weightconv/_proto/*_pb2.py (and their *_pb2.pyi type stubs) from proto/*.proto.

The committed modules are generated with grpcio-tools 1.62.3 (protobuf 4.25
generated code), which loads on every protobuf runtime from 4.25 to 7.x; newer
protoc releases emit code that demands a runtime at least as new as themselves.
Run it in a scratch environment:

    python -m venv /tmp/protoc && /tmp/protoc/bin/pip install grpcio-tools==1.62.3
    /tmp/protoc/bin/python scripts/regen_protos.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "weightconv" / "_proto"
PINNED = "1.62.3"


def main() -> int:
    from importlib.metadata import version

    from grpc_tools import protoc

    if version("grpcio-tools") != PINNED:
        print(
            f"warning: grpcio-tools {version('grpcio-tools')} is not the pinned {PINNED}",
            file=sys.stderr,
        )
    for proto in sorted(PROTO_DIR.glob("*.proto")):
        rc = protoc.main(
            [
                "protoc",
                f"-I{PROTO_DIR}",
                f"--python_out={OUT_DIR}",
                f"--pyi_out={OUT_DIR}",
                str(proto),
            ]
        )
        if rc != 0:
            print(f"protoc failed on {proto}", file=sys.stderr)
            return rc
        print(f"generated {OUT_DIR / (proto.stem + '_pb2.py')} and its .pyi")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
