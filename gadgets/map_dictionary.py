"""Gadget map_dictionary: dictionary matching of every coefficient image that arrives unmapped.

In the default chain it is the fallback after map_network (which passes on what it could not map, with the
reason in MRF_Warning); alone after reconstruct it maps every slice. Maps bundles and anything else pass
through. The dictionary is a configured file or one built for the scan's schedule (cached on disk, see
gadgets.dictionary_source); coefficients in another basis of the same subspace (e.g. the network model's)
are converted into the dictionary's basis first. Matching is mrf_core.matching.match in the subspace.
"""

from __future__ import annotations

import logging

import numpy as np

from gadgets.dictionary_source import DICTIONARY_PROPERTIES, dictionary_for
from gadgets.map_stage import ScanContext, mapped, object_voxels
from gadgets.properties import Property, choice, read_properties
from gadgets.runtime import THREADS_PROPERTY, run_gadget, set_threads, timed
from gadgets.stage_images import geometry_of, maps_bundle, read_coefficients, warnings_of
from mrf_core.dictionary import Dictionary
from mrf_core.maps import QuantitativeMaps
from mrf_core.matching import match

log = logging.getLogger(__name__)

NAME = "map_dictionary"
PROPERTIES = (
    *DICTIONARY_PROPERTIES,
    Property("search", "auto", choice("auto", "exhaustive", "pruned"),
             "matching search (auto: exhaustive up to 10k atoms, exact pruned above)"),
    THREADS_PROPERTY,
)


class DictionaryMapper:
    """Maps coefficient images with one dictionary, made on first use for the scan's schedule."""

    def __init__(self, settings):
        self.settings = settings
        self._dictionary: Dictionary | None = None

    def dictionary(self, context: ScanContext) -> Dictionary:
        if self._dictionary is None:
            self._dictionary = dictionary_for(context.schedule, self.settings)
        return self._dictionary

    def __call__(self, image, context: ScanContext):
        coefficients, basis_hash = read_coefficients(image)
        dictionary = self.dictionary(context)
        x = context.convert(coefficients, basis_hash, dictionary.basis)
        mask = object_voxels(x)
        slice_index = int(image.getHead().slice)
        with timed(f"{NAME}: slice {slice_index} matched", voxels=int(mask.sum()), atoms=dictionary.n_atoms):
            result = match(dictionary, x, mask=mask, search=self.settings.search, device="cpu")
        if not dictionary.has_b1:  # one B1 value is an assumption, not an estimate: no B1 map
            result.b1 = np.full_like(result.b1, np.nan)
        maps = QuantitativeMaps.from_match(result, mask.shape, slice_index, "dictionary", mask)
        return maps_bundle(maps, geometry_of(image), warnings=warnings_of(image))


def map_dictionary(connection) -> None:
    """Gadgetron target: coefficient images in, maps bundles out (everything else passed on)."""

    def body() -> None:
        settings = read_properties(connection.config, PROPERTIES, NAME)
        set_threads(settings.threads)
        for item in mapped(connection, ScanContext(connection.header), DictionaryMapper(settings)):
            connection.send(item)

    run_gadget(NAME, connection, body)
