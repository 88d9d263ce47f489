"""The wheel that ``pip wheel .`` builds stands alone: installed into a fresh environment, away
from the source tree, it runs ``ghostmap --version``, ``ghostmap label --help`` and serves the
label page's files.

The wheel is built from a copy of the sources with ``--no-deps --no-build-isolation`` (the
test venv's setuptools, no network). The fresh venv gets only the wheel; its dependencies come from the test venv's
site-packages through a ``.pth`` line, where the editable install of the source tree is not
active (``.pth`` files in a directory added that way are not processed), so ``import ghostmap``
can only find the installed wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

import ghostmap

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[1]
STATIC = sorted(p.name for p in (ROOT / "src" / "ghostmap" / "webapp" / "static").iterdir())


def _run(cmd, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GHOSTMAP_DEBUG", "VIRTUAL_ENV")}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the sources, so that no stale build/ folder of the checkout leaks into it."""
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    r = _run([sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation", "-q", "-w", out],
             cwd=out)
    assert r.returncode == 0, r.stderr
    (path,) = out.glob("ghostmap-*.whl")
    return path


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, wheel) -> Path:
    """A new venv holding the wheel; returns its folder."""
    env_dir = tmp_path_factory.mktemp("fresh") / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=env_dir).stdout.strip())
    (purelib / "ghostmap_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
             cwd=env_dir)
    assert r.returncode == 0, r.stderr
    return env_dir


def test_wheel_holds_the_package_and_the_page_files(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "ghostmap/cli.py" in names and "ghostmap/__main__.py" in names
    for name in STATIC:
        assert f"ghostmap/webapp/static/{name}" in names
    assert not [n for n in names if n.startswith(("tests/", "docs/", "benchmarks/"))]
    assert f"ghostmap-{ghostmap.__version__}.dist-info/METADATA" in names


def test_installed_wheel_runs_apart_from_the_source_tree(fresh, tmp_path):
    where = _run([fresh / "bin" / "python", "-c", "import ghostmap; print(ghostmap.__file__)"], cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(fresh), f"imported the source tree: {where.stdout}"

    version = _run([fresh / "bin" / "ghostmap", "--version"], cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"ghostmap {ghostmap.__version__}"

    module = _run([fresh / "bin" / "python", "-m", "ghostmap", "--version"], cwd=tmp_path)
    assert (module.returncode, module.stdout) == (0, version.stdout)

    label = _run([fresh / "bin" / "ghostmap", "label", "--help"], cwd=tmp_path)
    assert label.returncode == 0, label.stderr
    assert "--budget" in label.stdout and "--labels" in label.stdout


def test_installed_wheel_serves_the_label_page(fresh, tmp_path):
    script = """
import sys
import numpy as np
from fastapi.testclient import TestClient
from ghostmap.webapp import create_app
from ghostmap.simulate import simulate_scan

data, _ = simulate_scan((6, 8), detector=32, seed=0)
with TestClient(create_app(data, sys.argv[1], budget=4), base_url="http://127.0.0.1") as client:
    for path in ["/", *sys.argv[2:]]:
        r = client.get(path)
        assert r.status_code == 200 and r.content, (path, r.status_code)
print("served", len(sys.argv) - 1)
"""
    r = _run([fresh / "bin" / "python", "-c", script, tmp_path / "labels.csv",
              *[f"/static/{name}" for name in STATIC]], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"served {len(STATIC) + 1}"
