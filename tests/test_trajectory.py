"""Spiral design, per-TR rotation, density compensation and the header description."""

from __future__ import annotations

import dataclasses

import finufft
import ismrmrd
import numpy as np
import pytest
from scipy.spatial import cKDTree

from mrf_core.recon.trajectory import (
    GAMMA_HZ_PER_T,
    GOLDEN_ANGLE_DEG,
    HargreavesVds,
    SpiralParams,
    TrajectoryError,
    design_spiral,
    nufft_coords,
    pipe_menon_dcf,
)

STANDARD = SpiralParams()  # Jiang 2015: 300 mm, 256, 48 interleaves (24 at the centre), 40 mT/m, 150 T/m/s
SMALL = SpiralParams(fov_mm=240.0, matrix=64, n_interleaves=16, centre_interleaves=8)


def test_standard_spiral_reaches_the_edge_within_hardware_limits():
    spiral = design_spiral(STANDARD)
    k = spiral.k_cycles
    assert k[0] == 0
    assert np.abs(k).max() == pytest.approx(STANDARD.matrix / 2, abs=1e-9)
    assert 3.5 < spiral.readout_ms < 5.0 and 1700 < spiral.n_samples < 2500
    # gradient and slew recomputed from the samples alone (k in 1/m = cycles/FOV / FOV)
    dt = STANDARD.dwell_us * 1e-6
    grad = np.diff(k / (STANDARD.fov_mm / 1000)) / dt / GAMMA_HZ_PER_T * 1000  # mT/m
    slew = np.diff(grad[:-1]) / dt / 1000  # T/m/s, the last sample is put on the edge
    assert np.abs(grad[:-1]).max() <= STANDARD.max_grad_mT_per_m * 1.001
    assert np.abs(grad).max() > 0.95 * STANDARD.max_grad_mT_per_m  # gradient-limited at the end
    assert np.abs(slew).max() <= STANDARD.max_slew_T_per_m_per_s * 1.01
    assert np.abs(np.diff(k)).max() <= 1.0  # Nyquist along the readout
    assert spiral.peak_grad_mT_per_m <= STANDARD.max_grad_mT_per_m
    assert spiral.peak_slew_T_per_m_per_s <= STANDARD.max_slew_T_per_m_per_s * 1.01  # Euler step: < 1 % over


def test_density_matches_the_interleaves_that_sample_centre_and_edge():
    """One interleave advances n_interleaves / FOV(r) in radius per turn: in cycles per nominal FOV,
    48 / 2 = 24 at the centre (24 interleaves fill it) growing linearly to 48 at the edge."""
    k = design_spiral(STANDARD).k_cycles
    turns = np.flatnonzero(np.diff(np.floor(np.unwrap(np.angle(k[1:])) / (2 * np.pi)))) + 1
    radius = np.abs(k[1:][turns])
    mid = (radius[:-1] + radius[1:]) / 2
    np.testing.assert_allclose(np.diff(radius), 48.0 / (2.0 - mid / 128.0), rtol=0.05)


def test_sequential_rotation_turns_360_over_interleaves_per_tr():
    spiral = design_spiral(SMALL)
    order = [int(spiral.interleaves_of_tr(t)[0]) for t in range(40)]
    assert order == [t % 16 for t in range(40)]
    k0 = spiral.traj(0)[:, 0] + 1j * spiral.traj(0)[:, 1]
    for t in (1, 5, 17):
        j = order[t]
        kj = spiral.traj(j)[:, 0] + 1j * spiral.traj(j)[:, 1]
        np.testing.assert_allclose(kj, k0 * np.exp(2j * np.pi * (t % 16) / 16), atol=1e-4)
    stepped = design_spiral(SpiralParams(**{**SMALL.__dict__, "interleave_step": 5}))
    assert [int(stepped.interleaves_of_tr(t)[0]) for t in range(4)] == [0, 5, 10, 15]
    full = design_spiral(SpiralParams(**{**SMALL.__dict__, "interleaves_per_tr": 16}))
    assert sorted(full.interleaves_of_tr(3).tolist()) == list(range(16))
    half = design_spiral(SpiralParams(**{**SMALL.__dict__, "interleaves_per_tr": 2}))
    assert half.interleaves_of_tr(1).tolist() == [1, 9]


