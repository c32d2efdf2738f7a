"""Gadget emit: maps bundles -> the images a scanner stores and shows (mrf_core.io.map_images).

One series per quantity (series_base + offset: T1, T2, PD, B1, match quality), one image per slice, the
scanner meta of DESIGN.md section 5 (DataRole, GADGETRON_DataRole, SeqDescription, ImageComment with the
unit, window centre/width, ScaleRatio when ushort), MRF_Mapper and any MRF_Warning collected on the way.
Float32 by default, scaled ushort as an option. Geometry comes from the bundle's header (which
reconstruct took from the slice's acquisitions). Basis images are internal and dropped; a coefficient
image that reaches emit unmapped is passed on with a logged warning (the client then gets coefficients).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from gadgets.properties import Property, boolean, integer, names, read_properties, window
from gadgets.runtime import run_gadget
from gadgets.stage_images import (
    BASIS_ROLE,
    MAPS_ROLE,
    WARNING_KEY,
    geometry_of,
    read_maps_bundle,
    role_of,
    warnings_of,
)
from mrf_core.io.map_images import COEFFICIENT_ROLE, image_meta, map_images
from mrf_core.mapping.maps import QUANTITIES

log = logging.getLogger(__name__)

NAME = "emit"
QUANTITY_KEYS = tuple(q.key for q in QUANTITIES)
PROPERTIES = (
    Property("series_base", "1", integer(0, 65000),
             "image_series_index of T1; T2, PD, B1 and quality follow (+1 ... +4)"),
    Property("ushort", "false", boolean, "scaled unsigned short images (GADGETRON_ScaleRatio) instead of float"),
    Property("maps", ",".join(QUANTITY_KEYS), names(QUANTITY_KEYS),
             "which maps to send, of " + ", ".join(QUANTITY_KEYS) + " (B1 only when the mapper estimated it)"),
    Property("t1_window", "", window, "T1 display window 'centre,width' in ms (empty: 1500,3000)"),
    Property("t2_window", "", window, "T2 display window 'centre,width' in ms (empty: 150,300)"),
)


def scanner_images(bundle, settings) -> list:
    """The map images of one maps bundle, as configured."""
    maps = read_maps_bundle(bundle)
    warnings = warnings_of(bundle)
    windows = {key: window for key, window in (("t1_ms", settings.t1_window), ("t2_ms", settings.t2_window))
               if window is not None}
    images = map_images(maps, geometry_of(bundle), series_base=settings.series_base, as_ushort=settings.ushort,
                        extra_meta={WARNING_KEY: warnings} if warnings else None, windows=windows)
    return [image for image in images if image_meta(image)["MRF_Quantity"] in settings.maps]


def emitted(items: Iterable, settings) -> Iterator:
    """The stage: bundles become map images, basis images are dropped, the rest passes."""
    for item in items:
        role = role_of(item)
        if role == MAPS_ROLE:
            images = scanner_images(item, settings)
            log.info("%s: slice %d, %d map images (mapper %s)", NAME, item.getHead().slice, len(images),
                     image_meta(item).get("MRF_Mapper"))
            yield from images
        elif role == BASIS_ROLE:
            continue
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
