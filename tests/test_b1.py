"""B1 maps: reading and resampling by geometry (NIfTI, ISMRMRD images, .npy/.npz), matching in a voxel's
B1 slice, the dictionary mapper with a map, the B1 meta of the maps."""

from __future__ import annotations

import ismrmrd
import numpy as np
import pytest

from mrf_core.io.b1map import B1MapError, load_b1_map
from mrf_core.io.map_images import ImageGeometry
from mrf_core.mapping.b1_matching import B1_GROUP_STEP, match_at_b1
from mrf_core.physics.dictionary import build_dictionary, percent_grid
from mrf_core.physics.epg import simulate_fingerprints
from mrf_core.physics.sequence import default_schedule
from mrf_core.pipeline import DictionaryMapper, slice_b1
from mrf_core.settings import defaults

# an oblique slice: read and phase directions turned 30 deg about z, then tilted about x
_C, _S = np.cos(np.radians(30)), np.sin(np.radians(30))
_READ = np.array([_C, _S, 0.0])
_PHASE = np.array([-_S * np.cos(0.2), _C * np.cos(0.2), np.sin(0.2)])
GEOMETRY = ImageGeometry((200.0, 180.0, 5.0), position=(6.0, -4.0, 10.0), read_dir=tuple(_READ),
                         phase_dir=tuple(_PHASE), slice_dir=tuple(np.cross(_READ, _PHASE)))
SHAPE = (24, 32)
GRADIENT_LPS = np.array([0.002, -0.001, 0.003])  # B1 per mm along x, y, z (patient LPS)


def linear_b1(points_lps: np.ndarray) -> np.ndarray:
    return 1.0 + (points_lps - np.array([0.0, 0.0, 10.0])) @ GRADIENT_LPS


