#!/bin/sh
# The image's own check, run by the Dockerfile's last RUN as the image's user (uid 1000) and by
# docker/emulate.sh without Docker: with PYTHON's environment, from a fresh folder outside the package,
# simulate a tiny scan and replay it through every stream configuration the package ships (the chain of
# <external> Python nodes, each a `python -m gadgetron` process as Gadgetron starts it); any failure fails.
#
#   sh docker/verify.sh PYTHON [GADGETRON_CONFIG_DIR]
#
# GADGETRON_CONFIG_DIR: where Gadgetron finds configurations by name ($GADGETRON_HOME/share/gadgetron/config);
# each shipped configuration must be there, identical. Caches and outputs go to the temporary folder (removed
# at the end), so the check leaves nothing behind. About a minute on 2 CPU cores.
set -eu

PY=${1:?usage: verify.sh PYTHON [GADGETRON_CONFIG_DIR]}
GT_CONFIG=${2:-}
# the env's bin first on PATH, as the image's entrypoint puts it: Gadgetron starts its `python`; `mrf` is there
PATH="$(dirname "$PY"):$PATH"
export PATH
[ "$(command -v python)" = "$(dirname "$PY")/python" ] || { echo "verify.sh: no python in $(dirname "$PY")" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/mrf-verify.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

# the runtime cache folder (dictionaries, PSF kernels) should be writable by this user; a warning only: the
# gadgets log an unwritable cache and go on
python -c 'import os, tempfile
import mrf_core
root = mrf_core.cache_dir("dictionaries").parent
try:
    root.mkdir(parents=True, exist_ok=True)
    tempfile.TemporaryFile(dir=root).close()
except OSError as exc:
    print(f"verify.sh: warning: the cache folder {root} is not writable by uid {os.getuid()} ({exc}): "
          "dictionaries are then built for every scan (set dictionary_cache_dir, or mount a volume there)")'
XDG_CACHE_HOME="$work/cache" MPLCONFIGDIR="$work/matplotlib"
export XDG_CACHE_HOME MPLCONFIGDIR

# the installed package (not one in the working folder), torch the CPU build, the default model there
python -c 'import os, sys
from pathlib import Path
import torch
import mrf_core, mrf_gadgetron
import gadgets.emit, gadgets.map_dictionary, gadgets.map_network, gadgets.qa, gadgets.reconstruct
from mrf_core.mapping import default_model_path
print(f"verify.sh: uid {os.getuid()}, cwd {os.getcwd()}, {sys.executable} (Python {sys.version.split()[0]}), "
      f"mrf_core from {Path(mrf_core.__file__).parent}")
assert Path.cwd() not in Path(mrf_core.__file__).parents, "mrf_core comes from the working folder"
assert torch.__version__.startswith("2.13.0") and torch.version.cuda is None, "not torch 2.13.0 CPU: " + torch.__version__
assert default_model_path().is_file() and default_model_path(b1_input=True).is_file(), "a default model is missing"'

# every configuration the package ships (mrf replay finds them by name there); each also in Gadgetron's folder
folder=$(python -c 'from mrf_gadgetron.host.stream_config import default_config_dir; print(default_config_dir())')
configs=$(cd "$folder" && ls -- *.xml)
[ -n "$configs" ] || { echo "verify.sh: no stream configuration in $folder" >&2; exit 1; }
if [ -n "$GT_CONFIG" ]; then
    for name in $configs; do
        cmp -s "$folder/$name" "$GT_CONFIG/$name" \
            || { echo "verify.sh: $GT_CONFIG/$name is missing or differs from $folder/$name" >&2; exit 1; }
    done
fi

# a tiny 3 T NiCl2 plate: 32^2, 40 TRs, 2 coils (its dictionary builds in under a second)
mrf simulate --phantom nist-t1 --field 3 --matrix 32 --timepoints 40 --coils 2 --interleaves 8 \
    --centre-interleaves 4 --out tiny.h5
for name in $configs; do
    echo "verify.sh: mrf replay tiny.h5 -c $name"
    mrf replay tiny.h5 -c "$name" -o "${name%.xml}.h5" --quiet
    # the images the chain must deliver: emit's T1, T2, PD; qa's figure; reconstruct alone: the coefficients
    python - "$name" "${name%.xml}.h5" <<'EOF'
import sys

import h5py

from mrf_gadgetron.host.stream_config import find_config

name, path = sys.argv[1:]
modules = [node.module for node in find_config(name).nodes]
with h5py.File(path, "r") as f:
    series = {int(key.split("_")[1]) for group in f.values() for key in group if key.startswith("image_")}
need = set()
if "gadgets.emit" in modules:
    need |= {1, 2, 3}
if "gadgets.qa" in modules:
    need |= {99}
if modules == ["gadgets.reconstruct"]:
    need |= {0, 10}
assert need and need <= series, f"{name}: image series {sorted(series)}, expected {sorted(need)} from {modules}"
print(f"verify.sh: {name}: image series {sorted(series)}")
EOF
done
echo "verify.sh: all $(echo "$configs" | wc -w) configurations replayed:" $configs
