"""Gadget reconstruct: spiral MRF acquisitions -> subspace coefficient images, one per slice.

Stages: header check (gadgets.gather.scan_info) -> the temporal basis -> gather slices -> NUFFT low-rank
subspace reconstruction (mrf_core.recon.reconstruct) -> object mask -> a basis image (once) and a K-channel complex
coefficient image per slice, with the geometry of the slice's acquisitions (gadgets.stage_images).
Gather and reconstruct share one process so raw data cross a socket only once.

The basis must be one the mappers after it can use (`basis` property):
- "model": the network model's basis (used whole; `rank` does not apply), an error if the model cannot
  be used for this scan;
- "dictionary": the basis of the dictionary map_dictionary will use (same dictionary properties and
  cache), truncated to `rank`;
- "auto" (default): the model's when the model loads and was trained for the scan's schedule, else the
  dictionary's. Either way the mappers convert coefficients to their own basis when the hashes differ.
Voxels outside the object mask (time-average image above mask_fraction of its 99th percentile) are set
to 0, which every mapper leaves unmapped.
"""

from __future__ import annotations

import logging

import ismrmrd
import numpy as np

from gadgets.dictionary_source import DICTIONARY_PROPERTIES, dictionary_for
from gadgets.gather import GATHER_PROPERTIES, gathered, scan_info
from gadgets.model_source import MODEL_PROPERTIES, load_network
from gadgets.properties import GadgetConfigError, Property, choice, integer, number, optional_path, read_properties
from gadgets.runtime import THREADS_PROPERTY, one_line, run_gadget, set_threads
from gadgets.stage_images import basis_image
from mrf_core.io.map_images import ImageGeometry, coefficient_image
from mrf_core.mapping.maps import object_mask
from mrf_core.physics.sequence import FispSchedule
from mrf_core.physics.temporal_basis import TemporalBasis
from mrf_core.recon.coils import COIL_METHODS
from mrf_core.recon.nufft import BACKENDS, DEFAULT_THREADS
from mrf_core.recon.reconstruct import METHODS, ReconSettings, reconstruct_slice

log = logging.getLogger(__name__)

NAME = "reconstruct"
COEFFICIENT_SERIES = 1
_DEFAULTS = ReconSettings()
RECON_PROPERTIES = (
    Property("method", _DEFAULTS.method, choice(*METHODS),
             "reconstruction: " + ", ".join(METHODS) + " (mrf_core.recon.reconstruct; default measured there)"),
    Property("rank", "0", integer(0, 64), "subspace rank of a dictionary basis (0: the whole basis)"),
    Property("virtual_coils", "8", integer(0, 256), "coil compression to this many virtual coils (0: none)"),
    Property("coil_method", "lowres", choice(*COIL_METHODS), "coil sensitivity estimation"),
    Property("nufft_backend", "finufft", choice(*BACKENDS), "NUFFT implementation"),
    Property("iterations", "0", integer(0, 1000), "iterations of cg / llr (0: the method's measured default)"),
    Property("llr_lambda", str(_DEFAULTS.llr_lambda), number(0.0),
             "locally low-rank regularisation (method llr; relative)"),
    Property("device", "cpu", choice("cpu", "cuda"), "device of the reconstruction"),
    Property("psf_cache_dir", "", optional_path, "folder caching Toeplitz PSF kernels (empty: no cache)"),
    Property("mask_fraction", "0.1", number(0.0, 0.99),
             "object mask: time average above this fraction of its 99th percentile (0: no mask)"),
    Property("basis", "auto", choice("auto", "model", "dictionary"), "where the temporal basis comes from"),
)
PROPERTIES = (*GATHER_PROPERTIES, *RECON_PROPERTIES, MODEL_PROPERTIES[0], *DICTIONARY_PROPERTIES, THREADS_PROPERTY)


def recon_basis(settings, schedule: FispSchedule) -> tuple[TemporalBasis, str]:
    """The basis to reconstruct in, and where it came from (module docstring)."""
    if settings.basis != "dictionary":
        model, reason = load_network(settings.model, "cpu")
        if model is not None:
            try:
                model.check(schedule)
                if model.basis is None:
                    raise ValueError(f"model {model.path.name} maps time courses: it has no subspace basis")
                return model.basis, f"model {model.path.name}"
            except ValueError as exc:
                reason = one_line(exc)
        if settings.basis == "model":
            raise GadgetConfigError(f"basis = model, but the model cannot be used: {reason}")
        log.info("%s: basis from the dictionary (the network model cannot be used: %s)", NAME, reason)
    dictionary = dictionary_for(schedule, settings)
    if settings.rank > dictionary.basis.rank:
        raise GadgetConfigError(f"rank = {settings.rank} exceeds the dictionary basis' rank "
                                f"{dictionary.basis.rank} (property dictionary_rank)")
    return dictionary.basis, "dictionary"


def recon_settings(settings, basis_source: str) -> ReconSettings:
    rank = settings.rank if basis_source == "dictionary" and settings.rank > 0 else None
    return ReconSettings(
        method=settings.method, rank=rank, n_virtual_coils=settings.virtual_coils or None,
        coil_method=settings.coil_method, nufft_backend=settings.nufft_backend,
        n_iterations=settings.iterations or None,
        llr_lambda=settings.llr_lambda, device=settings.device,
        n_threads=settings.threads or DEFAULT_THREADS,
        psf_cache_dir=str(settings.psf_cache_dir) if settings.psf_cache_dir is not None else None,
    )


def _fov_z(header, default: float) -> float:
    try:
        return float(header.encoding[0].encodedSpace.fieldOfView_mm.z) or default
    except (AttributeError, IndexError, TypeError):
        return default


def reconstruct(connection) -> None:
    """Gadgetron target: acquisitions in; a basis image, then one coefficient image per slice out."""

    def body() -> None:
        settings = read_properties(connection.config, PROPERTIES, NAME)
        set_threads(settings.threads)
        info = scan_info(connection.header, settings)
        basis, source = recon_basis(settings, info.schedule)
        options = recon_settings(settings, source)
        log.info("%s: %s reconstruction in the basis of the %s (rank %d, hash %s)", NAME, options.method, source,
                 options.rank or basis.rank, basis.hash)
        fov = (info.fov_mm, info.fov_mm, _fov_z(connection.header, 1.0))
        connection.filter(ismrmrd.Acquisition)  # anything else goes straight on
        announced: set[str] = set()
        for data in gathered(connection, info, settings):
            result = reconstruct_slice(data, basis, options)
            if result.basis.hash not in announced:
                connection.send(basis_image(result.basis, info.schedule))
                announced.add(result.basis.hash)
            coefficients = result.coefficients
            if settings.mask_fraction > 0:
                coefficients = np.where(object_mask(result.time_average, settings.mask_fraction)[None],
                                        coefficients, 0).astype(np.complex64)
            geometry = ImageGeometry.from_acquisition(data.acquisition_header, fov) if data.acquisition_header \
                else ImageGeometry(fov)
            connection.send(coefficient_image(coefficients, result.basis.hash, geometry, data.slice_index,
                                              COEFFICIENT_SERIES))
            timings = ", ".join(f"{k} {v:.2f}" for k, v in result.timings_s.items())
            log.info("%s: slice %d (%d readouts, %d coils) in %.2f s: %s", NAME, data.slice_index, data.n_readouts,
                     data.n_coils, result.timings_s.get("total", sum(result.timings_s.values())), timings)
            for note in result.notes:
                log.info("%s: slice %d: %s", NAME, data.slice_index, note)

    run_gadget(NAME, connection, body)
