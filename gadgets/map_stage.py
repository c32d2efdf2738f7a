"""The loop both mapping gadgets share: remember basis images, map coefficient images, pass the rest on.

A mapper is one of mrf_core.pipeline's (NetworkMapper, DictionaryMapper): called with a slice's
coefficients, their basis, the scan's schedule and the slice index, it returns QuantitativeMaps or
raises with the reason it cannot. A mapped slice leaves as a maps bundle followed by its coefficient image
marked with MRF_Mapper (emit outputs it when `coefficient_images` is set; later mappers pass it on). A
mapper with a fallback after it (map_network) passes a slice it cannot map on unmapped, with the reason
in MRF_Warning; the last mapper's failure is the gadget's error.
`ScanContext` holds what the stream said about the scan: the bases its coefficient images may be in (from
basis images), each with its schedule, and the effective schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from gadgets.properties import read_properties
from gadgets.runtime import run_gadget
from gadgets.stage_images import (
    BASIS_ROLE,
    MAPPER_KEY,
    StageImageError,
    add_warning,
    geometry_of,
    maps_bundle,
    read_basis_image,
    read_coefficients,
    role_of,
    set_meta,
    warnings_of,
)
from mrf_core.io.map_images import COEFFICIENT_ROLE, image_meta
from mrf_core.physics.sequence import FispSchedule, ScheduleError
from mrf_core.physics.temporal_basis import TemporalBasis
from mrf_core.pipeline import fallback_warning, map_slice, one_line, set_threads

log = logging.getLogger(__name__)


class ScanContext:
    """Bases seen on the stream (by hash), each with its schedule (a slice of a scan stopped early has the
    schedule's first time points), and the scan's schedule (the first basis image's, else the header's)."""

    def __init__(self, header=None):
        self.header = header
        self.bases: dict[str, TemporalBasis] = {}
        self.schedules: dict[str, FispSchedule] = {}
        self._schedule: FispSchedule | None = None

    def add_basis_image(self, image) -> None:
        basis, schedule = read_basis_image(image)
        self.bases[basis.hash] = basis
        self.schedules[basis.hash] = schedule
        self._schedule = self._schedule or schedule
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


def is_mapped(image) -> bool:
    """A coefficient image some mapper already mapped (it travels on for emit)."""
    return MAPPER_KEY in image_meta(image)


def _map_one(image, context: ScanContext, mapper, fallback: bool) -> Iterator:
    slice_index = int(image.getHead().slice)
    try:
        coefficients, basis_hash = read_coefficients(image)
        schedule = context.schedules.get(basis_hash) or context.schedule
        maps = map_slice(mapper, coefficients, context.basis(basis_hash), schedule, slice_index, geometry_of(image))
    except Exception as exc:
        if not fallback:
            raise
        warning = fallback_warning(mapper, exc)
        log.warning("slice %d not mapped by the %s: %s; passed on for the fallback", slice_index, mapper.name,
                    one_line(exc))
        yield add_warning(image, warning)
        return
    yield maps_bundle(maps, geometry_of(image), warnings=warnings_of(image))
    yield set_meta(image, {MAPPER_KEY: mapper.name})


def mapped(items: Iterable, context: ScanContext, mapper, fallback: bool) -> Iterator:
    """The stage: basis images update the context and go on; coefficient images not yet mapped go through
    `mapper`; everything else passes."""
    for item in items:
        role = role_of(item)
        if role == BASIS_ROLE:
            context.add_basis_image(item)
        elif role == COEFFICIENT_ROLE and not is_mapped(item):
            yield from _map_one(item, context, mapper, fallback)
            continue
        yield item


def run_mapping_gadget(connection, name: str, properties, make_mapper: Callable, fallback: bool) -> None:
    """A mapping gadget: read its properties, cap its threads, and send the stream mapped by
    make_mapper(settings), under run_gadget's logging and ERROR reporting."""

    def body() -> None:
        settings = read_properties(connection.config, properties, name)
        set_threads(settings.threads)
        mapper = make_mapper(settings)
        if getattr(mapper, "unusable", None):
            log.warning("%s: %s; every slice goes on unmapped to the fallback", name, mapper.unusable)
        for item in mapped(connection, ScanContext(connection.header), mapper, fallback):
            connection.send(item)

    run_gadget(name, connection, body)
