"""Model archives: a TorchScript file whose extra file `mrf_model.json` holds the metadata.

Format (FORMAT, FORMAT_VERSION): the scripted `MappingModule` (mrf_core.mapping.module) with its
buffers, and JSON metadata with at least: `format`, `format_version`, `package_version`, `architecture`
(name, options), `input` (kind, channels, length, normalisation), `outputs` (names, units, ranges,
scaling), `parameter_space`, `schedule` (the full schedule with its hash and name), `basis` (hash, rank,
signal_phase, role), `table`, `training` (the recipe: every argument, seed, epochs, final losses).

Loading (`read_archive`) never unpickles: torch.jit.load reads only TorchScript code and tensors, and
anything else is a ModelError naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

import mrf_core
from mrf_core.errors import MrfError
from mrf_core.io.atomic import atomic_path
from mrf_core.mapping.inputs import INPUT_KINDS
from mrf_core.physics.sequence import FispSchedule, ScheduleError
from mrf_core.physics.temporal_basis import TemporalBasis

FORMAT = "mrf-model"
FORMAT_VERSION = 1
METADATA_FILE = "mrf_model.json"
_REQUIRED = ("format", "format_version", "architecture", "input", "outputs", "parameter_space", "schedule",
             "basis", "training")
_BUFFERS = ("basis_vectors", "basis_singular_values", "table_coefficients", "table_norms", "table_lo",
            "table_step", "table_shape")


class ModelError(MrfError):
    """A model file that cannot be used: not an archive, missing or invalid metadata, wrong input."""


class ModelMismatchError(ModelError):
    """A valid model made for another schedule or basis than the scan's."""


def script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    """torch.jit.script, without this torch's TorchScript deprecation warning (TorchScript is what
    Gadgetron's C++ side and vendor runtimes load, so it stays)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.jit.script(module)


def write_archive(module: torch.nn.Module, metadata: dict, path: str | Path) -> torch.jit.ScriptModule:
    """Script `module` (in eval mode) and write it with `metadata` to `path`, atomically."""
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": mrf_core.__version__,
                **metadata}
    scripted = script(module.eval())
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(scripted, str(tmp), _extra_files={METADATA_FILE: json.dumps(metadata, indent=1)})
    return scripted


def read_archive(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.jit.ScriptModule, dict]:
    """Load and validate an archive: (scripted module in eval mode, metadata). ModelError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    extra = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError, ValueError or its own errors for a non-archive
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path} is not a TorchScript model archive ({first_line})") from None
    text = extra[METADATA_FILE]
    if not text:
        raise ModelError(f"{path} is a TorchScript file without MRF metadata ({METADATA_FILE}): not an MRF model")
    try:
        metadata = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: metadata {METADATA_FILE} is not valid JSON ({exc})") from None
    try:
        validate(module, metadata)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    return module.eval(), metadata


def validate(module, metadata) -> None:
    """Check the metadata's fields and that they agree with the module's buffers and output shape."""
    if not isinstance(metadata, dict):
        raise ModelError("metadata is not a JSON object")
    missing = [key for key in _REQUIRED if key not in metadata]
    if missing:
        raise ModelError(f"metadata lacks the field(s) {', '.join(missing)}")
    if metadata["format"] != FORMAT:
        raise ModelError(f"metadata format is {metadata['format']!r}, not {FORMAT!r}")
    if not isinstance(metadata["format_version"], int) or metadata["format_version"] > FORMAT_VERSION:
        raise ModelError(f"format_version {metadata['format_version']!r} is not one this code reads "
                         f"(<= {FORMAT_VERSION})")
    try:
        schedule = schedule_of(metadata)
        inputs, outputs, basis_meta = metadata["input"], metadata["outputs"], metadata["basis"]
        kind, length = inputs["kind"], int(inputs["length"])
        names, ranges = list(outputs["names"]), [tuple(map(float, r)) for r in outputs["ranges"]]
        basis_hash = basis_meta["hash"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"metadata field is missing or malformed: {exc!r}") from None
    if kind not in INPUT_KINDS:
        raise ModelError(f"input kind {kind!r} is not one of {INPUT_KINDS}")
    if names[:2] != ["t1_ms", "t2_ms"] or len(names) != len(ranges) or not set(names) <= {"t1_ms", "t2_ms", "b1"}:
        raise ModelError(f"outputs {names} with ranges {ranges}: expected t1_ms, t2_ms (and b1), one range each")
    for attr in _BUFFERS:
        if not hasattr(module, attr):
            raise ModelError(f"the TorchScript module has no buffer {attr!r}: not an MRF mapping module")
    basis = basis_of(module, metadata)
    if basis.hash != basis_hash:
        raise ModelError(f"stored basis hashes to {basis.hash}, metadata says {basis_hash}")
    if basis.n_timepoints != schedule.n_timepoints:
        raise ModelError(f"basis has {basis.n_timepoints} time points, schedule {schedule.n_timepoints}")
    expected_length = basis.rank if kind == "coefficients" else schedule.n_timepoints
    if length != expected_length:
        raise ModelError(f"input length {length} does not fit a {kind} model of this schedule/basis "
                         f"(expected {expected_length})")
    probe = torch.randn(2, length, generator=torch.Generator().manual_seed(0))
    device = module.basis_vectors.device
    try:
        with torch.no_grad():
            out = module(probe.to(device), probe.flip(1).to(device))
    except Exception as exc:
        raise ModelError(f"the module fails on a ({kind}, length {length}) input: {exc}") from None
    if tuple(out.shape) != (2, len(names)):
        raise ModelError(f"the module returns shape {tuple(out.shape)} for 2 voxels, expected (2, {len(names)})")


def schedule_of(metadata: dict) -> FispSchedule:
    try:
        return FispSchedule.from_dict(metadata["schedule"])
    except (ScheduleError, TypeError, KeyError) as exc:
        raise ModelError(f"metadata schedule is invalid: {exc}") from None


def basis_of(module, metadata: dict) -> TemporalBasis:
    """The TemporalBasis stored in the module's buffers (phase and schedule hash from the metadata)."""
    phase = metadata["basis"].get("signal_phase", [0.0, 1.0])
    return TemporalBasis(
        module.basis_vectors.detach().cpu().numpy().astype(np.float32),
        module.basis_singular_values.detach().cpu().numpy().astype(np.float64),
        complex(float(phase[0]), float(phase[1])), metadata["schedule"].get("hash", ""),
    )
