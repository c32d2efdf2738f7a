"""Quantitative maps and coefficient images as ISMRMRD images, and map files in the client's layout.

Images carry the meta a scanner needs: `DataRole=Quantitative`,
`GADGETRON_DataRole` (T1, T2, PD, B1, MatchQuality), `GADGETRON_SeqDescription`, `GADGETRON_ImageComment`
(the unit), window centre and width, `GADGETRON_ScaleRatio` for scaled ushort data, and our own
`MRF_Quantity` / `MRF_Unit` / `MRF_Mapper`, and how B1 and the slice profile were handled
(`MRF_B1Correction` none/map/estimated, `MRF_B1Source`, `MRF_SliceProfile`). One series per quantity
(series_base + offset from mrf_core.mapping.maps.QUANTITIES), one image per slice (image_index = slice + 1).
Unmapped voxels are 0.

Map files use the layout `gadgetron_ismrmrd_client` writes: an ISMRMRD HDF5 file whose group (by default
the date and time, as the client names it) holds `image_<series>/{header,attributes,data}`. The replay,
`mrf reconstruct` and a real Gadgetron run therefore produce files that `read_map_file` and QA read alike.
"""

from __future__ import annotations

import datetime
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import ismrmrd
import numpy as np

from mrf_core.io.atomic import atomic_path
from mrf_core.mapping.maps import QUANTITIES, QUANTITY_BY_KEY, MapsError, QuantitativeMaps

log = logging.getLogger(__name__)

USHORT_MAX = 4095  # 12-bit range, what scanner viewers expect of scaled maps
COEFFICIENT_ROLE = "SubspaceCoefficients"


