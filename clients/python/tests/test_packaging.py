"""Tests of the in-tree build backend (clients/python/_build/picograd_build.py).

They call its PEP 517 hooks directly, so no pip and no network are needed: the wheel must hold
picograd/*.py (not tests) and a .dist-info whose RECORD hashes match, and the minimal
pyproject.toml parser used without tomllib must agree with tomllib.
Run: PYTHONPATH=clients/python python3 -m pytest clients/python/tests/test_packaging.py
"""

import base64
import hashlib
import importlib.util
import os
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def backend():
    path = os.path.join(ROOT, "_build", "picograd_build.py")
    spec = importlib.util.spec_from_file_location("picograd_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wheel_contents_and_record(backend, tmp_path):
    name = backend.build_wheel(str(tmp_path))
    assert name == "picograd-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(tmp_path / name) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    for required in ("picograd/__init__.py", "picograd/client.py", "picograd/wire.py",
                     "picograd/tensor.py", "picograd/nn/__init__.py", "picograd/nn/functional.py"):
        assert required in files
    dist_info = "picograd-0.1.0.dist-info/"
    for meta in ("METADATA", "WHEEL", "RECORD"):
        assert dist_info + meta in files
    assert not any(n.startswith(("tests/", "_build/")) for n in files)

    metadata = files[dist_info + "METADATA"].decode()
    for line in ("Metadata-Version: 2.1", "Name: picograd", "Version: 0.1.0",
                 "Requires-Python: >=3.9", "Requires-Dist: msgpack>=1.0",
                 "Requires-Dist: numpy>=1.20"):
        assert line + "\n" in metadata
    wheel = files[dist_info + "WHEEL"].decode()
    assert "Root-Is-Purelib: true\n" in wheel and "Tag: py3-none-any\n" in wheel

    record = {}
    for row in files[dist_info + "RECORD"].decode().splitlines():
        path, digest, size = row.split(",")
        record[path] = (digest, size)
    assert record.pop(dist_info + "RECORD") == ("", "")
    assert set(record) == set(files) - {dist_info + "RECORD"}
    for path, (digest, size) in record.items():
        data = files[path]
        expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert digest == "sha256=" + expected, path
        assert int(size) == len(data), path


def test_version_matches_package(backend):
    sys.path.insert(0, ROOT)
    try:
        import picograd
    finally:
        sys.path.remove(ROOT)
    assert backend._project()["version"] == picograd.__version__


def test_fallback_parser_agrees_with_tomllib(backend, monkeypatch):
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        expected = tomllib.load(f)["project"]
    monkeypatch.setitem(sys.modules, "tomllib", None)  # makes `import tomllib` raise ImportError
    assert backend._project() == expected