def test_golden_angle_rotation_never_repeats():
    spiral = design_spiral(SpiralParams(**{**SMALL.__dict__, "rotation": "golden"}))
    js = np.concatenate([spiral.interleaves_of_tr(t) for t in range(100)])
    assert js.tolist() == list(range(100))
    angles = spiral.angle_deg(js)
    np.testing.assert_allclose(np.mod(np.diff(angles), 360), GOLDEN_ANGLE_DEG, atol=1e-9)
    assert GOLDEN_ANGLE_DEG == pytest.approx(137.5078, abs=1e-4)
    assert len(np.unique(np.round(angles, 6))) == 100


def _smoothed_weight_density(points, weights, queries, sigma=1.0):
    """sum_i w_i G(q - k_i) for a unit-integral Gaussian: ~1 where the weights are the area per sample."""
    tree = cKDTree(points)
    out = []
    for q in queries:
        idx = tree.query_ball_point(q, 5 * sigma)
        d2 = np.sum((points[idx] - q) ** 2, axis=1)
        out.append(np.sum(weights[idx] * np.exp(-d2 / (2 * sigma**2))) / (2 * np.pi * sigma**2))
    return np.asarray(out)


def test_dcf_flattens_the_sampling_density():
    spiral = design_spiral(SMALL)
    points = spiral.traj(np.arange(16)).reshape(-1, 2).astype(np.float64)
    w = np.tile(spiral.dcf(), 16)
    rng = np.random.default_rng(1)
    radius = rng.uniform(0, 0.8 * SMALL.k_max, 200)
    angle = rng.uniform(0, 2 * np.pi, 200)
    queries = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    density = _smoothed_weight_density(points, w, queries)
    assert np.abs(density - 1).max() < 0.03
    uniform = _smoothed_weight_density(points, np.full(len(points), w.mean()), queries)
    assert np.abs(uniform - 1).max() > 0.5  # without compensation the centre is heavily oversampled
    assert w.sum() == pytest.approx(np.pi * SMALL.k_max**2, rel=0.03)


def test_dcf_gives_a_flat_psf_centre_and_recovers_an_image():
    spiral = design_spiral(SMALL)
    n = SMALL.matrix
    traj = spiral.traj(np.arange(16))
    rows, cols = nufft_coords(traj, n)
    w = np.tile(spiral.dcf(), 16).astype(np.complex128)
    psf = finufft.nufft2d1(rows, cols, w, (n, n), isign=1, eps=1e-9).real / n**2
    c = n // 2
    assert psf[c, c] == pytest.approx(np.pi / 4, rel=0.03)  # disc area / N^2
    sidelobes = np.abs(psf.copy())
    sidelobes[c - 2:c + 3, c - 2:c + 3] = 0
    assert sidelobes.max() < 0.05 * psf[c, c]
    # smooth object: A^H W A x / N^2 ~ x
    y_idx, x_idx = np.mgrid[:n, :n] - c
    image = np.exp(-(x_idx**2 + y_idx**2) / (2 * 8.0**2)) * (1 + 0.3 * np.cos(x_idx / 3.0))
    kspace = finufft.nufft2d2(rows, cols, image.astype(np.complex128), isign=-1, eps=1e-9)
    recon = finufft.nufft2d1(rows, cols, kspace * w, (n, n), isign=1, eps=1e-9) / n**2
    centre = (x_idx**2 + y_idx**2) < (n / 4) ** 2
    err = np.linalg.norm((recon - image)[centre]) / np.linalg.norm(image[centre])
    assert err < 0.03


def test_pipe_menon_of_a_cartesian_grid_is_one_per_sample():
    g = np.arange(-12, 12, dtype=np.float64)
    ky, kx = np.meshgrid(g, g, indexing="ij")
    pts = np.stack([kx.ravel(), ky.ravel()], axis=1)
    w = pipe_menon_dcf(pts).reshape(24, 24)
    np.testing.assert_allclose(w[6:-6, 6:-6], 1.0, rtol=0.005)


