"""The one table of reconstruction settings: gadget properties and `mrf reconstruct` flags come from it.

Each `Setting` has a name (the gadget property `name`, the command-line flag `--name-with-dashes`), a
default written as in a stream configuration, a parser (str -> value, ValueError with a short reason), a
help text, and the stages that read it:

    gather      the scan header and acquisitions -> complete slices   (gadget reconstruct)
    recon       the temporal basis and the subspace reconstruction    (gadget reconstruct)
    network     the mapping network                                    (gadget map_network)
    dictionary  dictionary building and matching                       (gadgets reconstruct, map_dictionary)
    output      which images leave the pipeline, and how              (gadget emit)
    cli         only the command line (in a chain the nodes of the configuration decide)

A gadget reads the settings of its stages (`for_stages`); the command line offers them all. Defaults live
here or, for the reconstruction, in mrf_core.recon.reconstruct.reconstruct.ReconSettings, whose values the table shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import mrf_core
from mrf_core.errors import MrfError

# Literal copies of the choices of the library modules, so that reading the table (and `mrf --help`)
# does not import torch or numba; tests check them against the modules.
METHODS = ("gridding", "backprojection", "cg", "llr")
COIL_METHODS = ("lowres", "espirit")
NUFFT_BACKENDS = ("finufft", "sigpy", "cufinufft", "dft")
GRIDS = ("percent", "song", "oksuz")
MAPPERS = ("network", "dictionary", "none")
TRAJ_UNITS = ("cycles_per_fov", "normalised", "cycles_per_m", "rad_per_m")
QUANTITY_KEYS = ("t1_ms", "t2_ms", "pd", "b1", "quality")
PULSE_SHAPES = ("hann-sinc",)  # mrf_core.physics.slice_profile.PULSE_SHAPES
CACHE_HOME = "$XDG_CACHE_HOME"
# ReconSettings' defaults, literal for the same reason (tests check them against ReconSettings).
RECON_DEFAULTS = {"method": "llr", "n_virtual_coils": 8, "coil_energy": 0.999, "coil_method": "lowres",
                  "nufft_backend": "finufft",
                  "llr_lambda": 1.2, "n_threads": 2, "iterations": {"cg": 5, "llr": 27}}


class SettingsError(MrfError):
    """A setting that is unknown, repeated or has a value its parser rejects."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    parse: Callable[[str], object]
    help: str
    stages: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


# ---- parsers: str -> value, ValueError with a short reason -----------------------------------------
def text(value: str) -> str:
    return value.strip()


def optional_path(value: str) -> Path | None:
    """Empty means none; a leading `$XDG_CACHE_HOME` is that variable's folder (else ~/.cache), resolved
    when parsed, so a default names the rule rather than one machine's folder."""
    value = value.strip()
    if value.startswith(CACHE_HOME):
        value = str(mrf_core.cache_dir("").parent) + value[len(CACHE_HOME):]
    return Path(value).expanduser() if value else None


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value.strip())
        if number < low or (high is not None and number > high):
            raise ValueError(f"must be an integer in [{low}, {high if high is not None else 'inf'}]")
        return number

    return parse


def number(low: float, high: float | None = None, low_open: bool = False) -> Callable[[str], float]:
    def parse(value: str) -> float:
        x = float(value.strip())
        below = x <= low if low_open else x < low
        if not x == x or below or (high is not None and x > high):
            bracket = "(" if low_open else "["
            raise ValueError(f"must be a number in {bracket}{low:g}, {high if high is not None else 'inf'}]")
        return x

    return parse


def optional_number(low: float, high: float | None = None) -> Callable[[str], float | None]:
    """A number in [low, high], or None when empty."""
    parse = number(low, high)
    return lambda value: parse(value) if value.strip() else None


def boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError("must be true or false")


