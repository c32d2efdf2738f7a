"""Maps for the viewers physicists use (ITK-SNAP, 3D Slicer, Horos, a PACS): NIfTI-1 and DICOM, with the
geometry, unit and display window of the ISMRMRD map images.

Geometry. ISMRMRD positions and directions are in DICOM's patient coordinates (LPS: +x towards the
patient's left, +y posterior, +z head). An image's `position` is its centre, which the reconstruction
puts at pixel (nx // 2, ny // 2) (the FFT centre); columns run along read_dir, rows along phase_dir, the
pixel size is field_of_view / matrix. Pixel (column i, row j) of a slice is therefore at
    position + (i - nx // 2) * dx * read_dir + (j - ny // 2) * dy * phase_dir   (LPS, mm).
DICOM keeps LPS: ImagePositionPatient is that point for (0, 0), ImageOrientationPatient is read_dir then
phase_dir, PixelSpacing is (dy, dx). NIfTI is RAS: the affine is the LPS one with x and y negated; voxel
(i, j, k) is (column, row, slice), qform and sform both 'scanner' (code 1).

Values are the stored map values (unmapped voxels 0, as in the ISMRMRD images). NIfTI: float32 per map,
the unit in `descrip`, the window in cal_min/cal_max. DICOM: one MR Image Storage file per map and slice
(the storage class every viewer reads), uint16 with RescaleSlope (a power of ten: T1 of 5 s in 0.1 ms
steps) and a RealWorldValueMappingSequence giving the unit (UCUM), WindowCenter/WindowWidth in the unit.
"""

from __future__ import annotations

import datetime
import gzip
import math
from pathlib import Path

import numpy as np

from mrf_core.errors import MrfError
from mrf_core.io.atomic import atomic_path
from mrf_core.io.map_images import ImageGeometry, MapFile
from mrf_core.mapping.maps import QUANTITY_BY_KEY

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
UINT16_MAX = 65535
UCUM = {"ms": ("ms", "millisecond")}  # the others (relative, correlation, a.u.) are dimensionless: UCUM "1"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


class ExportError(MrfError):
    """Maps that cannot be exported as asked (a missing optional package, slices a volume cannot hold)."""


