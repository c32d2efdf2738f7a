"""Maps as ISMRMRD images and map files in the client layout; basis conversion."""

from __future__ import annotations

import h5py
import ismrmrd
import numpy as np
import pytest

from mrf_core.io.map_images import (
    ImageGeometry,
    coefficient_image,
    image_meta,
    map_images,
    read_map_file,
    write_images,
)
from mrf_core.mapping.maps import MapsError, QuantitativeMaps, object_mask
from mrf_core.mapping.matching import MatchResult
from mrf_core.physics.temporal_basis import BasisError, TemporalBasis


def _maps(slice_index: int, shape=(6, 8), seed=0) -> QuantitativeMaps:
    rng = np.random.default_rng(seed)
    t1 = rng.uniform(200, 2500, shape)
    t1[0, 0] = np.nan  # unmapped
    result = MatchResult(
        t1_ms=t1, t2_ms=rng.uniform(20, 250, shape), b1=np.full(shape, np.nan),
        pd=rng.uniform(0.5, 2.0, shape) * np.exp(1j * rng.uniform(-np.pi, np.pi, shape)),
        score=rng.uniform(0.9, 1, shape),
        atom_index=np.zeros(shape, dtype=int),
    )
    return QuantitativeMaps.from_match(result, shape, slice_index, "dictionary")


GEOMETRY = ImageGeometry(fov_mm=(300.0, 300.0, 5.0), position=(1.0, -2.0, 3.5), read_dir=(0.0, 1.0, 0.0),
                         phase_dir=(1.0, 0.0, 0.0), slice_dir=(0.0, 0.0, -1.0))


def test_from_match_masks_and_drops_unestimated_b1():
    maps = _maps(0)
    assert maps.b1 is None
    assert np.isnan(maps.t1_ms[0, 0]) and np.isnan(maps.pd[0, 0]) and np.isnan(maps.quality[0, 0])
    assert maps.mask.sum() == maps.t1_ms.size - 1
    assert (maps.pd[maps.mask] >= 0).all()
    with pytest.raises(MapsError, match="voxels"):
        QuantitativeMaps.from_match(MatchResult(*(np.zeros(3),) * 6), (2, 2), 0, "dictionary")


def test_from_match_drops_faint_voxels_beside_the_object():
    """LLR leaves faint copies of an object's signal next to it: |PD| <= 10 % of the 99th percentile is
    not mapped; pd_fraction=0 keeps everything the mask keeps."""
    shape = (4, 5)
    pd = np.full(shape, 1.0 + 0j)
    pd[0, :] = 0.05  # a faint rim that matched the object's T1/T2
    pd[3, 4] = 0.12j  # faint, but above 10 %
    result = MatchResult(t1_ms=np.full(shape, 800.0), t2_ms=np.full(shape, 60.0), b1=np.full(shape, np.nan), pd=pd,
                         score=np.ones(shape), atom_index=np.zeros(shape, dtype=int))
    maps = QuantitativeMaps.from_match(result, shape, 0, "network")
    assert np.isnan(maps.t1_ms[0]).all() and np.isnan(maps.pd[0]).all()
    assert maps.mask[1:].all() and maps.pd[3, 4] == pytest.approx(0.12)
    assert QuantitativeMaps.from_match(result, shape, 0, "network", pd_fraction=0).mask.all()


def test_images_carry_scanner_meta_and_geometry():
    maps = _maps(3)
    images = map_images(maps, GEOMETRY, series_base=10, extra_meta={"MRF_ScheduleHash": "abc"})
    roles = [image_meta(im)["GADGETRON_DataRole"] for im in images]
    assert roles == ["T1", "T2", "PD", "MatchQuality"]
    assert len({im.image_series_index for im in images}) == 4 and images[0].image_series_index == 10
    t1 = images[0]
    meta = image_meta(t1)
    assert meta["DataRole"] == "Quantitative" and meta["MRF_Unit"] == "ms" and meta["MRF_ScheduleHash"] == "abc"
    head = t1.getHead()
    assert head.slice == 3 and head.image_index == 4 and t1.data.dtype == np.float32
    assert np.allclose(head.position, GEOMETRY.position) and np.allclose(head.slice_dir, GEOMETRY.slice_dir)
    assert np.allclose(head.field_of_view, GEOMETRY.fov_mm)
    assert t1.data[0, 0, 0, 0] == 0  # unmapped -> 0 on the wire
    assert np.allclose(t1.data[0, 0][maps.mask], maps.t1_ms[maps.mask])


