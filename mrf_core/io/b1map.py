"""Measured B1 maps (relative flip-angle scale, 1.0 nominal) read from a file and resampled onto a slice.

Geometry: every map becomes values (nz, ny, nx) and an affine from voxel index (column, row, slice, 1) to
ISMRMRD patient coordinates in mm (LPS, DICOM's frame: +x towards the patient's left, +y posterior, +z
head). A slice's pixel (row i, column j) sits at position + (j - nx//2) dx read_dir + (i - ny//2) dy
phase_dir, with dx, dy = field of view / matrix (the images' convention, pixel N//2 at the centre). The map
is sampled there trilinearly between voxel centres and holds its edge value over the outer half voxel; a
point farther out along any axis (for a one-slice map: outside its slice thickness) has no B1.

Formats (`load_b1_map`):
- NIfTI (.nii, .nii.gz; needs nibabel): a 2-D or 3-D volume and its affine (qform/sform), which NIfTI defines
  in RAS; the affine's x and y rows change sign to give LPS.
- ISMRMRD images in the client layout (.h5, .mrd): the series whose meta says B1 (`GADGETRON_DataRole` B1 or
  `MRF_Quantity` b1; else the file's only series), each image placed by its position, read_dir, phase_dir,
  slice_dir and field_of_view (z: slice thickness); several images must be parallel slices, evenly spaced.
- .npy: a 2-D (ny, nx) or 3-D (nz, ny, nx) array with NO geometry of its own: it is assumed to cover the
  scan's field of view in the scan's orientation (any matrix, pixel centres as above); a 3-D array gives
  slice k of the scan its k-th plane, a 2-D one every slice.
- .npz: array `b1` as for .npy, and optionally `affine` (4 x 4, index (column, row, slice) -> LPS mm),
  which then places it like a NIfTI map (without the RAS sign change).
Voxels without a measurement (NaN, <= 0) take the nearest measured value, so a map that stops just inside
the object still covers it. Values must be relative: a median above 3 (percent, or a flip angle in
degrees) is an error, not a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from mrf_core.errors import MrfError
from mrf_core.io.map_images import ImageGeometry, image_meta

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
MAX_RELATIVE_B1 = 3.0


class B1MapError(MrfError):
    """A B1 map that cannot be read or used for a slice: the message names the file and the fix."""


def slice_affine(geometry: ImageGeometry, shape: tuple[int, int], thickness_mm: float | None = None) -> np.ndarray:
    """The 4 x 4 affine of an (ny, nx) image of `geometry`: (column, row, slice, 1) -> LPS mm; the slice axis
    is thickness_mm (default fov z), 1 mm when that is not positive."""
    dz = thickness_mm if thickness_mm is not None else geometry.fov_mm[2]
    return geometry.pixel_to_lps(shape, dz if dz > 0 else 1.0)


def pixel_positions_mm(geometry: ImageGeometry, shape: tuple[int, int]) -> np.ndarray:
    """LPS coordinates (mm) of every pixel centre of an (ny, nx) image: (ny, nx, 3)."""
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    index = np.stack([cols, rows, np.zeros_like(rows), np.ones_like(rows)], axis=-1).astype(np.float64)
    return (index @ slice_affine(geometry, shape).T)[..., :3]


@dataclass(frozen=True)
class B1Map:
    """values (nz, ny, nx) relative B1, every voxel measured or filled; affine (index -> LPS mm) or None for a
    map that takes the scan's geometry (.npy, .npz without affine); source: the file."""

    values: np.ndarray
    affine: np.ndarray | None
    source: str

    def on_slice(self, geometry: ImageGeometry, shape: tuple[int, int], slice_index: int = 0) -> np.ndarray:
        """B1 at every pixel of a slice (ny, nx), NaN where the map does not reach."""
        values = self.values
        if self.affine is None:  # the scan's own in-plane geometry; plane k for slice k
            if values.shape[0] > 1:
                if not 0 <= slice_index < values.shape[0]:
                    raise B1MapError(f"B1 map {self.source} has {values.shape[0]} planes, no plane for slice "
                                     f"{slice_index}: give one plane per slice, or one for all")
                values = values[slice_index : slice_index + 1]
            affine = slice_affine(geometry, values.shape[1:])
        else:
            affine = self.affine
        points = pixel_positions_mm(geometry, shape).reshape(-1, 3)
        index = (np.c_[points, np.ones(len(points))] @ np.linalg.inv(affine).T)[:, :3]  # (col, row, slice)
        extent = np.array(values.shape[::-1], dtype=np.float64)
        inside = np.all((index >= -0.5 - 1e-6) & (index <= extent - 0.5 + 1e-6), axis=1)
        sampled = ndimage.map_coordinates(values, index[:, ::-1].T, order=1, mode="nearest")
        return np.where(inside, sampled, np.nan).reshape(shape)


def load_b1_map(path: str | Path) -> B1Map:
    """Read a B1 map file (module docstring for the formats and their geometry)."""
    path = Path(path)
    if not path.is_file():
        raise B1MapError(f"B1 map file {path} does not exist (setting b1_map)")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        values, affine = _read_nifti(path)
    elif name.endswith(".npy"):
        values, affine = np.load(path, allow_pickle=False), None
    elif name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            if "b1" not in f:
                raise B1MapError(f"B1 map {path} has no array 'b1' (has: {', '.join(f.files)})")
            values = f["b1"]
            affine = np.asarray(f["affine"], dtype=np.float64) if "affine" in f else None
        if affine is not None and affine.shape != (4, 4):
            raise B1MapError(f"B1 map {path}: 'affine' has shape {affine.shape}, expected (4, 4)")
    elif name.endswith((".h5", ".mrd", ".hdf5")):
        values, affine = _read_ismrmrd(path)
    else:
        raise B1MapError(f"B1 map {path}: unknown format (expected .nii, .nii.gz, .npy, .npz, or ISMRMRD .h5/.mrd)")
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 2:
        values = values[None]
    if values.ndim != 3 or min(values.shape) < 1:
        raise B1MapError(f"B1 map {path} has shape {values.shape}: expected 2-D or 3-D")
    return B1Map(_filled(values, path), affine, str(path))


