"""`mrf export`: NIfTI and DICOM read back with nibabel and pydicom hold the ISMRMRD images' values, and
their geometry matches the images' position/read_dir/phase_dir/field_of_view, computed here from the
header fields (LPS; NIfTI RAS), for an axial and an oblique two-slice stack. The map files are written by
this test with ismrmrd directly, not by the project's writer."""

from __future__ import annotations

import dataclasses
import sys

import ismrmrd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from mrf_core.io.export import ExportError, export_dicom, export_nifti
from mrf_core.io.map_images import read_map_file
from mrf_gadgetron.cli import main

NX, NY = 8, 6  # not square: a swapped row/column shows
FOV = (200.0, 120.0, 4.0)  # dx 25 mm, dy 20 mm
SLICE_GAP_MM = 6.0


def _oblique_directions():
    """read, phase, slice: the axial frame turned 20 deg about (1, 1, 1)."""
    axis = np.ones(3) / np.sqrt(3)
    angle = np.deg2rad(20)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    return rotation[:, 0], rotation[:, 1], rotation[:, 2]


def _write_maps(path, read, phase, slice_dir, centre):
    """Two slices of T1 and T2 (ms, 0 = unmapped) as float images in the client layout."""
    rng = np.random.default_rng(1)
    values = {"T1": rng.uniform(100, 2000, (2, NY, NX)), "T2": rng.uniform(10, 200, (2, NY, NX))}
    for v in values.values():
        v[:, 0, 0] = 0.0
    dataset = ismrmrd.Dataset(str(path), "2025-01-02 03:04:05", create_if_needed=True)
    for series, (role, maps) in enumerate(values.items(), start=1):
        for s in range(2):
            image = ismrmrd.Image.from_array(maps[s][None, None].astype(np.float32), transpose=False)
            head = image.getHead()
            head.field_of_view = FOV
            head.position = tuple(np.asarray(centre) + s * SLICE_GAP_MM * np.asarray(slice_dir))
            head.read_dir, head.phase_dir, head.slice_dir = tuple(read), tuple(phase), tuple(slice_dir)
            head.image_series_index, head.slice, head.image_index = series, s, s + 1
            image.setHead(head)
            meta = ismrmrd.Meta()
            meta["GADGETRON_DataRole"] = role
            meta["GADGETRON_WindowCenter"], meta["GADGETRON_WindowWidth"] = "1000", "1800"
            image.attribute_string = meta.serialize()
            dataset.append_image(f"image_{series}", image)
    dataset.close()
    return values


def _expected_lps(i, j, s, read, phase, slice_dir, centre):
    """Pixel (column i, row j) of slice s: the image centre is pixel (nx // 2, ny // 2)."""
    return (np.asarray(centre) + s * SLICE_GAP_MM * np.asarray(slice_dir) + (i - NX // 2) * FOV[0] / NX * read
            + (j - NY // 2) * FOV[1] / NY * phase)


AXIAL = (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0]))


@pytest.mark.parametrize("directions", [AXIAL, _oblique_directions()], ids=["axial", "oblique"])
def test_export_round_trip(tmp_path, capsys, directions):
    read, phase, slice_dir = directions
    centre = (12.0, -30.0, 45.0)
    path = tmp_path / "maps.h5"
    values = _write_maps(path, read, phase, slice_dir, centre)
    assert main(["export", str(path), "--nifti", str(tmp_path / "nii"), "--dicom", str(tmp_path / "dcm")]) == 0
    assert "wrote 2 NIfTI files" in capsys.readouterr().out
    voxels = [(0, 0, 0), (NX - 1, 0, 1), (3, NY - 1, 0), (5, 2, 1)]
    for key, role in (("t1_ms", "T1"), ("t2_ms", "T2")):
        image = nib.load(tmp_path / "nii" / f"{key}.nii.gz")
        data = np.asarray(image.dataobj)
        assert data.shape == (NX, NY, 2) and data.dtype == np.float32
        np.testing.assert_array_equal(data, values[role].astype(np.float32).transpose(2, 1, 0))
        assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
        for i, j, s in voxels:
            lps = _expected_lps(i, j, s, read, phase, slice_dir, centre)
            ras = image.affine @ [i, j, s, 1]
            np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4)
            np.testing.assert_allclose(image.get_qform() @ [i, j, s, 1], ras, atol=1e-3)  # qform: float32 quaternion
        assert image.header["cal_min"] == 100 and image.header["cal_max"] == 1900
        if directions is AXIAL:
            assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
        for s in range(2):
            ds = pydicom.dcmread(tmp_path / "dcm" / key / f"slice_{s:03d}.dcm")
            slope = float(ds.RescaleSlope)
            assert slope == float(ds.RealWorldValueMappingSequence[0].RealWorldValueSlope)
            assert ds.RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "ms"
            assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (1000, 1800)
            real = apply_modality_lut(ds.pixel_array, ds)
            assert real.shape == (NY, NX)
            np.testing.assert_allclose(real, values[role][s], atol=slope / 2 + 1e-3 * slope)
            row_dir, col_dir = (np.array(ds.ImageOrientationPatient[:3], float),
                                np.array(ds.ImageOrientationPatient[3:], float))
            for i, j, _ in voxels:  # DICOM's pixel-to-patient mapping (PS3.3 C.7.6.2.1.1)
                where = (np.array(ds.ImagePositionPatient, float) + i * float(ds.PixelSpacing[1]) * row_dir
                         + j * float(ds.PixelSpacing[0]) * col_dir)
                np.testing.assert_allclose(where, _expected_lps(i, j, s, read, phase, slice_dir, centre), atol=1e-3)


def test_export_refusals(tmp_path, capsys, monkeypatch):
    path = tmp_path / "maps.h5"
    _write_maps(path, *AXIAL, centre=(0.0, 0.0, 0.0))
    assert main(["export", str(path)]) == 2
    assert "--nifti DIR and/or --dicom DIR" in capsys.readouterr().err
    map_file = read_map_file(path)
    turned = dataclasses.replace(map_file.geometry[1], read_dir=(0.0, 1.0, 0.0), phase_dir=(-1.0, 0.0, 0.0))
    with pytest.raises(ExportError, match="not parallel and evenly spaced.*--dicom"):
        export_nifti(dataclasses.replace(map_file, geometry={0: map_file.geometry[0], 1: turned}), tmp_path / "n")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # not installed
    with pytest.raises(ExportError, match=r"mrf-gadgetron\[dicom\]"):
        export_dicom(map_file, tmp_path / "dcm")
