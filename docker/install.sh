#!/bin/sh
# Install torch 2.13.0 (CPU build) and mrf-gadgetron into the Python environment of PYTHON (Gadgetron's conda
# env "gadgetron" in the Dockerfile; the emulated env of docker/emulate.sh) without replacing any package that
# environment has: numpy, h5py, scipy, ismrmrd, gadgetron, setuptools, ... stay the env's own (its h5py,
# ismrmrd and Gadgetron's Python side are built and tested against them).
#
#   sh docker/install.sh PYTHON SOURCE [TORCH_INDEX]
#   sh docker/install.sh --constraints PYTHON      (print the constraints only)
#
# SOURCE: a source tree (pyproject.toml, README.md, mrf_core/, gadgets/, mrf_gadgetron/, config_xml/), built
# here into a wheel, or a built wheel. TORCH_INDEX: an extra index that has torch 2.13.0+cpu
# (https://download.pytorch.org/whl/cpu); empty: pip's configured indexes and find-links only.
#
# How: every distribution already installed is a constraint (name==version) of each pip call that resolves,
# so pip can only add packages. torch 2.13.0 requires setuptools>=77.0.3, which older envs do not meet, and
# needs setuptools only to compile C++ extensions (torch.utils.cpp_extension), which nothing here does. So
# torch goes in alone with --no-deps; its other requirements are installed with the package's (from the
# wheel's metadata, torch left out), then the package with --no-deps: pip never re-resolves torch (it would
# pick another build to get setuptools>=77). pip then reports torch's setuptools requirement as unmet:
# expected. At the end: every distribution that was there is unchanged, and torch is the CPU build.
set -eu

# one name==version per installed distribution of $1 (a version pip cannot parse is left out)
constraints_of() {
    "$1" -c 'import importlib.metadata as m
from pip._vendor.packaging.version import InvalidVersion, Version
found = {}
for d in m.distributions():
    name = (d.metadata["Name"] or "").strip()
    try:
        Version(d.version)
    except (InvalidVersion, TypeError):
        continue
    if name:
        found.setdefault(name.lower().replace("_", "-"), d.version)
print("\n".join(f"{n}=={v}" for n, v in sorted(found.items())))'
}

if [ "${1:-}" = --constraints ]; then
    constraints_of "${2:?usage: install.sh --constraints PYTHON}"
    exit 0
fi
PY=${1:?usage: install.sh PYTHON SOURCE [TORCH_INDEX]}
SRC=${2:?usage: install.sh PYTHON SOURCE [TORCH_INDEX]}
TORCH_INDEX=${3:-}
TORCH=torch==2.13.0+cpu

work=$(mktemp -d "${TMPDIR:-/tmp}/mrf-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
pip() { "$PY" -m pip --no-cache-dir --disable-pip-version-check "$@"; }

"$PY" -m pip --version >/dev/null 2>&1 || "$PY" -m ensurepip
"$PY" -c 'import sys; assert sys.version_info >= (3, 10), "mrf-gadgetron needs Python >= 3.10: " + sys.version'

# 1. the env as it is: the constraints
constraints_of "$PY" > "$work/constraints.txt"
echo "install.sh: the $(wc -l < "$work/constraints.txt") distributions of $PY's env stay as they are, among them:" \
    $(grep -iE '^(numpy|h5py|scipy|setuptools|ismrmrd|gadgetron)==' "$work/constraints.txt")

# 2. torch, CPU build, alone (see above); a torch 2.13.0 CPU build already there is kept
if ! "$PY" -c 'import sys, torch
sys.exit(0 if torch.__version__.startswith("2.13.0") and torch.version.cuda is None else 1)' 2>/dev/null; then
    pip install --no-deps ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} "$TORCH"
fi

# 3. the package as a wheel
case "$SRC" in
    *.whl) wheel=$SRC ;;
    *) pip wheel --no-deps -q -w "$work/wheel" "$SRC"; wheel=$(ls "$work"/wheel/*.whl) ;;
esac

# 4. torch's requirements but setuptools, the package's but torch (no extras), under the constraints; then
# the package itself, alone
"$PY" - "$wheel" > "$work/requirements.txt" <<'EOF'
import email
import importlib.metadata as m
import re
import sys
import zipfile


def plain(requirements, leave_out):
    for r in requirements or []:
        name = re.match(r"\s*([A-Za-z0-9._-]+)", r).group(1).lower().replace("_", "-")
        if not re.search(r"\bextra\s*==", r) and name != leave_out:
            print(r)


plain(m.requires("torch"), "setuptools")
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    plain(email.message_from_bytes(z.read(meta)).get_all("Requires-Dist"), "torch")
EOF
echo "install.sh: requirements:" $(cat "$work/requirements.txt")
pip install -c "$work/constraints.txt" -r "$work/requirements.txt"
pip install --no-deps --force-reinstall "$wheel"

# 5. nothing replaced or removed (but an earlier torch or mrf-gadgetron), torch the CPU build, the package
# importable with its model
constraints_of "$PY" > "$work/after.txt"
changed=$(grep -vxF -f "$work/after.txt" "$work/constraints.txt" | grep -vE '^(torch|mrf-gadgetron)==' || true)
if [ -n "$changed" ]; then
    echo "install.sh: pip replaced or removed distributions of the env; they were:" $changed >&2
    exit 1
fi
"$PY" -c 'import torch
assert torch.__version__.startswith("2.13.0") and torch.version.cuda is None, "not torch 2.13.0 CPU: " + torch.__version__
import gadgets.emit, gadgets.map_dictionary, gadgets.map_network, gadgets.qa, gadgets.reconstruct
from mrf_core.mapping import default_model_path
assert default_model_path().is_file() and default_model_path(b1_input=True).is_file(), "a default model is missing"'
echo "install.sh: added $(grep -cvxF -f "$work/constraints.txt" "$work/after.txt") distributions; none of the env's changed"