def test_nufft_coords_match_a_direct_dft():
    n = 12
    rng = np.random.default_rng(0)
    image = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    traj = np.array([[1.3, -2.2], [4.0, 0.5], [-5.9, 5.1]])
    rows, cols = nufft_coords(traj, n)
    got = finufft.nufft2d2(rows, cols, image, isign=-1, eps=1e-12)
    r = np.arange(n) - n // 2
    want = [np.sum(image * np.exp(-2j * np.pi * (kx * r[None, :] + ky * r[:, None]) / n)) for kx, ky in traj]
    np.testing.assert_allclose(got, want, rtol=1e-9)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"matrix": 0}, "matrix"),
        ({"fov_mm": -300.0}, "fov_mm"),
        ({"fov_mm": float("nan")}, "fov_mm"),
        ({"interleaves_per_tr": 49}, "interleaves_per_tr = 49"),
        ({"centre_interleaves": 60}, "centre_interleaves"),
        ({"rotation": "spin"}, "rotation"),
        ({"matrix": 25.5}, "matrix"),
        ({"max_readout_ms": 0.0}, "max_readout_ms"),
    ],
)
def test_impossible_parameters_name_the_field(change, field):
    with pytest.raises(TrajectoryError, match=field.replace("[", r"\[")):
        SpiralParams(**change)


def test_design_errors_name_the_limit():
    with pytest.raises(TrajectoryError, match="dwell_us = 4"):
        design_spiral(SpiralParams(dwell_us=4.0))
    with pytest.raises(TrajectoryError, match="max_readout_ms = 2"):
        design_spiral(SpiralParams(max_readout_ms=2.0))


def test_header_description_round_trip_through_xml():
    params = SpiralParams(fov_mm=220.0, matrix=192, n_interleaves=36, centre_interleaves=12, rotation="golden",
                          interleaves_per_tr=2, max_readout_ms=6.5)
    header = ismrmrd.xsd.ismrmrdHeader(
        experimentalConditions=ismrmrd.xsd.experimentalConditionsType(H1resonanceFrequency_Hz=123),
        encoding=[ismrmrd.xsd.encodingType(
            encodedSpace=ismrmrd.xsd.encodingSpaceType(
                matrixSize=ismrmrd.xsd.matrixSizeType(x=192, y=192, z=1),
                fieldOfView_mm=ismrmrd.xsd.fieldOfViewMm(x=220, y=220, z=5)),
            reconSpace=ismrmrd.xsd.encodingSpaceType(
                matrixSize=ismrmrd.xsd.matrixSizeType(x=192, y=192, z=1),
                fieldOfView_mm=ismrmrd.xsd.fieldOfViewMm(x=220, y=220, z=5)),
            encodingLimits=ismrmrd.xsd.encodingLimitsType(),
            trajectory=ismrmrd.xsd.trajectoryType.SPIRAL,
            trajectoryDescription=params.to_ismrmrd(n_samples=1234),
        )],
    )
    parsed = ismrmrd.xsd.CreateFromDocument(ismrmrd.xsd.ToXML(header))
    back, n_samples = SpiralParams.from_ismrmrd(parsed.encoding[0].trajectoryDescription)
    assert back == params and n_samples == 1234
    parsed.encoding[0].trajectoryDescription.userParameterLong = [
        p for p in parsed.encoding[0].trajectoryDescription.userParameterLong if p.name != "n_interleaves"
    ]
    with pytest.raises(TrajectoryError, match="n_interleaves"):
        SpiralParams.from_ismrmrd(parsed.encoding[0].trajectoryDescription)


# ---- Gadgetron's HargreavesVDS2000 ---------------------------------------------------------------------
def _vds_reference(p: HargreavesVds, substeps: int) -> np.ndarray:
    """Hargreaves' design written independently: the slew limit as |d2k/dt2| of k = r e^{i theta(r)} with
    theta(r) = 2 pi / N * integral of FOV(r) (exact, not integrated), r by Euler on a raster `substeps` finer,
    sampled every SamplingTime; k in 1/cm, complex, k[0] = 0."""
    gamma, dt = 4258.0, p.sampling_time_ns * 1e-9
    c = np.asarray(p.fov_coefficients_cm)[::-1]  # numpy's polynomial order
    r = v = 0.0
    radii = [0.0]
    while r < p.krmax_per_cm:
        fov = np.polyval(c, r)
        w = 2 * np.pi * fov / p.interleaves  # dtheta/dr
        dw = 2 * np.pi * np.polyval(np.polyder(c), r) / p.interleaves if c.size > 1 else 0.0
        a = complex(1.0, r * w)  # d2k/dt2 = e^{i theta} (a r'' + b)
        b = v * v * complex(-r * w * w, 2 * w + r * dw)
        ab, aa = (a * b.conjugate()).real, abs(a) ** 2
        disc = ab * ab - aa * (abs(b) ** 2 - (gamma * p.max_slew_G_per_cm_per_s) ** 2)
        v_max = gamma * min(p.max_grad_G_per_cm, 1.0 / (gamma * fov * dt)) / abs(a)
        v = min(v + (-ab + np.sqrt(max(disc, 0.0))) / aa * dt / substeps, v_max)
        r += v * dt / substeps
        radii.append(r)
    radii = np.asarray(radii)[::substeps]
    return radii * np.exp(2j * np.pi / p.interleaves * np.polyval(np.polyint(c), radii))


