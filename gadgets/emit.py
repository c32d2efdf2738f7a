"""Gadget emit: maps bundles -> the images a scanner stores and shows (mrf_core.pipeline.scanner_images).

One series per quantity (series_base + offset: T1, T2, PD, B1, match quality), one image per slice, the
scanner meta (DataRole=Quantitative, GADGETRON_DataRole, SeqDescription, ImageComment with the unit,
window centre/width, ScaleRatio when ushort), MRF_Mapper and any MRF_Warning collected on the way; float32
by default, scaled ushort as an option (the `output` settings). Geometry comes from the bundle's header,
which reconstruct took from the slice's acquisitions. Basis images are internal and dropped. A mapped
slice's coefficient image is sent when `coefficient_images` is set (series 10) and dropped otherwise; one
that reaches emit unmapped is passed on with a logged warning (the client then gets coefficients).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from gadgets.map_stage import is_mapped
from gadgets.properties import read_properties
from gadgets.runtime import run_gadget
from gadgets.stage_images import BASIS_ROLE, MAPS_ROLE, geometry_of, read_maps_bundle, role_of, warnings_of
from mrf_core.io.map_images import COEFFICIENT_ROLE
from mrf_core.pipeline import scanner_images
from mrf_core.settings import for_stages

log = logging.getLogger(__name__)

NAME = "emit"
PROPERTIES = for_stages("output")


def emitted(items: Iterable, settings) -> Iterator:
    """The stage: bundles become map images, basis images are dropped, coefficient images go out as the
    settings say, the rest passes."""
    for item in items:
        role = role_of(item)
        if role == MAPS_ROLE:
            maps = read_maps_bundle(item)
            images = scanner_images(maps, geometry_of(item), warnings_of(item), settings)
            log.info("%s: slice %d, %d map images (mapper %s)", NAME, maps.slice_index, len(images), maps.mapper)
            yield from images
        elif role == BASIS_ROLE:
            continue
        elif role == COEFFICIENT_ROLE and is_mapped(item):
            if settings.coefficient_images:
                yield item
        else:
            if role == COEFFICIENT_ROLE:
                log.warning("%s: slice %d reached emit unmapped (no mapper in the chain could map it); "
                            "sending its coefficients", NAME, item.getHead().slice)
            yield item


def emit(connection) -> None:
    """Gadgetron target: maps bundles in, scanner map images out."""

    def body() -> None:
        settings = read_properties(connection.config, PROPERTIES, NAME)
        for item in emitted(connection, settings):
            connection.send(item)

    run_gadget(NAME, connection, body)
