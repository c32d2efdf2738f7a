"""The image kinds that travel between gadget processes (all ismrmrd.Image; meta `DataRole` tells them apart).

- basis image (`TemporalBasis`): the temporal basis the coefficients are in, and the scan's effective
  schedule (from the header or a schedule file), sent once before the first coefficient image, so later
  stages can convert coefficients between bases and check a model against the schedule without a
  schedule property of their own. float32 (1, 1, n_timepoints, rank); meta MRF_BasisHash,
  MRF_ScheduleHash, MRF_SignalPhase ("re,im"), MRF_SingularValues (list), MRF_Schedule (JSON).
- coefficient image (`SubspaceCoefficients`): mrf_core.io.map_images.coefficient_image; K complex channels;
  voxels outside the object mask are 0 (mappers leave all-zero voxels unmapped).
- maps bundle (`MRFMaps`): a slice's QuantitativeMaps as one float32 image, a channel per quantity (keys
  in MRF_Quantities, NaN unmapped), MRF_Mapper, the maps' B1 and slice-profile meta; the emit gadget turns
  it into scanner map images.
Geometry (position, directions, FOV) and the slice index ride in every image header.
`MRF_Warning` (list) collects warnings about an image (e.g. why the network did not map it).
"""

from __future__ import annotations

import json

import ismrmrd
import numpy as np

from mrf_core.errors import MrfError
from mrf_core.io.map_images import ImageGeometry, image_meta
from mrf_core.mapping.maps import (
    B1_META,
    B1_SOURCE_META,
    PROFILE_META,
    QUANTITY_BY_KEY,
    MapsError,
    QuantitativeMaps,
)
from mrf_core.physics.sequence import FispSchedule
from mrf_core.physics.temporal_basis import TemporalBasis
from mrf_core.pipeline import WARNING_KEY, ascii_text

BASIS_ROLE = "TemporalBasis"
MAPS_ROLE = "MRFMaps"
MAPPER_KEY = "MRF_Mapper"


class StageImageError(MrfError):
    """An image between stages that lacks what its kind needs."""


def as_list(value) -> list[str]:
    """A meta value as a list (ismrmrd.Meta gives a lone value as a plain string)."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def role_of(item) -> str | None:
    """The DataRole of an ismrmrd.Image (None for other items or images without one)."""
    if not isinstance(item, ismrmrd.Image):
        return None
    role = image_meta(item).get("DataRole")
    return as_list(role)[0] if role is not None else None


def geometry_of(image: ismrmrd.Image) -> ImageGeometry:
    head = image.getHead()
    return ImageGeometry.from_acquisition(head, tuple(head.field_of_view))


def set_meta(image: ismrmrd.Image, updates: dict[str, str | list[str]]) -> ismrmrd.Image:
    """Add or replace meta entries of an image (in place; returned for chaining)."""
    meta = ismrmrd.Meta()
    for key, value in {**image_meta(image), **updates}.items():
        meta[key] = value
    image.attribute_string = meta.serialize()
    return image


def add_warning(image: ismrmrd.Image, warning: str) -> ismrmrd.Image:
    """Append a warning (ASCII) to the image's MRF_Warning list."""
    return set_meta(image, {WARNING_KEY: [*warnings_of(image), ascii_text(warning)]})


def warnings_of(image: ismrmrd.Image) -> list[str]:
    return as_list(image_meta(image).get(WARNING_KEY))


# ---- basis image -----------------------------------------------------------------------------------
def basis_image(basis: TemporalBasis, schedule: FispSchedule, series: int = 0) -> ismrmrd.Image:
    image = ismrmrd.Image.from_array(basis.vectors.astype(np.float32)[None, None], transpose=False)
    head = image.getHead()
    head.image_series_index = series
    head.image_type = ismrmrd.IMTYPE_REAL
    image.setHead(head)
    phase = complex(basis.signal_phase)
    return set_meta(image, {
        "DataRole": BASIS_ROLE,
        "MRF_BasisHash": basis.hash,
        "MRF_ScheduleHash": schedule.hash,
        "MRF_SignalPhase": f"{phase.real!r},{phase.imag!r}",
        "MRF_SingularValues": [repr(float(s)) for s in basis.singular_values],
        "MRF_Schedule": schedule.to_json(),
    })


