"""The loop both mapping gadgets share: remember basis images, map coefficient images, pass the rest on.

A mapper is a callable (coefficient image, ScanContext) -> image: a maps bundle when it mapped the slice,
or the coefficient image itself (with a warning) when it leaves the slice to a later stage.
`ScanContext` holds what the stream said about the scan: the bases its coefficient images may be in (from
basis images) and the effective schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from gadgets.properties import read_properties
from gadgets.runtime import run_gadget, set_threads
from gadgets.stage_images import BASIS_ROLE, StageImageError, read_basis_image, role_of
from mrf_core.io.map_images import COEFFICIENT_ROLE
from mrf_core.physics.sequence import FispSchedule, ScheduleError
from mrf_core.physics.temporal_basis import TemporalBasis

log = logging.getLogger(__name__)


class ScanContext:
    """Bases seen on the stream (by hash) and the scan's schedule (basis image first, else the header)."""

    def __init__(self, header=None):
        self.header = header
        self.bases: dict[str, TemporalBasis] = {}
        self._schedule: FispSchedule | None = None

    def add_basis_image(self, image) -> None:
        basis, schedule = read_basis_image(image)
        self.bases[basis.hash] = basis
        if self._schedule is not None and self._schedule.hash != schedule.hash:
            raise StageImageError(f"basis images name two schedules ({self._schedule.hash}, {schedule.hash})")
        self._schedule = schedule
        log.info("basis %s (rank %d, schedule %s, %d TRs) announced", basis.hash, basis.rank, schedule.hash,
                 schedule.n_timepoints)

    @property
    def schedule(self) -> FispSchedule:
        if self._schedule is None:
            try:
                self._schedule = FispSchedule.from_ismrmrd(self.header)
            except (ScheduleError, AttributeError) as exc:
                raise StageImageError(f"no schedule for this scan: no basis image came first, and the header "
                                      f"has none ({exc})") from None
        return self._schedule

    def basis(self, basis_hash: str) -> TemporalBasis:
        """A basis announced by a basis image."""
        if basis_hash not in self.bases:
            raise StageImageError(f"coefficients are in basis {basis_hash}, which no basis image described")
        return self.bases[basis_hash]


def object_voxels(coefficients: np.ndarray) -> np.ndarray:
    """Voxels of coefficients (ny, nx, rank) worth mapping: finite and not all zero (reconstruct zeroes
    the background outside its object mask)."""
    return np.isfinite(coefficients).all(axis=-1) & (np.abs(coefficients) > 0).any(axis=-1)


def mapped(items: Iterable, context: ScanContext, mapper: Callable) -> Iterator:
    """The stage: basis images update the context and go on; coefficient images go through `mapper`."""
    for item in items:
        role = role_of(item)
        if role == BASIS_ROLE:
            context.add_basis_image(item)
        elif role == COEFFICIENT_ROLE:
            item = mapper(item, context)
        yield item


def run_mapping_gadget(connection, name: str, properties, make_mapper: Callable) -> None:
    """A mapping gadget: read its properties, cap its threads, and send the stream mapped by
    make_mapper(settings), under run_gadget's logging and ERROR reporting."""

    def body() -> None:
        settings = read_properties(connection.config, properties, name)
        set_threads(settings.threads)
        for item in mapped(connection, ScanContext(connection.header), make_mapper(settings)):
            connection.send(item)

    run_gadget(name, connection, body)
