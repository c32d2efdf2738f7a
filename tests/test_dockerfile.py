"""The Dockerfile cannot be built here (no Docker engine): check what can be checked without one. The base is
Gadgetron's current CPU runtime image, everything it copies exists, the copied files build the package with
its data, docker/install.sh keeps every package of the env (numpy, h5py, ...) and installs torch 2.13.0 CPU
before the package, and the last step runs docker/verify.sh as uid 1000, which replays a scan through every
shipped configuration from a folder outside the package. `make image-env` (docker/emulate.sh) runs the same
install and check for real in an emulated image env; a full verify.sh run takes about a minute here, too long
for this suite, so its loop is checked with a stand-in `mrf`."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.repository
if not (ROOT / "Dockerfile").is_file():
    pytest.skip("checks the repository's Dockerfile: run from the checkout", allow_module_level=True)
TEXT = (ROOT / "Dockerfile").read_text()
LINES = re.sub(r"\\\n\s*", " ", TEXT).splitlines()  # continuation lines joined
INSTALL = (ROOT / "docker" / "install.sh").read_text()
VERIFY = (ROOT / "docker" / "verify.sh").read_text()
EMULATE = (ROOT / "docker" / "emulate.sh").read_text()
GT_ENV = "/opt/conda/envs/gadgetron"


def _instructions(keyword: str) -> list[str]:
    return [line.split(None, 1)[1] for line in LINES if line.startswith(keyword + " ")]


def _args() -> dict[str, str]:
    return dict(a.split("=", 1) for a in _instructions("ARG") if "=" in a)


def _copy_sources() -> list[str]:
    return [src for args in _instructions("COPY") for src in shlex.split(args)[:-1]]


def _expand(text: str) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: _args()[m.group(1)], text)


def test_base_is_gadgetrons_current_cpu_runtime_image_with_a_tag():
    image = _args()["GADGETRON_IMAGE"]
    assert _instructions("FROM") == ["${GADGETRON_IMAGE}"]
    name, _, tag = image.rpartition(":")
    assert name == "ghcr.io/gadgetron/gadgetron/ubuntu22.04_rt_nocuda" and tag
    assert "ghcr.io/gadgetron/gadgetron/gadgetron_ubuntu_rt_nocuda" in TEXT, "the older tag is named in a comment"
    assert _args()["GT_ENV"] == GT_ENV


def test_every_copied_path_exists_and_the_configurations_go_to_gadgetrons_config_folder():
    sources = _copy_sources()
    for source in sources:
        assert list(ROOT.glob(source)), f"COPY {source}: nothing in the repository matches"
    assert {"docker/install.sh", "docker/verify.sh"} <= set(sources)
    assert len(list(ROOT.glob("config_xml/*.xml"))) >= 3
    assert any(line.startswith("COPY config_xml/*.xml ${GT_ENV}/share/gadgetron/config/") for line in LINES)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and not any(s.split("/")[0] in ignored for s in sources)


def test_the_package_is_installed_by_install_sh_into_the_env_with_the_cpu_torch_index():
    runs = _instructions("RUN")
    install = next(r for r in runs if "install.sh" in r)
    assert install.startswith("sh /opt/mrf-gadgetron/install.sh ${GT_ENV}/bin/python /tmp/mrf-gadgetron ${TORCH_INDEX}")
    assert _args()["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"


def test_install_sh_keeps_every_package_of_the_env_numpy_and_h5py_included():
    """The constraints are every installed distribution at its version (here: this venv's); each pip call that
    resolves uses them; the only pip calls without are --no-deps ones (torch alone, the package alone)."""
    out = subprocess.run(["sh", str(ROOT / "docker" / "install.sh"), "--constraints", sys.executable],
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    import h5py
    import numpy
    import scipy

    for module in (numpy, h5py, scipy):
        assert f"{module.__name__}=={module.__version__}" in out
    assert any(line.startswith("setuptools==") for line in out)
    for line in INSTALL.splitlines():
        if re.match(r"\s*pip install ", line):
            assert "--no-deps" in line or '-c "$work/constraints.txt"' in line, line
    assert 'grep -vxF -f "$work/after.txt" "$work/constraints.txt"' in INSTALL, "no check that nothing changed"


def test_torch_cpu_2_13_is_installed_before_the_package_and_never_re_resolved():
    torch_at = INSTALL.index('pip install --no-deps ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} "$TORCH"')
    requirements_at = INSTALL.index('pip install -c "$work/constraints.txt" -r "$work/requirements.txt"')
    package_at = INSTALL.index('pip install --no-deps --force-reinstall "$wheel"')
    assert "TORCH=torch==2.13.0+cpu" in INSTALL and torch_at < requirements_at < package_at
    assert 'plain(m.requires("torch"), "setuptools")' in INSTALL and '"Requires-Dist"), "torch")' in INSTALL


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
    # without build isolation when this env can build wheels itself (setuptools >= 70.1 has bdist_wheel; older
    # needs the wheel package: the image's env has neither, and pip then gets setuptools from the index)
    import setuptools

    version = tuple(int(part) for part in setuptools.__version__.split(".")[:2])
    offline = importlib.util.find_spec("wheel") is not None or version >= (70, 1)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(src)]
                   + ["--no-build-isolation"] * offline, check=True, capture_output=True, timeout=300)
    names = zipfile.ZipFile(next((tmp_path / "dist").glob("*.whl"))).namelist()
    for needed in ("gadgets/reconstruct.py", "gadgets/map_network.py", "gadgets/map_dictionary.py",
                   "gadgets/emit.py", "mrf_core/data/fisp_jiang2015.csv", "mrf_core/mapping/__init__.py"):
        assert needed in names
    for model in ("mrf_core/data/default_model.pt", "mrf_core/data/default_b1_model.pt"):
        if (ROOT / model).is_file():
            assert model in names, "the default models must ship in the package"
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


def test_the_last_step_runs_verify_sh_as_uid_1000_after_the_configurations_are_in_place():
    steps = [line for line in LINES if line.split(None, 1)[:1] and line.split()[0] in ("COPY", "RUN", "USER")]
    verify = next(i for i, line in enumerate(steps) if "verify.sh" in line and line.startswith("RUN "))
    assert steps[verify] == ("RUN sh /opt/mrf-gadgetron/verify.sh ${GT_ENV}/bin/python "
                             "${GT_ENV}/share/gadgetron/config")
    users = [line for line in steps[:verify] if line.startswith("USER ")]
    assert users[-1] == "USER 1000" and "RUN" not in " ".join(steps[verify + 1:])
    assert any(line.startswith("COPY config_xml/*.xml") for line in steps[:verify])
    assert "WORKDIR" not in TEXT, "verify.sh works in a fresh temporary folder; the image's WORKDIR stays"


def _stand_in_env(tmp_path: Path) -> Path:
    """bin/python runs this venv's python; bin/mrf records each call (cwd, arguments) and writes what the
    real one would: a raw file for simulate, a map file with every image series for replay."""
    bin_dir = tmp_path / "env" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (bin_dir / "mrf").write_text(f"""#!{sys.executable}
import os, sys
import h5py
with open({str(tmp_path / "calls.txt")!r}, "a") as log:
    log.write(os.getcwd() + " " + " ".join(sys.argv[1:]) + "\\n")
out = sys.argv[sys.argv.index("--out" if sys.argv[1] == "simulate" else "-o") + 1]
with h5py.File(out, "w") as f:
    for series in (0, 1, 2, 3, 5, 10, 99):
        f.create_group(f"2025-01-01 00:00:00/image_{{series}}")
""")
    for script in bin_dir.iterdir():
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir / "python"


def test_verify_sh_replays_every_shipped_configuration_by_name_from_a_folder_outside_the_package(tmp_path):
    """The Dockerfile's verification command, with a stand-in `mrf` (the real run: `make image-env`): the env's
    bin first on PATH, a scan simulated, then one replay per config_xml/*.xml by name, all from a fresh
    temporary folder that is neither the checkout nor the package; a configuration missing from Gadgetron's
    folder fails it."""
    python = _stand_in_env(tmp_path)
    gt_config = tmp_path / "share" / "gadgetron" / "config"
    gt_config.mkdir(parents=True)
    configurations = sorted(p.name for p in (ROOT / "config_xml").glob("*.xml"))
    for name in configurations:
        shutil.copy(ROOT / "config_xml" / name, gt_config / name)
    command = shlex.split(_expand(next(r for r in _instructions("RUN") if "verify.sh" in r)))
    assert command[:2] == ["sh", "/opt/mrf-gadgetron/verify.sh"] and command[2:] == [
        f"{GT_ENV}/bin/python", f"{GT_ENV}/share/gadgetron/config"]
    env = {**os.environ, "TMPDIR": str(tmp_path), "PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("MRF_CONFIG_DIR", None)
    run = subprocess.run(["sh", str(ROOT / "docker" / "verify.sh"), str(python), str(gt_config)], cwd="/",
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    calls = [line.split(" ", 1) for line in (tmp_path / "calls.txt").read_text().splitlines()]
    folders = {folder for folder, _ in calls}
    assert len(folders) == 1
    folder = Path(folders.pop())
    assert folder.parent == tmp_path and folder.name.startswith("mrf-verify.") and not folder.exists()
    assert calls[0][1].startswith("simulate ") and "--out tiny.h5" in calls[0][1]
    assert [c for _, c in calls[1:]] == [f"replay tiny.h5 -c {n} -o {n[:-4]}.h5 --quiet" for n in configurations]
    assert f"all {len(configurations)} configurations replayed" in run.stdout

    (gt_config / configurations[0]).unlink()
    run = subprocess.run(["sh", str(ROOT / "docker" / "verify.sh"), str(python), str(gt_config)], cwd="/",
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and f"{configurations[0]} is missing" in run.stderr


@pytest.mark.parametrize("script", ["install.sh", "verify.sh", "emulate.sh"])
def test_the_scripts_are_posix_sh(script):
    """The image's /bin/sh is dash: the scripts parse as POSIX sh (and under dash where it is installed)."""
    for shell in ("sh", "dash"):
        if shutil.which(shell):
            subprocess.run([shell, "-n", str(ROOT / "docker" / script)], check=True, timeout=30)


def test_make_image_env_builds_the_emulated_image_env_and_runs_the_same_install_and_check():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^image-env:.*\n\tsh docker/emulate\.sh \$\(IMAGE_ENV\)$", makefile, re.M)
    for pin in ("numpy==1.26.4", "scipy==1.13.1", "ismrmrd==1.14.1", "gadgetron==1.4.1", "h5py==3.8.0"):
        assert pin in EMULATE
    assert 'sh "$here/install.sh" "$ENV_DIR/bin/python"' in EMULATE
    assert "runuser -u \"$RUN_AS\"" in EMULATE and 'sh "$work/verify.sh" "$ENV_DIR/bin/python"' in EMULATE
    assert "(cd / && runuser" in EMULATE


def test_the_declared_minimums_admit_the_images_env():
    """pyproject's requirements are met by Gadgetron's image env (Python 3.10, numpy 1.26.4, h5py 3.7,
    scipy 1.13, ismrmrd 1.14, gadgetron-python 1.4.1), so pip never needs to replace one of them."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    text = (ROOT / "pyproject.toml").read_text()
    assert SpecifierSet(re.search(r'^requires-python = "([^"]+)"', text, re.M).group(1)).contains("3.10")
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.M | re.S).group(1)
    requirements = {r.name.lower(): r for r in map(Requirement, re.findall(r'"([^"]+)"', block))}
    image = {"numpy": "1.26.4", "h5py": "3.7.0", "scipy": "1.13.0", "ismrmrd": "1.14.0", "gadgetron": "1.4.1"}
    for name, version in image.items():
        assert requirements[name].specifier.contains(version), f"{requirements[name]} excludes the image's {version}"


def test_the_image_turns_off_numpys_huge_pages_as_the_stage_launcher_does():
    from mrf_gadgetron.host.external import HUGEPAGE_ENV

    assert f"{HUGEPAGE_ENV}=0" in _instructions("ENV")