def read_basis_image(image: ismrmrd.Image) -> tuple[TemporalBasis, FispSchedule]:
    meta = image_meta(image)
    try:
        schedule = FispSchedule.from_dict(json.loads(as_list(meta["MRF_Schedule"])[0]))
        re, im = (float(v) for v in as_list(meta["MRF_SignalPhase"])[0].split(","))
        singular_values = np.asarray([float(v) for v in as_list(meta["MRF_SingularValues"])])
    except (KeyError, ValueError) as exc:
        raise StageImageError(f"basis image lacks or has a bad {exc}: not from gadgets.reconstruct?") from None
    vectors = np.asarray(image.data, dtype=np.float32)[0, 0]
    basis = TemporalBasis(vectors, singular_values, complex(re, im), schedule.hash)
    stated = as_list(meta.get("MRF_BasisHash"))
    if stated and stated[0] != basis.hash:
        raise StageImageError(f"basis image says hash {stated[0]} but its vectors hash to {basis.hash}")
    return basis, schedule


# ---- coefficient image -----------------------------------------------------------------------------
def read_coefficients(image: ismrmrd.Image) -> tuple[np.ndarray, str]:
    """(coefficients complex64 (rank, ny, nx), basis hash) of a coefficient image."""
    meta = image_meta(image)
    if "MRF_BasisHash" not in meta:
        raise StageImageError("coefficient image has no MRF_BasisHash meta: cannot tell which basis it is in")
    data = np.asarray(image.data)
    return data[:, 0].astype(np.complex64), as_list(meta["MRF_BasisHash"])[0]


# ---- maps bundle -----------------------------------------------------------------------------------
def maps_bundle(maps: QuantitativeMaps, geometry: ImageGeometry, series: int = 0,
                warnings: list[str] | None = None) -> ismrmrd.Image:
    arrays = maps.arrays()
    image = ismrmrd.Image.from_array(np.stack(list(arrays.values())).astype(np.float32)[:, None], transpose=False)
    head = image.getHead()
    geometry.apply(head)
    head.image_series_index = series
    head.image_index = maps.slice_index + 1
    head.slice = maps.slice_index
    head.image_type = ismrmrd.IMTYPE_MAGNITUDE
    image.setHead(head)
    meta = {"DataRole": MAPS_ROLE, "MRF_Quantities": list(arrays), MAPPER_KEY: maps.mapper,
            **maps.corrections_meta()}
    if warnings:
        meta[WARNING_KEY] = [ascii_text(w) for w in warnings]
    return set_meta(image, meta)


def read_maps_bundle(image: ismrmrd.Image) -> QuantitativeMaps:
    meta = image_meta(image)
    keys = as_list(meta.get("MRF_Quantities"))
    data = np.asarray(image.data, dtype=np.float32)[:, 0]
    if len(keys) != data.shape[0] or any(k not in QUANTITY_BY_KEY for k in keys):
        raise StageImageError(f"maps bundle lists quantities {keys} for {data.shape[0]} channels")
    arrays = dict(zip(keys, data, strict=True))
    corrections = {"b1_correction": (as_list(meta.get(B1_META)) or ["none"])[0],
                   "b1_source": (as_list(meta.get(B1_SOURCE_META)) or [""])[0],
                   "slice_profile": (as_list(meta.get(PROFILE_META)) or [""])[0]}
    if corrections["slice_profile"] == "none":
        corrections["slice_profile"] = ""
    try:
        return QuantitativeMaps(slice_index=int(image.getHead().slice), mapper=as_list(meta.get(MAPPER_KEY))[0],
                                **arrays, **corrections)
    except (TypeError, IndexError, MapsError) as exc:
        raise StageImageError(f"maps bundle is incomplete: {exc}") from None