def choice(*options: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        value = value.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def device(value: str) -> str:
    """cpu, cuda or cuda:N."""
    value = value.strip().lower()
    kind, _, index = value.partition(":")
    if kind == "cpu" and not index or kind == "cuda" and (not index or index.isdigit()):
        return value
    raise ValueError("must be cpu, cuda or cuda:N")


def window(value: str) -> tuple[float, float] | None:
    """'centre,width' in the map's unit; empty means the table default."""
    if not value.strip():
        return None
    parts = [float(p) for p in value.split(",")]
    if len(parts) != 2 or not parts[1] > 0:
        raise ValueError("must be 'centre,width' with width > 0 (or empty for the default)")
    return parts[0], parts[1]


def names(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """A comma-separated subset of `allowed`, in the order given."""

    def parse(value: str) -> tuple[str, ...]:
        chosen = tuple(p.strip() for p in value.split(",") if p.strip())
        unknown = [c for c in chosen if c not in allowed]
        if unknown or not chosen:
            raise ValueError(f"must be a comma-separated list of {', '.join(allowed)}")
        return chosen

    return parse


def b1_values(value: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in value.split(",") if v.strip())
    if not values or any(not 0.1 <= v <= 3.0 for v in values):
        raise ValueError("must be a comma-separated list of relative B1 values in [0.1, 3]")
    return values


def slice_profile(value: str) -> str:
    """'none', or SHAPE:TBW[:N] (N sub-slices), e.g. hann-sinc:4; as mrf_core.physics.slice_profile parses it."""
    text = value.strip().lower() or "none"
    if text == "none":
        return text
    parts = text.split(":")
    try:
        ok = (len(parts) in (2, 3) and parts[0] in PULSE_SHAPES and 1 <= float(parts[1]) <= 50
              and all(int(p) >= 1 for p in parts[2:]))
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"must be none or SHAPE:TBW[:N] (SHAPE {', '.join(PULSE_SHAPES)}, TBW in [1, 50], N >= 1 "
                         "sub-slices), e.g. hann-sinc:4")
    return text


# ---- the table --------------------------------------------------------------------------------------
_R = RECON_DEFAULTS
SETTINGS: tuple[Setting, ...] = (
    # gather
    Setting("index_map", "", text,
            "acquisition fields of time point, interleave, slice and partition, e.g. 'timepoint=user_int[0]'; "
            "empty: the header's MRF_index_map, else detected from the counters (README: Raw data from scanners)",
            ("gather",)),
    Setting("schedule_file", "", optional_path,
            "schedule file (JSON or CSV), or a built-in schedule's name (fisp_jiang2015, fisp_jiang2015[:N]), "
            "replacing the header's sequenceParameters; empty: the header's", ("gather",)),
    Setting("max_missing_fraction", "0.02", number(0.0, 0.99),
            "fraction of a slice's time points that may be missing (dropped readouts; reconstructed with a "
            "warning); a scan stopped early is reconstructed with the schedule's first time points", ("gather",)),
    Setting("traj_units", "auto", choice("auto", *TRAJ_UNITS),
            "units of the readouts' traj: " + ", ".join(TRAJ_UNITS) + " (the last two with the header's FOV); "
            "auto: detected from the largest |k| and logged", ("gather",)),
    # reconstruction
    Setting("method", _R["method"], choice(*METHODS), "reconstruction method: " + ", ".join(METHODS), ("recon",)),
    Setting("rank", "0", integer(0, 64),
            "subspace rank: a dictionary basis truncated to it (0: the whole basis, rank 10 for the built "
            "dictionaries; a model's basis is always used whole)", ("recon",)),
    Setting("iterations", "0", integer(0, 1000),
            f"iterations of cg / llr (0: the method's measured default, cg {_R['iterations']['cg']}, "
            f"llr {_R['iterations']['llr']})", ("recon",)),
    Setting("llr_lambda", f"{_R['llr_lambda']:g}", number(0.0),
            "locally low-rank weight of method llr, relative to the largest block singular value", ("recon",)),
    Setting("virtual_coils", str(_R["n_virtual_coils"]), integer(0, 256),
            "coil compression to at most this many virtual coils (0: none)", ("recon",)),
    Setting("coil_energy", f"{_R['coil_energy']:g}", number(0.0, 1.0, low_open=True),
            "coil compression keeps the fewest virtual coils (up to virtual_coils) that hold this fraction of "
            "the whitened data's energy (1: always virtual_coils)", ("recon",)),
    Setting("coil_method", _R["coil_method"], choice(*COIL_METHODS), "coil sensitivity estimation", ("recon",)),
    Setting("nufft_backend", _R["nufft_backend"], choice(*NUFFT_BACKENDS), "NUFFT implementation", ("recon",)),
    Setting("psf_cache_dir", f"{CACHE_HOME}/mrf-gadgetron/psf", optional_path,
            "folder caching Toeplitz PSF kernels and per-interleave PSF spectra (empty: no cache)", ("recon",)),
    Setting("mask_fraction", "0.1", number(0.0, 0.99),
            "object mask: voxels whose time-average magnitude exceeds this fraction of its 99th percentile "
            "(0: no mask)", ("recon",)),
    Setting("basis", "auto", choice("auto", "model", "dictionary", "fitted"),
            "the temporal basis: the network model's (model), the dictionary's (dictionary), the dictionary's "
            "refitted to each slice's tissues after a first pass (fitted: two passes, needs a b1_map), or auto: "
            "fitted with a b1_map, else the model's when it fits the scan, else the dictionary's", ("recon",)),
    Setting("device", "cpu", device, "torch device of the reconstruction and the network (cpu, cuda, cuda:N)",
            ("recon", "network")),
    Setting("threads", str(_R["n_threads"]), integer(0, 256),
            "threads of torch, finufft and the FFTs in each stage (0: torch's default)",
            ("recon", "network", "dictionary")),
    # mapping
    Setting("mapper", "network", choice(*MAPPERS),
            "how coefficients become maps: the network with dictionary fallback, the dictionary only, or none "
            "(coefficient images only); in a chain its nodes decide", ("cli",)),
    Setting("model", "", optional_path, "network model archive (.pt); empty: the package's default model (with a "
            "b1_map: its default model that takes B1 as an input)",
            ("recon", "network")),
    Setting("dictionary_file", "", optional_path,
            "dictionary HDF5 file (mrf dictionary build); empty: one built for the scan's schedule",
            ("recon", "dictionary")),
    Setting("grid", "percent", choice(*GRIDS), "grid of a built dictionary: " + ", ".join(GRIDS),
            ("recon", "dictionary")),
    Setting("grid_step_pct", "5", number(0.0, 100.0, low_open=True), "step of the percent grid, %",
            ("recon", "dictionary")),
    Setting("b1_values", "1.0", b1_values, "B1 axis of a built dictionary (comma-separated, relative)",
            ("recon", "dictionary")),
    Setting("b1_map", "", optional_path,
            "measured B1 map (relative; .nii/.nii.gz, .npy/.npz, or ISMRMRD images), resampled to each slice: "
            "the dictionary is matched in each voxel's B1 slice (built with B1 0.6-1.4 step 0.05 unless b1_values "
            "has several values, and a wide basis for the fitted basis), the default network takes B1 as an input "
            "(a model without one falls back to the dictionary); empty: B1 = 1 assumed",
            ("recon", "network", "dictionary")),
    Setting("slice_profile", "none", slice_profile,
            "RF pulse whose 2-D slice profile the dictionary models, e.g. hann-sinc:4 (Hann-windowed sinc, "
            "time-bandwidth 4; x20 build time); none: an ideal profile; a dictionary_file must have been built "
            "with the same", ("recon", "network", "dictionary")),
    Setting("n_states", "50", integer(2, 1000), "EPG states of a built dictionary", ("recon", "dictionary")),
    Setting("dictionary_rank", "10", integer(1, 64), "SVD basis rank of a built dictionary",
            ("recon", "dictionary")),
    Setting("dictionary_cache_dir", f"{CACHE_HOME}/mrf-gadgetron/dictionaries", optional_path,
            "folder keeping built dictionaries by schedule and settings (empty: no cache)", ("recon", "dictionary")),
    Setting("search", "auto", choice("auto", "exhaustive", "pruned"),
            "dictionary search (auto: the cheaper exact search by a cost model)", ("dictionary",)),
    # output
    Setting("series_base", "1", integer(0, 65000),
            "image_series_index of T1; T2, PD, B1 and quality follow (+1 ... +4)", ("output",)),
    Setting("maps", ",".join(QUANTITY_KEYS), names(QUANTITY_KEYS),
            "maps to output, of " + ", ".join(QUANTITY_KEYS) + " (B1 only when estimated or from a b1_map)",
            ("output",)),
    Setting("ushort", "false", boolean, "scaled unsigned short images (GADGETRON_ScaleRatio) instead of float",
            ("output",)),
    Setting("t1_window", "", window, "T1 display window 'centre,width' in ms (empty: 1500,3000)", ("output",)),
    Setting("t2_window", "", window, "T2 display window 'centre,width' in ms (empty: 150,300)", ("output",)),
    Setting("coefficient_images", "false", boolean,
            "also output each slice's complex subspace coefficient images (series 10)", ("output",)),
)
BY_NAME = {s.name: s for s in SETTINGS}


def for_stages(*stages: str) -> tuple[Setting, ...]:
    """The settings read by any of `stages`, in table order."""
    return tuple(s for s in SETTINGS if set(s.stages) & set(stages))


def parse_settings(given: dict[str, str], table: Iterable[Setting] = SETTINGS, where: str = "settings",
                   kind: str = "setting") -> SimpleNamespace:
    """Parse `given` (name -> text) against `table`, defaults for the rest: one attribute per setting.
    SettingsError names `where`, the `kind` of name (setting, property), the name and what it accepts."""
    known = {s.name: s for s in table}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise SettingsError(f"{where}: unknown {kind} {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    values = {}
    for name, setting in known.items():
        raw = given.get(name, setting.default)
        try:
            values[name] = setting.parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{where}: {kind} {name} = {raw!r}: {exc}") from None
    return SimpleNamespace(**values)


_READERS = {"gather": "reconstruct", "recon": "reconstruct", "network": "map_network",
            "dictionary": "map_dictionary", "output": "emit", "cli": "command line only"}


def markdown_table() -> str:
    """The table as Markdown, for the README (`python -m mrf_core.settings` prints it)."""
    rows = ["| setting (property, `--flag`) | default | read by | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        readers = ", ".join(dict.fromkeys(_READERS[stage] for stage in s.stages))
        default = f"`{s.default}`" if s.default else "(empty)"
        rows.append(f"| `{s.name}` | {default} | {readers} | {s.help.replace('|', '/')} |")
    return "\n".join(rows)


def defaults(*stages: str) -> SimpleNamespace:
    """Every setting of `stages` (all without) at its default."""
    return parse_settings({}, for_stages(*stages) if stages else SETTINGS)


if __name__ == "__main__":
    print(markdown_table())
