"""A tiny PEP 517/660 build backend for the picograd client, using only the standard library.

Why: with a setuptools backend, `pip install clients/python` (build isolation on, the default)
first downloads setuptools from PyPI, which fails on an offline machine. picograd is one pure
Python package, so this backend just zips picograd/*.py with a .dist-info into a py3-none-any
wheel; pyproject.toml lists it with `requires = []`, so pip has nothing to fetch.

Metadata (name, version, dependencies, ...) comes from pyproject.toml's [project] table, read with
tomllib (Python 3.11+) or, on older Pythons, a minimal parser for the few keys used here.
"""

import ast
import base64
import hashlib
import io
import os
import re
import tarfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # clients/python
PACKAGE = "picograd"
TAG = "py3-none-any"
EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps: the same source gives the same wheel


def _project():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        text = f.read().decode("utf-8")
    try:
        import tomllib
        return tomllib.loads(text)["project"]
    except ImportError:
        pass
    # Fallback: `key = value` lines of [project] whose value is a string or an array of strings
    # (possibly spanning lines), plus `license = { text = "..." }`. Enough for this file only.
    project, section, line = {}, None, ""
    for raw in text.splitlines():
        if raw.strip().startswith("#"):
            continue
        line += " " + raw.strip()
        if line.count("[") > line.count("]"):
            continue  # inside a multi-line array: keep reading
        line, stmt = "", line.strip()
        if stmt.startswith("["):
            section = stmt.strip("[]").strip()
        elif section == "project" and "=" in stmt:
            key, value = (s.strip() for s in stmt.split("=", 1))
            if value.startswith("{"):
                m = re.search(r'text\s*=\s*"([^"]*)"', value)
                project[key] = {"text": m.group(1)} if m else {}
            else:
                project[key] = ast.literal_eval(value)
    return project


def _norm(name):
    return re.sub(r"[-_.]+", "_", name)  # the file-name form of a project name


def _dist_info_name(p):
    return "%s-%s.dist-info" % (_norm(p["name"]), p["version"])


def _metadata(p):
    lines = ["Metadata-Version: 2.1", "Name: " + p["name"], "Version: " + p["version"]]
    if "description" in p:
        lines.append("Summary: " + p["description"])
    if "text" in p.get("license", {}):
        lines.append("License: " + p["license"]["text"])
    lines += ["Classifier: " + c for c in p.get("classifiers", [])]
    if "requires-python" in p:
        lines.append("Requires-Python: " + p["requires-python"])
    lines += ["Requires-Dist: " + d for d in p.get("dependencies", [])]
    body = ""
    readme = p.get("readme")
    if isinstance(readme, str) and os.path.isfile(os.path.join(ROOT, readme)):
        lines.append("Description-Content-Type: text/markdown")
        body = "\n" + _read(readme).decode("utf-8")
    return ("\n".join(lines) + "\n" + body).encode("utf-8")


def _dist_info_files(p):
    wheel = "Wheel-Version: 1.0\nGenerator: picograd_build\nRoot-Is-Purelib: true\nTag: %s\n" % TAG
    return {"METADATA": _metadata(p), "WHEEL": wheel.encode("ascii")}


def _read(name):  # name: relative to ROOT, with "/"
    with open(os.path.join(ROOT, name), "rb") as f:
        return f.read()


def _package_files():
    """Every .py under picograd/ (subpackages such as picograd/nn included), relative to ROOT;
    tests/, caches and the rest are left out."""
    out = []
    for folder, dirs, names in os.walk(os.path.join(ROOT, PACKAGE)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        rel = os.path.relpath(folder, ROOT).replace(os.sep, "/")
        out += [rel + "/" + n for n in sorted(names) if n.endswith(".py")]
    return out


def _write_wheel(wheel_directory, contents):
    """contents: {archive name: bytes}. Adds the dist-info (with RECORD); returns the file name."""
    p = _project()
    dist_info = _dist_info_name(p)
    contents = dict(contents)
    for name, data in _dist_info_files(p).items():
        contents[dist_info + "/" + name] = data
    record = []
    for name, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (name, digest, len(data)))
    record.append(dist_info + "/RECORD,,")
    contents[dist_info + "/RECORD"] = ("\n".join(record) + "\n").encode("utf-8")
    filename = "%s-%s-%s.whl" % (_norm(p["name"]), p["version"], TAG)
    os.makedirs(wheel_directory, exist_ok=True)
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as zf:
        for name, data in contents.items():
            info = zipfile.ZipInfo(name, EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return filename


# ---- PEP 517 hooks ----

def get_requires_for_build_wheel(config_settings=None):
    return []  # nothing to install: the point of this backend


get_requires_for_build_sdist = get_requires_for_build_editable = get_requires_for_build_wheel


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    p = _project()
    dist_info = os.path.join(metadata_directory, _dist_info_name(p))
    os.makedirs(dist_info, exist_ok=True)
    for name, data in _dist_info_files(p).items():
        with open(os.path.join(dist_info, name), "wb") as f:
            f.write(data)
    return os.path.basename(dist_info)


prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _write_wheel(wheel_directory, {n: _read(n) for n in _package_files()})


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    # A .pth line puts clients/python on sys.path, so `import picograd` finds the source tree.
    return _write_wheel(wheel_directory, {PACKAGE + ".pth": (ROOT + "\n").encode("utf-8")})


def build_sdist(sdist_directory, config_settings=None):
    p = _project()
    base = "%s-%s" % (_norm(p["name"]), p["version"])
    names = ["pyproject.toml", "README.md", "_build/picograd_build.py"] + _package_files()
    members = [("PKG-INFO", _metadata(p))] + [(n, _read(n)) for n in names]
    os.makedirs(sdist_directory, exist_ok=True)
    path = os.path.join(sdist_directory, base + ".tar.gz")
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(base + "/" + name)
            info.size, info.mode, info.mtime = len(data), 0o644, 315532800  # 1980-01-01
            tf.addfile(info, io.BytesIO(data))
    return base + ".tar.gz"