def _need(module: str, extra: str):
    """Import an optional package, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(f"{extra} export needs the {module} package: pip install 'mrf-gadgetron[{extra}]' "
                          f"(or pip install {module})") from exc


def pixel_to_lps(geometry: ImageGeometry, shape: tuple[int, int]) -> np.ndarray:
    """4x4 matrix from (column, row, 0, 1) of one slice to LPS mm, as the module docstring derives it; the
    slice axis is the slice thickness (fov z), or the pixel width when the images carry none."""
    thickness = geometry.fov_mm[2] if geometry.fov_mm[2] > 0 else geometry.fov_mm[0] / shape[1]
    return geometry.pixel_to_lps(shape, thickness)


def volume_affine_ras(map_file: MapFile) -> np.ndarray:
    """The NIfTI affine (RAS) of the map file's slices stacked in order: the slice axis is the step between
    consecutive slice positions (one slice: slice_dir times the slice thickness, fov z)."""
    shape = map_file.maps["t1_ms"].shape[1:]
    geometries = [map_file.geometry[s] for s in map_file.slices]
    affine = pixel_to_lps(geometries[0], shape)
    if len(geometries) > 1:
        positions = np.array([g.position for g in geometries], dtype=float)
        steps = np.diff(positions, axis=0)
        in_plane = [np.allclose((g.read_dir, g.phase_dir), (geometries[0].read_dir, geometries[0].phase_dir),
                                atol=1e-5) for g in geometries]
        if not all(in_plane) or not np.allclose(steps, steps[0], atol=1e-3) or np.linalg.norm(steps[0]) < 1e-6:
            raise ExportError(f"slices {map_file.slices} are not parallel and evenly spaced (positions "
                              f"{positions.round(3).tolist()}): one NIfTI volume cannot hold them; export --dicom, "
                              "which keeps each slice's position")
        affine[:3, 2] = steps[0]
    return LPS_TO_RAS @ affine


def _window(map_file: MapFile, key: str) -> tuple[float, float]:
    """(low, high) of the display window the images carry, in the map's unit; without one, the quantity's
    default window, or 0 to the largest value."""
    meta = map_file.meta.get(key, {})

    def value(name: str) -> float | None:
        item = meta.get(name)
        return None if item is None else float(item[0] if isinstance(item, list) else item)

    centre, width, ratio = value("GADGETRON_WindowCenter"), value("GADGETRON_WindowWidth"), value(
        "GADGETRON_ScaleRatio") or 1.0
    if centre is not None and width is not None:
        centre, width = centre / ratio, width / ratio
    elif QUANTITY_BY_KEY[key].window is not None:
        centre, width = QUANTITY_BY_KEY[key].window
    else:
        top = float(np.nanmax(map_file.maps[key]))
        centre, width = top / 2, top
    return max(centre - width / 2, 0.0), centre + width / 2


def _stored(map_file: MapFile, key: str) -> np.ndarray:
    """The map as the images store it: float32, 0 where unmapped."""
    values = map_file.maps[key]
    return np.where(np.isfinite(values), values, 0.0).astype(np.float32)


def export_nifti(map_file: MapFile, out_dir: str | Path) -> list[Path]:
    """One <key>.nii.gz per map (t1_ms, t2_ms, pd, ...): float32 (nx, ny, n_slices) with the RAS affine."""
    nib = _need("nibabel", "nifti")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    affine = volume_affine_ras(map_file)
    paths = []
    for key in map_file.maps:
        quantity = QUANTITY_BY_KEY[key]
        image = nib.Nifti1Image(_stored(map_file, key).transpose(2, 1, 0), affine)
        header = image.header
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        header.set_xyzt_units("mm")
        header.set_intent("estimate", name=quantity.role[:15])
        header["descrip"] = f"MRF {quantity.role} [{quantity.unit}]"
        header["cal_min"], header["cal_max"] = _window(map_file, key)
        path = out_dir / f"{key}.nii.gz"
        with atomic_path(path) as tmp:
            tmp.write_bytes(gzip.compress(image.to_bytes(), mtime=0))
        paths.append(path)
    return paths


def rescale_slope(values: np.ndarray) -> float:
    """The power of ten that fits the largest value into uint16 (1 for an all-zero map)."""
    top = float(np.max(values)) if values.size else 0.0
    return 10.0 ** math.ceil(math.log10(top / UINT16_MAX)) if top > 0 else 1.0


def export_dicom(map_file: MapFile, out_dir: str | Path, patient_name: str = "", patient_id: str = "") -> list[Path]:
    """<out_dir>/<key>/slice_<n>.dcm: one MR image per map and slice, one series per map, one study and
    frame of reference per export."""
    _need("pydicom", "dicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    out_dir = Path(out_dir)
    now = datetime.datetime.now()
    study, frame = generate_uid(), generate_uid()
    paths = []
    for key in map_file.maps:
        quantity = QUANTITY_BY_KEY[key]
        values = _stored(map_file, key)
        if (values < 0).any():
            raise ExportError(f"the {quantity.role} map has negative values: MR images store them unsigned")
        slope = rescale_slope(values)
        low, high = _window(map_file, key)
        code, meaning = UCUM.get(quantity.unit, ("1", "no units"))
        series = generate_uid()
        (out_dir / key).mkdir(parents=True, exist_ok=True)
        for position, slice_index in enumerate(map_file.slices):
            geometry = map_file.geometry[slice_index]
            to_lps = pixel_to_lps(geometry, values.shape[1:])
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
            ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, ds.file_meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
            ds.Modality, ds.Manufacturer = "MR", "mrf-gadgetron"
            ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", ""
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
            ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", ""
            ds.SeriesNumber = quantity.series_offset + 1  # as the images' series with series_base 1
            ds.InstanceNumber = slice_index + 1
            ds.SeriesDescription = f"MRF {quantity.role} map ({quantity.unit})"
            ds.ImageType = ["DERIVED", "PRIMARY", f"{quantity.role.upper()[:16]}"]
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "RM", "NONE", "", "2D"
            ds.ImagePositionPatient = [f"{v:.6g}" for v in to_lps[:3, 3]]
            ds.ImageOrientationPatient = [f"{v:.6g}" for v in (*geometry.read_dir, *geometry.phase_dir)]
            ds.PixelSpacing = [f"{np.linalg.norm(to_lps[:3, 1]):.6g}", f"{np.linalg.norm(to_lps[:3, 0]):.6g}"]
            ds.SliceThickness = f"{geometry.fov_mm[2]:.6g}"
            ds.SliceLocation = f"{float(np.dot(geometry.position, geometry.slice_dir)):.6g}"
            ds.PositionReferenceIndicator = ""
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows, ds.Columns = values.shape[1:]
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", f"{slope:g}", quantity.unit[:16]
            ds.WindowCenter, ds.WindowWidth = f"{(low + high) / 2:.6g}", f"{high - low:.6g}"
            mapping, units = Dataset(), Dataset()
            units.CodeValue, units.CodingSchemeDesignator, units.CodeMeaning = code, "UCUM", meaning
            mapping.MeasurementUnitsCodeSequence = [units]
            mapping.LUTLabel, mapping.LUTExplanation = quantity.role[:16], f"MRF {quantity.role} [{quantity.unit}]"
            mapping.RealWorldValueFirstValueMapped, mapping.RealWorldValueLastValueMapped = 0, UINT16_MAX
            mapping.RealWorldValueIntercept, mapping.RealWorldValueSlope = 0.0, slope
            ds.RealWorldValueMappingSequence = [mapping]
            ds.PixelData = np.rint(values[position] / slope).astype("<u2").tobytes()
            path = out_dir / key / f"slice_{slice_index:03d}.dcm"
            with atomic_path(path) as tmp:
                ds.save_as(tmp, enforce_file_format=True)
            paths.append(path)
    return paths
