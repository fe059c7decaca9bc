"""What a release carries: the sdist has everything its tests need (the .proto sources, the
fixture script, the tests, the licence), and the wheel the licence, type information and data."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    pytest.importorskip("build", reason="the build package (test extra) is not installed")
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--no-isolation",
            "--sdist",
            "--wheel",
            "--outdir",
            str(out),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out


def test_the_sdist_carries_what_its_tests_need(dist):
    (sdist,) = dist.glob("weightconv-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for member in [
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "setup.cfg",
        "pyproject.toml",
        "proto/caffe.proto",
        "proto/tf_checkpoint.proto",
        "fixtures/make_caffe.py",
        "tests/test_contract.py",
        "tests/corpus.json",
        "scripts/regen_protos.py",
        "weightconv/_proto/caffe_pb2.pyi",
        "weightconv/py.typed",
    ]:
        assert member in names, member


def test_the_wheel_carries_licence_types_and_data(dist):
    (wheel,) = dist.glob("weightconv-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
    assert "weightconv/py.typed" in names and "weightconv/_proto/caffe_pb2.pyi" in names
    assert "weightconv/data/imagenet_classes.txt" in names
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in text
    assert "Project-URL: Source" in text and "License" in text