def test_ushort_scaling_round_trips_within_a_step(tmp_path):
    maps = _maps(0)
    images = map_images(maps, GEOMETRY, as_ushort=True, windows={"t2_ms": (80.0, 100.0)})
    assert all(im.data.dtype == np.uint16 for im in images)
    assert float(image_meta(images[2])["GADGETRON_ScaleRatio"]) == pytest.approx(4095 / np.nanmax(maps.pd))
    # windows are in stored units: value window x scale ratio
    assert float(image_meta(images[3])["GADGETRON_WindowCenter"]) == 500.0  # quality, ratio 1000
    assert float(image_meta(images[1])["GADGETRON_WindowCenter"]) == 80.0
    assert float(image_meta(images[0])["GADGETRON_WindowWidth"]) == 3000.0
    write_images(tmp_path / "u.h5", images, group="g")
    back = read_map_file(tmp_path / "u.h5")
    assert np.nanmax(np.abs(back.maps["t2_ms"] - maps.t2_ms)) <= 0.5 + 1e-6
    assert np.nanmax(np.abs(back.maps["t1_ms"] - maps.t1_ms)) <= 0.5 + 1e-6


def test_map_file_round_trip_in_client_layout(tmp_path):
    path = tmp_path / "maps.h5"
    slices = [_maps(1, seed=1), _maps(0, seed=2)]
    images = [im for m in slices for im in map_images(m, GEOMETRY)]
    images.append(coefficient_image(np.ones((5, 6, 8), np.complex64), "b" * 16, GEOMETRY, 0, series=20))
    group = write_images(path, images)
    with h5py.File(path, "r") as f:
        assert sorted(f[group]) == ["image_1", "image_2", "image_20", "image_3", "image_5"]
        assert f[group]["image_1"]["data"].shape == (2, 1, 1, 6, 8)
    # the ismrmrd library reads it back like any client file
    dataset = ismrmrd.Dataset(str(path), group, create_if_needed=False)
    coeffs = dataset.read_image("image_20", 0)
    dataset.close()
    assert coeffs.data.shape == (5, 1, 6, 8) and image_meta(coeffs)["MRF_BasisHash"] == "b" * 16
    back = read_map_file(path)
    assert back.slices == [0, 1] and back.group == group
    np.testing.assert_allclose(back.maps["t1_ms"][1], slices[0].t1_ms, rtol=1e-6)
    np.testing.assert_allclose(back.maps["pd"][0], slices[1].pd, rtol=1e-6)
    assert "b1" not in back.maps and back.geometry[0].position == GEOMETRY.position


def test_read_map_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_map_file(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(MapsError, match="not an HDF5"):
        read_map_file(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.create_group("dataset")
    with pytest.raises(MapsError, match="no group"):
        read_map_file(tmp_path / "empty.h5")
    write_images(tmp_path / "coeffs.h5", [coefficient_image(np.ones((2, 4, 4)), "x", GEOMETRY, 0, 20)], "g")
    with pytest.raises(MapsError, match="no T1 map"):
        read_map_file(tmp_path / "coeffs.h5")
    with pytest.raises(MapsError, match="no image group 'h'"):
        read_map_file(tmp_path / "coeffs.h5", group="h")


def test_object_mask():
    image = np.zeros((10, 10))
    image[3:7, 3:7] = 5.0
    image[0, 0] = 0.2
    mask = object_mask(image)
    assert mask.sum() == 16 and not mask[0, 0]
    assert not object_mask(np.zeros((4, 4))).any()


def _basis(vectors, values=None, phase=1j):
    values = np.ones(vectors.shape[0]) if values is None else values
    return TemporalBasis(vectors.astype(np.float32), values, phase, "h")


def test_basis_conversion_is_exact_within_a_subspace_and_refuses_another():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(50, 50)))
    source = _basis(q[:, :4], np.linspace(4, 1, 50), phase=np.exp(0.3j))
    rotation, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    target = _basis(q[:, :4] @ rotation, phase=np.exp(-1.1j))
    coeffs = rng.normal(size=(7, 4)) + 1j * rng.normal(size=(7, 4))
    converted = coeffs @ source.conversion_to(target).T
    np.testing.assert_allclose(target.expand(converted), source.expand(coeffs), atol=1e-5)
    with pytest.raises(BasisError, match="captures"):
        source.conversion_to(_basis(q[:, 10:14]))