@dataclass(frozen=True)
class ImageGeometry:
    """Where a slice is: field of view (x, y, z) in mm and the patient-coordinate vectors of ISMRMRD."""

    fov_mm: tuple[float, float, float]
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    read_dir: tuple[float, float, float] = (1.0, 0.0, 0.0)
    phase_dir: tuple[float, float, float] = (0.0, 1.0, 0.0)
    slice_dir: tuple[float, float, float] = (0.0, 0.0, 1.0)
    patient_table_position: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def from_acquisition(cls, head, fov_mm: tuple[float, float, float]) -> ImageGeometry:
        """The geometry of an ismrmrd.AcquisitionHeader (or Acquisition) and the encoded FOV."""
        fields = ("position", "read_dir", "phase_dir", "slice_dir", "patient_table_position")
        return cls(tuple(float(v) for v in fov_mm), *(tuple(float(v) for v in getattr(head, f)) for f in fields))

    def pixel_to_lps(self, shape: tuple[int, int], slice_step_mm: float) -> np.ndarray:
        """4 x 4 matrix from (column, row, slice, 1) of an (ny, nx) image to LPS mm: pixel (nx // 2, ny // 2) is
        at `position` (the FFT centre), columns run along read_dir, rows along phase_dir, and one slice index is
        `slice_step_mm` along slice_dir."""
        ny, nx = shape
        dx, dy = self.fov_mm[0] / nx, self.fov_mm[1] / ny
        read, phase = np.asarray(self.read_dir, np.float64), np.asarray(self.phase_dir, np.float64)
        matrix = np.eye(4)
        matrix[:3, 0], matrix[:3, 1] = dx * read, dy * phase
        matrix[:3, 2] = np.asarray(self.slice_dir, np.float64) * slice_step_mm
        matrix[:3, 3] = np.asarray(self.position, np.float64) - (nx // 2) * dx * read - (ny // 2) * dy * phase
        return matrix

    def apply(self, head: ismrmrd.ImageHeader) -> None:
        head.field_of_view = self.fov_mm
        for name in ("position", "read_dir", "phase_dir", "slice_dir", "patient_table_position"):
            setattr(head, name, getattr(self, name))


def _image(data: np.ndarray, geometry: ImageGeometry, series: int, slice_index: int, image_type: int,
           meta: dict[str, str | list[str]]) -> ismrmrd.Image:
    """One ismrmrd.Image of data (channels, ny, nx) with its header and meta filled in."""
    image = ismrmrd.Image.from_array(data[:, None], transpose=False)  # (channels, z=1, y, x)
    head = image.getHead()
    geometry.apply(head)
    head.image_series_index = series
    head.image_index = slice_index + 1
    head.slice = slice_index
    head.image_type = image_type
    image.setHead(head)
    attributes = ismrmrd.Meta()
    for key, value in meta.items():
        attributes[key] = value
    image.attribute_string = attributes.serialize()
    return image


def _window(values: np.ndarray, window: tuple[float, float] | None, ratio: float) -> tuple[float, float]:
    if window is not None:
        centre, width = window
    else:
        finite = values[np.isfinite(values)]
        low, high = np.percentile(finite, [1.0, 99.0]) if finite.size else (0.0, 1.0)
        centre, width = (low + high) / 2, max(high - low, 1e-6)
    return centre * ratio, width * ratio


def map_images(
    maps: QuantitativeMaps,
    geometry: ImageGeometry,
    series_base: int = 1,
    as_ushort: bool = False,
    extra_meta: dict[str, str] | None = None,
    windows: dict[str, tuple[float, float]] | None = None,
) -> list[ismrmrd.Image]:
    """One image per quantity present in `maps`: float32 by default, or ushort scaled by the quantity's
    ratio (`GADGETRON_ScaleRatio`; stored = value * ratio, clipped to [0, 4095]). windows: display window
    (centre, width) per quantity key in its unit, overriding the defaults of mrf_core.mapping.maps.QUANTITIES."""
    images = []
    for key, values in maps.arrays().items():
        quantity = QUANTITY_BY_KEY[key]
        clean = np.where(np.isfinite(values), values, 0.0).astype(np.float32)
        ratio = 1.0
        if as_ushort:
            ratio = quantity.ushort_ratio or USHORT_MAX / max(float(clean.max()), 1e-12)
            data = np.clip(np.rint(clean * ratio), 0, USHORT_MAX).astype(np.uint16)
        else:
            data = clean
        centre, width = _window(values, (windows or {}).get(key, quantity.window), ratio)
        meta = {
            "DataRole": "Quantitative",
            "GADGETRON_DataRole": quantity.role,
            "GADGETRON_SeqDescription": f"_MRF_{quantity.role}",
            "GADGETRON_ImageComment": f"{quantity.role} [{quantity.unit}]",
            "GADGETRON_WindowCenter": f"{centre:.6g}",
            "GADGETRON_WindowWidth": f"{width:.6g}",
            "MRF_Quantity": key,
            "MRF_Unit": quantity.unit,
            "MRF_Mapper": maps.mapper,
            **maps.corrections_meta(),
            **(extra_meta or {}),
        }
        if as_ushort:
            meta["GADGETRON_ScaleRatio"] = f"{ratio:.9g}"
        images.append(_image(data[None], geometry, series_base + quantity.series_offset, maps.slice_index,
                             ismrmrd.IMTYPE_MAGNITUDE, meta))
    return images


def coefficient_image(
    coefficients: np.ndarray, basis_hash: str, geometry: ImageGeometry, slice_index: int, series: int,
    extra_meta: dict[str, str] | None = None,
) -> ismrmrd.Image:
    """The K complex subspace coefficient images of a slice as one K-channel complex64 image; meta names
    the basis (`MRF_BasisHash`) so a mapper can check it was made for the same subspace."""
    coefficients = np.asarray(coefficients)
    if coefficients.ndim != 3:
        raise MapsError(f"coefficients have shape {coefficients.shape}: expected (rank, ny, nx)")
    meta = {
        "DataRole": COEFFICIENT_ROLE,
        "GADGETRON_DataRole": COEFFICIENT_ROLE,
        "GADGETRON_ImageComment": f"MRF subspace coefficients, rank {coefficients.shape[0]}",
        "MRF_BasisHash": basis_hash,
        "MRF_Rank": str(coefficients.shape[0]),
        **(extra_meta or {}),
    }
    return _image(coefficients.astype(np.complex64), geometry, series, slice_index, ismrmrd.IMTYPE_COMPLEX, meta)


def image_meta(image: ismrmrd.Image) -> dict[str, str | list[str]]:
    """The meta of an image as a dict (empty when it has none)."""
    text = image.attribute_string
    return dict(ismrmrd.Meta.deserialize(text)) if text else {}


def client_group_name() -> str:
    """The group name the ISMRMRD clients give a run: its local date and time, to the microsecond."""
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")


def check_new_group(path: str | Path, group: str | None, force: bool = False) -> None:
    """Before the work: `path` may be new or an HDF5 file (the run is appended as a new group, as the
    clients do), and must not hold `group` already unless force (which replaces that group)."""
    path = Path(path)
    if not path.exists():
        return
    if not h5py.is_hdf5(path):
        if force:
            return
        raise MapsError(f"{path} exists and is not an HDF5 file: choose another output name, or --force to "
                        "overwrite it")
    if group is not None and not force:
        with h5py.File(path, "r") as f:
            if group in f:
                raise MapsError(f"{path} already holds the group {group!r}: choose another group (-G/--group) "
                                "or --force to replace it")


def write_images(path: str | Path, images: list[ismrmrd.Image], group: str | None = None,
                 force: bool = False) -> str:
    """Write images as `<group>/image_<series>` (written whole or not at all); returns the group name. An
    existing map file keeps its groups and gets this one added, as the ISMRMRD clients append runs; a group
    of the same name is an error unless force (replaced)."""
    group = group or client_group_name()
    if not images:
        raise MapsError(f"no images to write to {path}")
    check_new_group(path, group, force)
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.exists() and h5py.is_hdf5(path):
            shutil.copyfile(path, tmp)
            with h5py.File(tmp, "a") as f:
                if group in f:
                    del f[group]
        else:
            tmp.unlink()
        dataset = ismrmrd.Dataset(str(tmp), group, create_if_needed=True)
        try:
            for image in images:
                dataset.append_image(f"image_{image.image_series_index}", image)
        finally:
            dataset.close()
    return group


@dataclass(frozen=True)
class MapFile:
    """Maps read back from a file: per quantity key, float32 (n_slices, ny, nx) in the quantity's unit
    with NaN where unmapped (0 on disk); the slice indices in that order; each series' meta; the
    geometry per slice; and the group read."""

    maps: dict[str, np.ndarray]
    slices: list[int]
    meta: dict[str, dict]
    geometry: dict[int, ImageGeometry]
    group: str


def _image_groups(f: h5py.File) -> list[str]:
    return sorted(name for name, item in f.items() if isinstance(item, h5py.Group)
                  and any(k.startswith("image_") for k in item))


def read_map_file(path: str | Path, group: str | None = None) -> MapFile:
    """Read the quantitative maps of a map file (ours, or any client-layout file whose images carry
    `GADGETRON_DataRole` T1/T2/...). group None: the only group with images, or the newest by name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"map file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            groups = _image_groups(f)
            raw = [name for name, item in f.items() if isinstance(item, h5py.Group) and "data" in item]
    except OSError as exc:
        raise MapsError(f"{path} is not an HDF5 map file: {exc}") from exc
    if group is None:
        if not groups and raw:
            raise MapsError(f"{path} holds raw acquisitions (group {raw[0]!r}), not maps: reconstruct it first, "
                            f"`mrf reconstruct {path} -o maps.h5` or `mrf replay {path} -c mrf_default.xml -o "
                            "maps.h5`, then run this on maps.h5")
        if not groups:
            raise MapsError(f"{path} has no group with image_<series> entries: not a map file")
        group = groups[-1]
        if len(groups) > 1:
            log.info("%s has %d image groups; reading the newest, %r", path, len(groups), group)
    elif group not in groups:
        raise MapsError(f"{path} has no image group {group!r} (has: {', '.join(groups) or 'none'})")
    dataset = ismrmrd.Dataset(str(path), group, create_if_needed=False)
    try:
        per_key: dict[str, dict[int, np.ndarray]] = {}
        meta: dict[str, dict] = {}
        geometry: dict[int, ImageGeometry] = {}
        for name in dataset.list():
            if not name.startswith("image_"):
                continue
            for number in range(dataset.number_of_images(name)):
                image = dataset.read_image(name, number)
                info = image_meta(image)
                role = info.get("GADGETRON_DataRole")
                role = role[0] if isinstance(role, list) else role
                key = info.get("MRF_Quantity") or next((q.key for q in QUANTITIES if q.role == role), None)
                if key not in QUANTITY_BY_KEY:
                    continue
                values = np.asarray(image.data, dtype=np.float32)[0, 0]
                ratio = float(info.get("GADGETRON_ScaleRatio", 1.0))
                values = values / np.float32(ratio)
                slice_index = int(image.getHead().slice)
                per_key.setdefault(key, {})[slice_index] = values
                meta[key] = info
                geometry[slice_index] = ImageGeometry.from_acquisition(image.getHead(),
                                                                       tuple(image.getHead().field_of_view))
    finally:
        dataset.close()
    if "t1_ms" not in per_key:
        raise MapsError(f"{path} group {group!r} has no T1 map (found: {', '.join(per_key) or 'no maps'})")
    slices = sorted(per_key["t1_ms"])
    maps = {}
    for key, by_slice in per_key.items():
        if sorted(by_slice) != slices:
            raise MapsError(f"{path}: {key} covers slices {sorted(by_slice)}, T1 covers {slices}")
        maps[key] = np.stack([by_slice[s] for s in slices])
    unmapped = maps["t1_ms"] <= 0
    for key in maps:
        maps[key] = np.where(unmapped, np.nan, maps[key]).astype(np.float32)
    return MapFile(maps, slices, meta, geometry, group)
