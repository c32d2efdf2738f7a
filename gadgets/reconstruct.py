"""Gadget reconstruct: spiral MRF acquisitions -> subspace coefficient images, one per slice.

A thin adapter over mrf_core.pipeline.Reconstruction (header check, schedule file, index map, the
temporal basis, gather, prewhitening, subspace reconstruction, object mask): it sends a basis image once
per basis (gadgets.stage_images), then each slice's K-channel complex coefficient image (series
mrf_core.pipeline.COEFFICIENT_SERIES) with the geometry of the slice's acquisitions. Gather and
reconstruction share one process so raw data cross a socket only once; the gathering runs in a thread
(mrf_core.pipeline.prefetched), so slice k + 1 streams in while slice k is reconstructed. Properties: the `gather` and
`recon` settings of mrf_core.settings.
"""

from __future__ import annotations

import ismrmrd

from gadgets.properties import read_properties
from gadgets.runtime import run_gadget
from gadgets.stage_images import basis_image
from mrf_core.pipeline import Reconstruction, set_threads
from mrf_core.settings import for_stages

NAME = "reconstruct"
PROPERTIES = for_stages("gather", "recon")


def reconstruct(connection) -> None:
    """Gadgetron target: acquisitions in; a basis image, then one coefficient image per slice out."""

    def body() -> None:
        settings = read_properties(connection.config, PROPERTIES, NAME)
        set_threads(settings.threads)
        reconstruction = Reconstruction(connection.header, settings)
        connection.filter(ismrmrd.Acquisition)  # anything else goes straight on
        announced: set[str] = set()
        for slice_ in reconstruction.slices(connection):
            if slice_.basis.hash not in announced:
                connection.send(basis_image(slice_.basis, slice_.schedule or reconstruction.schedule))
                announced.add(slice_.basis.hash)
            connection.send(slice_.image())

    run_gadget(NAME, connection, body)
