#!/bin/sh
# Gadgetron's runtime image without Docker (`make image-env`): a venv with the image's Python packages at the
# image's versions, the package installed into it as the Dockerfile does (docker/install.sh: torch 2.13.0 CPU,
# then the wheel, replacing nothing), and the Dockerfile's check (docker/verify.sh: a tiny scan replayed
# through every shipped configuration) run as a non-root user from /.
#
#   sh docker/emulate.sh [ENV_DIR]        (default /tmp/mrf-image-env; rebuilt each time)
#   RUN_TESTS=1 sh docker/emulate.sh ...  (CI: also the test suite against the installed wheel, below)
#
# The image (ghcr.io/gadgetron/gadgetron/ubuntu22.04_rt_nocuda) has Python 3.10 with numpy 1.26.4, h5py 3.7,
# scipy 1.13, ismrmrd 1.14, gadgetron 1.4.1 and a setuptools older than torch's >= 77. The venv uses Python 3.11
# (PYTHON; default /usr/bin/python3.11 where there is one, else python3.11: an interpreter under /root, like
# pyenv's, cannot run as another user) because no CPU build of torch 2.13.0 for Python 3.10 is at hand; h5py
# 3.7.0 has no wheel for 3.11, so the oldest that has one, 3.8.0, stands in (IMAGE_PINS: the pins). The venv's
# own setuptools (65.5 or 66.1 with Python 3.11) stands for the image's old one.
# TORCH_INDEX: an extra index for torch 2.13.0+cpu (default the PyTorch CPU index; empty: pip's configured
# indexes and find-links only, as on a machine with the wheel at hand).
# Run as root, the check runs as RUN_AS (default nobody) with a clean environment and a HOME of its own in a
# temporary folder (ENV_DIR must be readable by that user: /tmp is); run as another user, as that user.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
ENV_DIR=${1:-/tmp/mrf-image-env}
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then  # a system interpreter first: one under /root (pyenv) cannot run as another user
    for candidate in /usr/bin/python3.11 /usr/local/bin/python3.11 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$candidate; break; fi
    done
fi
IMAGE_PINS=${IMAGE_PINS:-"numpy==1.26.4 h5py==3.8.0 scipy==1.13.1 ismrmrd==1.14.1 gadgetron==1.4.1"}
TORCH_INDEX=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}
RUN_AS=${RUN_AS:-nobody}
started=$(date +%s)

# 1. the image's env: a fresh venv, world-readable, with the image's packages
umask 022
rm -rf "$ENV_DIR"
"$PYTHON" -m venv "$ENV_DIR"
if [ "$(id -u)" = 0 ] && ! (cd / && runuser -u "$RUN_AS" -- "$ENV_DIR/bin/python" -c pass); then
    echo "emulate.sh: $RUN_AS cannot run $PYTHON ($(readlink -f "$ENV_DIR/bin/python")): set PYTHON to an" \
        "interpreter every user can run (e.g. /usr/bin/python3.11)" >&2
    exit 1
fi
# shellcheck disable=SC2086
"$ENV_DIR/bin/python" -m pip install --disable-pip-version-check -q $IMAGE_PINS
echo "emulate.sh: image env $ENV_DIR: $("$ENV_DIR/bin/python" -c 'import sys, importlib.metadata as m
names = ("numpy", "h5py", "scipy", "ismrmrd", "gadgetron", "setuptools")
print("Python", sys.version.split()[0], *(f"{n} {m.version(n)}" for n in names))')"

# 2. what the Docker build context holds (the Dockerfile's COPY lines), installed as the Dockerfile does
work=$(mktemp -d "${TMPDIR:-/tmp}/mrf-emulate.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
for path in pyproject.toml README.md mrf_core gadgets mrf_gadgetron config_xml; do
    cp -R "$root/$path" "$work/src/"
done
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
sh "$here/install.sh" "$ENV_DIR/bin/python" "$work/src" "$TORCH_INDEX"
installed=$(date +%s)

# 3. the Dockerfile's check and `mrf demo`, as a non-root user from /, with the env's python
chmod 755 "$work"
cp "$here/verify.sh" "$work/verify.sh"
demo='out=$(mktemp -d); PATH="$(dirname "$1"):$PATH" mrf demo --out "$out/demo" > "$out/demo.log" 2>&1 \
    || { cat "$out/demo.log"; exit 1; }; tail -n 3 "$out/demo.log"'
if [ "$(id -u)" = 0 ]; then
    home="$work/home"
    mkdir "$home"
    chown "$RUN_AS" "$home"
    as_user() { (cd / && runuser -u "$RUN_AS" -- env -i HOME="$home" TMPDIR="$home" PATH=/usr/bin:/bin \
        LANG=C.UTF-8 "$@"); }
else
    as_user() { (cd / && "$@"); }
fi
as_user sh "$work/verify.sh" "$ENV_DIR/bin/python"
as_user sh -c "$demo" demo "$ENV_DIR/bin/python"
checked=$(date +%s)
echo "emulate.sh: env built and package installed in $((installed - started)) s, check and demo passed in" \
    "$((checked - installed)) s; the env stays in $ENV_DIR"

# 4. RUN_TESTS=1: the test suite against the installed wheel, from a copy of tests/ outside the checkout (so
# nothing can come from the source tree; the repository's own file checks are skipped there), with the test
# extras (nibabel, pydicom, dask) resolved against the image's pins
if [ "${RUN_TESTS:-0}" = 1 ]; then
    sh "$here/install.sh" --constraints "$ENV_DIR/bin/python" > "$work/constraints.txt"
    "$ENV_DIR/bin/python" -m pip install --disable-pip-version-check -q -c "$work/constraints.txt" pytest nibabel \
        "pydicom>=3.0.1" "dask[distributed]>=2024.1.0"
    cp -R "$root/tests" "$work/tests"
    find "$work/tests" -name __pycache__ -prune -exec rm -rf {} +
    (cd "$work" && HOME="$work" XDG_CACHE_HOME="$work/cache" "$ENV_DIR/bin/python" -m pytest -q -ra \
        -p no:cacheprovider -W "ignore::DeprecationWarning:torch.*" tests)
    echo "emulate.sh: test suite passed against the installed wheel in $(($(date +%s) - checked)) s"
fi
