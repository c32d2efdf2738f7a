"""Gadget map_network: the TorchScript mapping network on every coefficient image, when it may be used.

The model (property `model`; default: the package's default model) is checked against the scan: its
schedule against the scan's effective schedule (from the basis image, else the header), and its basis
against the coefficients' basis (equal hash, or converted with TemporalBasis.conversion_to when both span
the same subspace). When it cannot map a slice (mapping code or model file missing, unreadable model,
another schedule, another subspace, an error while mapping) the coefficient image is passed on UNMAPPED
with the reason in MRF_Warning and a logged warning, so the dictionary gadget after it maps the slice.
Never a silent wrong map: a mismatch always falls back.
"""

from __future__ import annotations

import logging

import numpy as np

from gadgets.map_stage import ScanContext, object_voxels, run_mapping_gadget
from gadgets.model_source import MODEL_PROPERTIES, load_network
from gadgets.runtime import THREADS_PROPERTY, one_line, timed
from gadgets.stage_images import add_warning, geometry_of, maps_bundle, read_coefficients, warnings_of
from mrf_core.mapping.maps import QuantitativeMaps

log = logging.getLogger(__name__)

NAME = "map_network"
PROPERTIES = (*MODEL_PROPERTIES, THREADS_PROPERTY)


class _Scattered:
    """A mapper's per-voxel result for the masked voxels, spread over the whole slice (NaN elsewhere)."""

    def __init__(self, result, mask: np.ndarray):
        def spread(values, fill):
            full = np.full(mask.shape, fill, dtype=np.asarray(values).dtype)
            full[mask] = np.asarray(values).reshape(-1)
            return full

        self.t1_ms, self.t2_ms = spread(result.t1_ms, np.nan), spread(result.t2_ms, np.nan)
        b1 = getattr(result, "b1", None)
        self.b1 = spread(b1, np.nan) if b1 is not None else np.full(mask.shape, np.nan, np.float32)
        self.pd, self.score = spread(result.pd, 0), spread(result.score, 0)


class NetworkMapper:
    """Maps coefficient images with the model; returns the image unmapped (with a warning) otherwise."""

    def __init__(self, settings):
        self.model, self.unusable = load_network(settings.model, settings.device)
        if self.unusable:
            log.warning("%s: %s; every slice goes on unmapped to the dictionary fallback", NAME, self.unusable)
        self._checked_schedule: str | None = None

    def _check_schedule(self, context: ScanContext) -> None:
        schedule = context.schedule
        if self._checked_schedule != schedule.hash:
            self.model.check(schedule)  # ModelMismatchError explains the difference
            self._checked_schedule = schedule.hash

    def _map(self, image, context: ScanContext):
        coefficients, basis_hash = read_coefficients(image)
        self._check_schedule(context)
        if self.model.basis is None:
            raise ValueError(f"model {self.model.path.name} maps time courses, not subspace coefficients")
        basis = self.model.basis if basis_hash == self.model.basis.hash else context.basis(basis_hash)
        x = np.moveaxis(coefficients, 0, -1)
        mask = object_voxels(x)
        slice_index = int(image.getHead().slice)
        with timed(f"{NAME}: slice {slice_index} mapped", voxels=int(mask.sum())):
            result = self.model.map_coefficients(x[mask], basis)  # converts from `basis` when it differs
        maps = QuantitativeMaps.from_match(_Scattered(result, mask), mask.shape, slice_index, "network", mask)
        return maps_bundle(maps, geometry_of(image), warnings=warnings_of(image))

    def __call__(self, image, context: ScanContext):
        reason = self.unusable
        if reason is None:
            try:
                return self._map(image, context)
            except Exception as exc:  # a model that cannot map this scan: fall back, never fail the scan
                log.debug("network mapping failed", exc_info=True)
                reason = one_line(exc)
        slice_index = int(image.getHead().slice)
        log.warning("%s: slice %d not mapped by the network: %s; passed on for the dictionary fallback",
                    NAME, slice_index, reason)
        return add_warning(image, f"network mapping not used: {reason}")


def map_network(connection) -> None:
    """Gadgetron target: coefficient images in, maps bundles (or unmapped coefficient images) out."""
    run_mapping_gadget(connection, NAME, PROPERTIES, NetworkMapper)
