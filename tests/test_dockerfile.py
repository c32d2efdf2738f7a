"""The Dockerfile cannot be built here (no Docker engine): check what can be checked without one. The
base image is named with a tag, everything it copies exists, torch 2.13.0 is installed before the package,
the copied files build the package with its data, and its verification line passes in this venv."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "Dockerfile").read_text()
LINES = re.sub(r"\\\n\s*", " ", TEXT).splitlines()  # continuation lines joined


def _instructions(keyword: str) -> list[str]:
    return [line.split(None, 1)[1] for line in LINES if line.startswith(keyword + " ")]


def _copy_sources() -> list[str]:
    return [src for args in _instructions("COPY") for src in shlex.split(args)[:-1]]


def test_base_is_gadgetrons_runtime_image_with_a_tag():
    args = dict(a.split("=", 1) for a in _instructions("ARG") if "=" in a)
    image = args["GADGETRON_IMAGE"]
    assert _instructions("FROM") == ["${GADGETRON_IMAGE}"]
    name, _, tag = image.rpartition(":")
    assert name.startswith("ghcr.io/gadgetron/gadgetron/gadgetron_ubuntu_rt_") and tag


def test_every_copied_path_exists_and_the_configurations_go_to_gadgetrons_config_folder():
    sources = _copy_sources()
    for source in sources:
        assert list(ROOT.glob(source)), f"COPY {source}: nothing in the repository matches"
    assert len(list(ROOT.glob("config_xml/*.xml"))) >= 3
    assert any(line.startswith("COPY config_xml/*.xml ${GT_ENV}/share/gadgetron/config/") for line in LINES)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and not any(s.split("/")[0] in ignored for s in sources)


def test_torch_cpu_2_13_is_installed_before_the_package():
    run = " ".join(_instructions("RUN"))
    torch_at = run.index("torch==2.13.0")
    package_at = run.index("/tmp/mrf-gadgetron ")
    assert torch_at < package_at and "--index-url ${TORCH_INDEX}" in run
    assert "/cpu" in dict(a.split("=", 1) for a in _instructions("ARG") if "=" in a)["TORCH_INDEX"]


def test_the_copied_files_build_the_package_with_its_data(tmp_path):
    """What the image copies (pyproject, README, the packages, config_xml) builds the wheel it installs: every
    module of the tree (pyproject lists the packages), the data, and the stream configurations, which an
    installed package finds by name without a checkout."""
    src = tmp_path / "src"
    src.mkdir()
    for source in ("pyproject.toml", "README.md", "mrf_core", "gadgets", "mrf_gadgetron", "config_xml"):
        assert source in _copy_sources()
        copy = shutil.copytree if (ROOT / source).is_dir() else shutil.copy
        copy(ROOT / source, src / source, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                              if (ROOT / source).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=120)
    names = zipfile.ZipFile(next((tmp_path / "dist").glob("*.whl"))).namelist()
    for needed in ("gadgets/reconstruct.py", "gadgets/map_network.py", "gadgets/map_dictionary.py",
                   "gadgets/emit.py", "mrf_core/data/fisp_jiang2015.csv", "mrf_core/mapping/__init__.py"):
        assert needed in names
    if (ROOT / "mrf_core/data/default_model.pt").is_file():
        assert "mrf_core/data/default_model.pt" in names, "the default model must ship in the package"
    modules = {str(p.relative_to(ROOT)) for package in ("mrf_core", "gadgets", "mrf_gadgetron")
               for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts}
    assert modules - set(names) == set(), "pyproject.toml [tool.setuptools] packages misses a package"
    configurations = {f"mrf_gadgetron/config_xml/{p.name}" for p in (ROOT / "config_xml").glob("*.xml")}
    assert configurations and configurations <= set(names)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                    str(next((tmp_path / "dist").glob("*.whl")))], check=True, capture_output=True, timeout=120)
    probe = ("from mrf_gadgetron.host.stream_config import default_config_dir, resolve_config_name; "
             "print(default_config_dir()); print(resolve_config_name('mrf_default'))")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == [str(site / "mrf_gadgetron" / "config_xml"), str(site / "mrf_gadgetron" / "config_xml" /
                                                                  "mrf_default.xml")]


def test_the_verification_line_passes_here():
    """torch check and gadget imports pass in this venv; the model check passes once the model ships."""
    run = _instructions("RUN")[0]
    line = re.search(r'\$\{GT_ENV\}/bin/python -c "([^"]*default_model_path[^"]*)"', run).group(1)
    from mrf_core.mapping import default_model_path

    result = subprocess.run([sys.executable, "-c", line], capture_output=True, text=True, timeout=120)
    if default_model_path().is_file():
        assert result.returncode == 0, result.stderr
    else:  # everything before the model check passed
        assert result.returncode != 0 and result.stderr.strip().endswith("AssertionError: default model missing")