VDS_CASES = [  # (interleaves, SamplingTime_ns, G/cm, G/cm/s, FOV coefficients cm, krmax 1/cm): constant and
    HargreavesVds(16, 2500, 2.4, 14414.4, (24.0,), 32 / 48),  # variable density, gradient- and slew-limited
    HargreavesVds(8, 2000, 4.0, 15000.0, (24.0, -6.0), 1.0),
    HargreavesVds(48, 2500, 2.2, 12000.0, (30.0,), 64 / 60),
]


@pytest.mark.parametrize("p", VDS_CASES)
def test_hargreaves_vds_matches_an_independent_design(p):
    """Gadgetron's conventions: sample 0 at k = 0, cycles/FOV = -k * FOV (its trajectory is -k / (2 krmax)),
    interleave j = interleave 0 rotated clockwise by 2 pi j / N. Against the reference above: with a constant
    FOV theta(r) is exact in both, so at the same raster they agree to rounding; otherwise both are first-order
    (Euler) schemes converging to one design, so the project's error at raster T is ~2 |k(T) - k(T/2)|
    (Richardson), which bounds its distance to the reference at T/16 (x 1.25 for the non-asymptotic regime)."""
    fov_cm = p.fov_coefficients_cm[0]
    n = p.n_samples
    traj = p.traj(np.arange(3), n, fov_mm=10 * fov_cm)
    k = -(traj[0, :, 0] + 1j * traj[0, :, 1]).astype(np.complex128) / fov_cm
    assert k[0] == 0 and abs(k[-1]) == pytest.approx(p.krmax_per_cm, rel=0.02)
    for j in (1, 2):
        kj = -(traj[j, :, 0] + 1j * traj[j, :, 1]) / fov_cm
        np.testing.assert_allclose(kj, k * np.exp(-2j * np.pi * j / p.interleaves), atol=1e-6 * p.krmax_per_cm)
    reference = _vds_reference(p, 1)
    m = min(n, reference.size)
    if len(p.fov_coefficients_cm) == 1:
        np.testing.assert_allclose(k[:m], reference[:m], atol=1e-6 * p.krmax_per_cm)  # float32 traj
    half = dataclasses.replace(p, sampling_time_ns=p.sampling_time_ns // 2)
    k_half = -(lambda t: t[:, 0] + 1j * t[:, 1])(half.traj(0, half.n_samples, 10 * fov_cm))[::2] / fov_cm
    fine = _vds_reference(p, 16)
    m = min(n, k_half.size, fine.size)
    assert np.abs(k[:m] - fine[:m]).max() <= 2.5 * np.abs(k[:m] - k_half[:m]).max()


def test_hargreaves_vds_description_names_what_it_lacks():
    description = ismrmrd.xsd.trajectoryDescriptionType(
        identifier="HargreavesVDS2000",
        userParameterLong=[ismrmrd.xsd.userParameterLongType(name="interleaves", value=16),
                           ismrmrd.xsd.userParameterLongType(name="fov_coefficients", value=1),
                           ismrmrd.xsd.userParameterLongType(name="SamplingTime_ns", value=2500)],
        userParameterDouble=[ismrmrd.xsd.userParameterDoubleType(name=n, value=v) for n, v in (
            ("MaxGradient_G_per_cm", 2.4), ("MaxSlewRate_G_per_cm_per_s", 14414.4), ("krmax_per_cm", 0.667))],
    )
    with pytest.raises(TrajectoryError, match="lacks the parameter 'FOVCoeff_1_cm'"):
        HargreavesVds.from_ismrmrd(description)
    description.userParameterDouble.append(ismrmrd.xsd.userParameterDoubleType(name="FOVCoeff_1_cm", value=24.0))
    assert HargreavesVds.from_ismrmrd(description) == HargreavesVds(16, 2500, 2.4, 14414.4, (24.0,), 0.667)
    with pytest.raises(TrajectoryError, match="the design has .* samples, the readouts 100000"):
        VDS_CASES[0].traj(0, 100_000, 240.0)