def _filled(values: np.ndarray, path: Path) -> np.ndarray:
    """Unmeasured voxels (non-finite, <= 0) take the nearest measured value; the units are checked."""
    measured = np.isfinite(values) & (values > 0)
    if not measured.any():
        raise B1MapError(f"B1 map {path} has no voxel with a B1 value (all <= 0 or not finite)")
    median = float(np.median(values[measured]))
    if median > MAX_RELATIVE_B1:
        raise B1MapError(f"B1 map {path} has median {median:g}: B1 must be relative (1.0 nominal); divide a map in "
                         "percent by 100, or a flip-angle map by its nominal angle")
    if measured.all():
        return values
    nearest = ndimage.distance_transform_edt(~measured, return_distances=False, return_indices=True)
    return values[tuple(nearest)]


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        import nibabel
    except ImportError as exc:
        raise B1MapError(f"reading {path} needs nibabel: pip install 'mrf-gadgetron[nifti]'") from exc
    try:
        image = nibabel.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float64)
    except Exception as exc:  # nibabel raises several types for a damaged file
        raise B1MapError(f"B1 map {path} is not a readable NIfTI file: {exc}") from None
    data = np.squeeze(data, axis=tuple(range(3, data.ndim))) if data.ndim > 3 else data
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise B1MapError(f"NIfTI B1 map {path} has shape {data.shape}: expected one 2-D or 3-D volume")
    return data.transpose(2, 1, 0), RAS_TO_LPS @ np.asarray(image.affine, dtype=np.float64)


def _read_ismrmrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import h5py
    import ismrmrd

    try:
        with h5py.File(path, "r") as f:
            series = [(group, name) for group, item in f.items() if isinstance(item, h5py.Group)
                      for name in item if name.startswith("image_")]
    except OSError as exc:
        raise B1MapError(f"B1 map {path} is not an HDF5 file: {exc}") from None
    images = {}
    for group, name in series:
        dataset = ismrmrd.Dataset(str(path), group, create_if_needed=False)
        try:
            images[(group, name)] = [dataset.read_image(name, i) for i in range(dataset.number_of_images(name))]
        finally:
            dataset.close()

    def is_b1(image) -> bool:
        meta = image_meta(image)
        role, quantity = meta.get("GADGETRON_DataRole"), meta.get("MRF_Quantity")
        first = lambda v: v[0] if isinstance(v, list) else v  # noqa: E731
        return first(role) == "B1" or first(quantity) == "b1"

    chosen = [key for key, items in images.items() if items and is_b1(items[0])]
    if not chosen and len(images) == 1:
        chosen = list(images)
    if len(chosen) != 1:
        listing = ", ".join(f"{g}/{n}" for g, n in images) or "none"
        raise B1MapError(f"B1 map {path}: expected one image series marked B1 (GADGETRON_DataRole B1) or a file "
                         f"with one series; found series {listing}")
    return _stack(images[chosen[0]], path)


def _stack(images: list, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parallel, evenly spaced 2-D images -> (values (nz, ny, nx), affine)."""
    heads = [image.getHead() for image in images]
    planes = []
    for image in images:
        ratio = image_meta(image).get("GADGETRON_ScaleRatio")
        ratio = float(ratio[0] if isinstance(ratio, list) else ratio) if ratio is not None else 1.0
        planes.append(np.abs(np.asarray(image.data))[0, 0].astype(np.float64) / ratio)
    geometries = [ImageGeometry.from_acquisition(h, tuple(h.field_of_view)) for h in heads]
    first = geometries[0]
    normal = np.asarray(first.slice_dir, dtype=np.float64)
    for g, plane in zip(geometries, planes, strict=True):
        if plane.shape != planes[0].shape or not np.allclose(
                np.r_[g.read_dir, g.phase_dir, g.slice_dir, g.fov_mm[:2]],
                np.r_[first.read_dir, first.phase_dir, first.slice_dir, first.fov_mm[:2]], atol=1e-4):
            raise B1MapError(f"B1 map {path}: its images differ in matrix, orientation or field of view; "
                             "a map must be parallel slices of one geometry")
    order = np.argsort([float(np.dot(g.position, normal)) for g in geometries])
    offsets = np.array([float(np.dot(geometries[i].position, normal)) for i in order])
    thickness = None
    if len(order) > 1:
        steps = np.diff(offsets)
        if steps.min() <= 0 or steps.max() - steps.min() > 1e-3 * steps.max():
            raise B1MapError(f"B1 map {path}: its slices are not evenly spaced (steps {np.round(steps, 3)} mm)")
        thickness = float(steps.mean())
    base = geometries[order[0]]
    if thickness is None and not base.fov_mm[2] > 0:
        raise B1MapError(f"B1 map {path}: a one-slice map needs its slice thickness in field_of_view[2]")
    affine = slice_affine(base, planes[0].shape, thickness)
    return np.stack([planes[i] for i in order]), affine