def pixel_points(geometry: ImageGeometry, shape) -> np.ndarray:
    """LPS centre of pixel (row i, column j), written out from the convention (pixel N//2 at the centre)."""
    ny, nx = shape
    dx, dy = geometry.fov_mm[0] / nx, geometry.fov_mm[1] / ny
    i, j = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    return (np.asarray(geometry.position) + ((j - nx // 2) * dx)[..., None] * np.asarray(geometry.read_dir)
            + ((i - ny // 2) * dy)[..., None] * np.asarray(geometry.phase_dir))


def test_nifti_map_of_a_linear_field_resamples_exactly_by_its_affine(tmp_path):
    """Trilinear interpolation reproduces a linear field: values at the slice's pixels between voxel centres
    equal the field there (float64; the affine's entries are exact in the header's float32), RAS in the file
    and LPS in the scan; the outer half voxel holds the edge value; pixels beyond it have no B1."""
    nibabel = pytest.importorskip("nibabel")
    shape = (30, 26, 12)  # i, j, k
    affine = np.array([[-4.0, 0.0, 0.5, 70.0],  # RAS: axis i runs towards -x (right to left) ...
                       [0.0, 4.5, 0.0, -60.0],
                       [0.25, 0.0, 5.0, -20.0],
                       [0.0, 0.0, 0.0, 1.0]])
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ras = np.stack([i, j, k, np.ones_like(i)], axis=-1) @ affine.T
    lps = ras[..., :3] * np.array([-1.0, -1.0, 1.0])
    nibabel.save(nibabel.Nifti1Image(linear_b1(lps).astype(np.float64), affine), tmp_path / "b1.nii.gz")
    b1 = load_b1_map(tmp_path / "b1.nii.gz").on_slice(GEOMETRY, SHAPE)
    points = pixel_points(GEOMETRY, SHAPE)
    index = (np.c_[points.reshape(-1, 3) * [-1, -1, 1], np.ones(points[..., 0].size)] @ np.linalg.inv(affine).T)
    inside = np.all((index[:, :3] >= -0.5) & (index[:, :3] <= np.array(shape) - 0.5), axis=1).reshape(SHAPE)
    centres = np.all((index[:, :3] >= 0) & (index[:, :3] <= np.array(shape) - 1), axis=1).reshape(SHAPE)
    assert 0.2 < centres.mean() < inside.mean() < 1.0  # the test slice leaves the volume on one side
    np.testing.assert_allclose(b1[centres], linear_b1(points)[centres], rtol=0, atol=1e-9)
    assert np.isfinite(b1[inside]).all() and np.isnan(b1[~inside]).all()


def test_ismrmrd_images_placed_by_position_and_directions(tmp_path):
    """Three parallel slices written with ismrmrd directly, ScaleRatio 1000 ushort; the scan slice lies
    between two of them, so values come from interpolation across slices and are exact for a linear field."""
    read, phase, normal = np.eye(3)
    ny, nx, fov = 40, 48, (240.0, 200.0, 4.0)
    path = tmp_path / "b1.h5"
    dataset = ismrmrd.Dataset(str(path), "2026-01-01 10:00:00", create_if_needed=True)
    for n, z in enumerate((0.0, 8.0, 16.0)):
        g = ImageGeometry(fov, (0.0, 0.0, z), tuple(read), tuple(phase), tuple(normal))
        values = linear_b1(pixel_points(g, (ny, nx)))
        image = ismrmrd.Image.from_array(np.rint(values * 1000).astype(np.uint16)[None, None], transpose=False)
        head = image.getHead()
        head.field_of_view, head.position = fov, (0.0, 0.0, z)
        head.read_dir, head.phase_dir, head.slice_dir = tuple(read), tuple(phase), tuple(normal)
        head.image_series_index, head.slice = 4, n
        image.setHead(head)
        meta = ismrmrd.Meta()
        meta["GADGETRON_DataRole"], meta["GADGETRON_ScaleRatio"] = "B1", "1000"
        image.attribute_string = meta.serialize()
        dataset.append_image("image_4", image)
    dataset.close()
    target = ImageGeometry((200.0, 200.0, 5.0), (3.0, 2.0, 11.0))
    b1 = load_b1_map(path).on_slice(target, (32, 32))
    expected = linear_b1(pixel_points(target, (32, 32)))
    assert np.isfinite(b1).all()  # the last row lies in the map's outer half voxel (edge value held)
    np.testing.assert_allclose(b1[:-1], expected[:-1], atol=0.5e-3 + 1e-9)  # ushort rounding: 0.5 / 1000


def test_npy_and_npz_maps(tmp_path):
    """.npy takes the scan's geometry (a 16 x 16 map over the same FOV); .npz with an affine is placed by it."""
    coarse = ImageGeometry(GEOMETRY.fov_mm, GEOMETRY.position, GEOMETRY.read_dir, GEOMETRY.phase_dir,
                           GEOMETRY.slice_dir)
    np.save(tmp_path / "b1.npy", linear_b1(pixel_points(coarse, (16, 16))))
    b1 = load_b1_map(tmp_path / "b1.npy").on_slice(GEOMETRY, SHAPE)
    assert np.isfinite(b1).all()  # the last row and column lie in the map's outer half voxel
    np.testing.assert_allclose(b1[:-1, :-1], linear_b1(pixel_points(GEOMETRY, SHAPE))[:-1, :-1], atol=1e-9)
    affine = np.diag([5.0, 5.0, 5.0, 1.0])
    affine[:3, 3] = (-150.0, -150.0, -30.0)
    i, j, k = np.meshgrid(np.arange(16), np.arange(64), np.arange(64), indexing="ij")  # (slice, row, col)
    lps = np.stack([k, j, i, np.ones_like(i)], axis=-1) @ affine.T
    np.savez(tmp_path / "b1.npz", b1=linear_b1(lps[..., :3]), affine=affine)
    b1 = load_b1_map(tmp_path / "b1.npz").on_slice(GEOMETRY, SHAPE)
    np.testing.assert_allclose(b1, linear_b1(pixel_points(GEOMETRY, SHAPE)), atol=1e-9)


def test_bad_maps_are_explained(tmp_path):
    np.save(tmp_path / "percent.npy", np.full((8, 8), 100.0))
    with pytest.raises(B1MapError, match="median 100: B1 must be relative"):
        load_b1_map(tmp_path / "percent.npy")
    with pytest.raises(B1MapError, match="does not exist"):
        load_b1_map(tmp_path / "missing.nii")
    affine = np.eye(4)
    affine[:3, 3] = (-100.0, -100.0, 200.0)  # a slab 200 mm above the slice
    np.savez(tmp_path / "far.npz", b1=np.ones((3, 50, 50)), affine=affine * [[4], [4], [4], [1]])
    far = load_b1_map(tmp_path / "far.npz")
    with pytest.raises(B1MapError, match="does not overlap slice 3"):
        slice_b1(far, GEOMETRY, np.ones(SHAPE, bool), 3)


@pytest.fixture(scope="module")
def b1_dictionary():
    schedule = default_schedule().truncated(120)
    grid = percent_grid(12.0, (100.0, 3000.0), (10.0, 1000.0), b1_axis=(0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3))
    return build_dictionary(schedule, grid, rank=10, keep_fingerprints=False, progress=False, device="cpu")


def test_matching_in_the_b1_slice_gives_back_the_atoms(b1_dictionary):
    """Signals of grid atoms simulated at B1 between the grid's slices: matched at their B1 (rounded to the
    group step) they give back their T1/T2 atom; the interpolated atom's error (~1e-3 of the norm at a B1 step
    of 0.1) is far below the distance between T1/T2 neighbours for the T2 (<= 300 ms) that 120 TRs encode."""
    d = b1_dictionary
    rng = np.random.default_rng(3)
    picks = rng.choice(np.flatnonzero((d.b1 == 1.0) & (d.t2_ms <= 300)), 40, replace=False)
    b1 = rng.uniform(0.72, 1.28, 40)
    fingerprints = simulate_fingerprints(d.schedule, d.t1_ms[picks], d.t2_ms[picks], b1, device="cpu").numpy()
    x = d.basis.project(fingerprints.astype(np.complex64) * np.complex64(d.signal_phase)) * np.complex64(2 - 1j)
    result, clamped = match_at_b1(d, x, b1, subgrid=False)
    assert clamped == 0
    np.testing.assert_array_equal(result.t1_ms, d.t1_ms[picks])
    np.testing.assert_array_equal(result.t2_ms, d.t2_ms[picks])
    assert np.abs(result.b1 - b1).max() <= B1_GROUP_STEP / 2 + 1e-6
    np.testing.assert_allclose(result.pd, 2 - 1j, rtol=2e-2)
    _, clamped = match_at_b1(d, x[:2], np.array([0.5, 1.0]))
    assert clamped == 1


def test_subgrid_t1_t2_beat_the_nearest_atom(b1_dictionary):
    """Tissues between grid nodes (12 % steps) at known B1: the parabolic sub-grid maximum is closer to the
    truth than the best atom (whose error is up to half a step, ~6 %)."""
    d = b1_dictionary
    rng = np.random.default_rng(8)
    t1 = np.exp(rng.uniform(np.log(200), np.log(2000), 60))
    t2 = np.minimum(np.exp(rng.uniform(np.log(20), np.log(250), 60)), 0.5 * t1)
    b1 = rng.uniform(0.75, 1.25, 60)
    fingerprints = simulate_fingerprints(d.schedule, t1, t2, b1, device="cpu").numpy()
    x = d.basis.project(fingerprints.astype(np.complex64) * np.complex64(d.signal_phase))
    errors = {}
    for subgrid in (False, True):
        result, _ = match_at_b1(d, x, b1, subgrid=subgrid)
        errors[subgrid] = np.abs(np.log(np.r_[result.t1_ms / t1, result.t2_ms / t2]))
    assert np.median(errors[False]) > 0.02 and np.median(errors[True]) < 0.5 * np.median(errors[False])


def test_dictionary_mapper_with_a_b1_map(tmp_path, b1_dictionary):
    """The mapper reads the map, places it on the slice by geometry and matches in each voxel's B1 slice, and
    the meta says B1 came from a map; without the map the B1-axis dictionary estimates B1."""
    d = b1_dictionary
    d.save(tmp_path / "dict.h5")
    shape = (6, 8)
    candidates = np.flatnonzero((d.b1 == 1.0) & (d.t2_ms >= 20) & (d.t2_ms <= 300))  # T2 the 120 TRs encode
    picks = candidates[np.linspace(0, candidates.size - 1, shape[0] * shape[1]).astype(int)]
    b1_true = linear_b1(pixel_points(GEOMETRY, shape)) * 1.0  # 0.87-1.14 over the slice
    fingerprints = simulate_fingerprints(d.schedule, d.t1_ms[picks], d.t2_ms[picks], b1_true.reshape(-1),
                                         device="cpu").numpy()
    coefficients = d.basis.project(fingerprints.astype(np.complex64) * np.complex64(d.signal_phase))
    coefficients = np.moveaxis(coefficients.reshape(*shape, -1), -1, 0)
    np.save(tmp_path / "b1.npy", b1_true)
    settings = defaults()
    settings.dictionary_file, settings.b1_map = tmp_path / "dict.h5", tmp_path / "b1.npy"
    maps = DictionaryMapper(settings)(coefficients, d.basis, d.schedule, 0, geometry=GEOMETRY)
    # grid atoms come back within a quarter of the 12 % step (the sub-grid parabola's asymmetry); B1 off by
    # 0.1, the spread of this map, moves FISP T2 by ~10 %
    np.testing.assert_allclose(maps.t1_ms.reshape(-1), d.t1_ms[picks], rtol=0.03)
    np.testing.assert_allclose(maps.t2_ms.reshape(-1), d.t2_ms[picks], rtol=0.03)
    assert maps.b1_correction == "map" and maps.corrections_meta()["MRF_B1Source"] == "map b1.npy"
    settings.b1_map = None
    blind = DictionaryMapper(settings)(coefficients, d.basis, d.schedule, 0, geometry=GEOMETRY)
    assert blind.b1_correction == "estimated"  # the B1-axis dictionary estimates B1 jointly without a map


def test_qa_states_the_b1_handling_and_hints_at_a_b1_pattern(tmp_path):
    """Maps that assumed B1 = 1 get the 'B1 not corrected' warning and, when the counted T2 spheres fail low
    together (what B1 > 1 does to FISP T2), the hint; maps corrected with a B1 map get neither, and
    results.json states the handling per map."""
    import dataclasses

    from mrf_core.qa.analysis import run_qa
    from mrf_core.qa.report import _corrections_text
    from mrf_core.qa.synthetic import nist_plate_maps, write_map_file

    errors = {"t2_ms": {n: -8.0 - (n % 5) for n in range(1, 15)}}
    maps, _ = nist_plate_maps("t1", error_pct=errors)
    write_map_file(tmp_path / "blind.h5", [maps])
    result = run_qa(tmp_path / "blind.h5", "t1", 3.0)
    assert any(w.startswith("B1 not corrected") for w in result.warnings)
    (hint,) = [w for w in result.warnings if w.startswith("hint:")]
    assert "is low (-12.0 to -8.0 %)" in hint and "12 of 12 counted spheres" in hint and "b1_map" in hint
    assert result.to_json()["corrections"]["t2_ms"] == {"b1_corrected": False, "b1_correction": "none",
                                             "b1_source": "B1 = 1 assumed (no B1 map)",
                                             "slice_profile_corrected": False, "slice_profile": "none"}
    assert _corrections_text(result) == "B1: not corrected (B1 = 1 assumed); slice profile: not modelled."
    corrected = dataclasses.replace(maps, b1_correction="map", b1_source="map b1.nii.gz")
    write_map_file(tmp_path / "corrected.h5", [corrected])
    result = run_qa(tmp_path / "corrected.h5", "t1", 3.0)
    assert not any(w.startswith(("B1 not corrected", "hint:")) for w in result.warnings)
    assert result.corrections["t1_ms"]["b1_corrected"] is True
    mixed = {"t2_ms": {n: (-9.0 if n % 2 else 9.0) for n in range(1, 15)}}
    write_map_file(tmp_path / "mixed.h5", [nist_plate_maps("t1", error_pct=mixed)[0]])
    assert not any(w.startswith("hint:") for w in run_qa(tmp_path / "mixed.h5", "t1", 3.0).warnings)


def test_a_model_without_b1_input_is_refused_with_a_b1_map_and_the_meta_travels(tmp_path):
    """With a B1 map and no model named, the network mapper takes the package's B1-input model; a model
    without that input (the B1-free default, named) is unusable, with the reason (the chain then falls back
    to the dictionary); the B1 handling rides through the maps bundle into the scanner images."""
    from gadgets.stage_images import maps_bundle, read_maps_bundle
    from mrf_core.io.map_images import image_meta, map_images
    from mrf_core.mapping import default_model_path
    from mrf_core.pipeline import NetworkMapper, recon_basis

    np.save(tmp_path / "b1.npy", np.ones((4, 4)))
    settings = defaults()
    settings.b1_map = tmp_path / "b1.npy"
    mapper = NetworkMapper(settings)
    assert mapper.model.b1_input and mapper.model.path == default_model_path(b1_input=True)
    settings.basis = "model"  # the reconstruction in a model's basis takes the same model
    assert recon_basis(settings, default_schedule())[1] == "model default_b1_model.pt"
    settings.model = default_model_path()
    mapper = NetworkMapper(settings)
    assert mapper.model is None and "trained without a B1 input" in mapper.unusable
    from mrf_core.mapping.maps import QuantitativeMaps

    plane = np.ones((3, 3), np.float32)
    maps = QuantitativeMaps(0, plane, plane, plane, plane, "dictionary", b1=plane, b1_correction="map",
                            b1_source="map b1.npy", slice_profile="hann-sinc tbw 4")
    back = read_maps_bundle(maps_bundle(maps, GEOMETRY))
    assert (back.b1_correction, back.b1_source, back.slice_profile) == ("map", "map b1.npy", "hann-sinc tbw 4")
    meta = image_meta(map_images(back, GEOMETRY)[1])
    assert (meta["MRF_B1Correction"], meta["MRF_SliceProfile"]) == ("map", "hann-sinc tbw 4")


def test_a_model_with_a_b1_input(tmp_path, caplog):
    """A (tiny) model trained with B1 as input: its metadata says so, it predicts T1/T2 only, mapping needs
    no B1 output, the network mapper feeds it the map; a model without the input refuses a B1."""
    from mrf_core.mapping import ModelError, load_model
    from mrf_core.mapping.parameters import ParameterSpace
    from mrf_core.mapping.training import TrainConfig, train_model
    from mrf_core.pipeline import NetworkMapper

    schedule = default_schedule().truncated(100)
    space = ParameterSpace((100.0, 3000.0), (10.0, 1000.0), b1_range=(0.7, 1.3))
    config = TrainConfig(arch="mlp", rank=6, space=space, n_train=1000, n_val=200, epochs=2, n_states=20,
                         table_nodes=9, table_b1_nodes=5, progress=False, arch_options={"width": 32},
                         basis_step_pct=25.0, b1_input=True)
    train_model(schedule, config, tmp_path / "b1.pt")
    model = load_model(tmp_path / "b1.pt")
    assert model.b1_input and model.output_names == ["t1_ms", "t2_ms"]
    assert model.metadata["input"]["b1"] is True and model.metadata["training"]["b1_input_noise"] == 0.02
    x = model.basis.project(simulate_fingerprints(schedule, [800.0, 300.0], [80.0, 40.0], [0.9, 1.1],
                                                  n_states=20).numpy().astype(np.complex64) * 1j)
    result = model.map_coefficients(x, model.basis, b1=np.array([0.9, 1.1]))
    assert np.isfinite(result.t1_ms).all() and np.isnan(result.b1).all()
    np.save(tmp_path / "b1.npy", np.full((4, 4), 1.1))
    settings = defaults()
    settings.model, settings.b1_map = tmp_path / "b1.pt", tmp_path / "b1.npy"
    mapper = NetworkMapper(settings)
    coefficients = np.zeros((model.basis.rank, 4, 4), np.complex64)
    coefficients[:, 1:3, 1:3] = x[0][:, None, None]
    geometry = ImageGeometry((200.0, 200.0, 5.0))
    maps = mapper(coefficients, model.basis, schedule, 0, geometry=geometry)
    assert maps.b1_correction == "map" and np.nanmax(np.abs(maps.b1 - 1.1)) < 1e-6
    np.save(tmp_path / "b1.npy", np.full((4, 4), 1.5))  # beyond the trained 0.7-1.3: clamped, and said
    with caplog.at_level("WARNING"):
        maps = NetworkMapper(settings)(coefficients, model.basis, schedule, 0, geometry=geometry)
    assert "B1 of 4 voxels lies outside the range model b1.pt was trained on, 0.7-1.3 (clamped)" in caplog.text
    assert np.nanmax(np.abs(maps.b1 - 1.3)) < 1e-6
    with pytest.raises(ModelError, match="has no B1 input"):
        load_model(tmp_path / "b1.pt").__class__.map_coefficients(
            type("NoB1", (), {"basis": model.basis, "b1_input": False, "path": model.path})(), x, model.basis,
            b1=np.ones(2))
