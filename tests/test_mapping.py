"""Neural mapping: every architecture trains, exports and reloads; archives are checked; bad input masked."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from mrf_core.mapping import ModelError, ModelMismatchError, load_model
from mrf_core.mapping.architectures import ARCHITECTURES
from mrf_core.mapping.archive import METADATA_FILE, script
from mrf_core.mapping.inputs import InputTransform
from mrf_core.mapping.parameters import ParameterSpace
from mrf_core.mapping.refine import DEFAULT_ITERATIONS
from mrf_core.mapping.training import TrainConfig, train_model
from mrf_core.physics.epg import simulate_fisp
from mrf_core.physics.sequence import default_schedule
from mrf_core.physics.temporal_basis import TemporalBasis
from mrf_gadgetron.cli import main

SCHEDULE = default_schedule().truncated(32)


def tiny_config(arch: str, **changes) -> TrainConfig:
    values = dict(arch=arch, rank=5, n_train=256, n_val=64, epochs=1, batch_size=64, table_nodes=9, n_states=10,
                  basis_step_pct=25.0, progress=False, space=ParameterSpace((20.0, 3000.0), (5.0, 500.0)))
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "mlp.pt"
    module, metadata = train_model(SCHEDULE, tiny_config("mlp"), path)
    return path, module, metadata


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_architecture_trains_exports_and_reloads_identically(arch, tmp_path):
    options = {"step": 4} if arch in ("gru", "lstm") else {}
    path = tmp_path / f"{arch}.pt"
    module, metadata = train_model(SCHEDULE, tiny_config(arch, arch_options=options), path)
    history = metadata["training"]["history"]
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    model = load_model(path)
    length = metadata["input"]["length"]
    x = torch.randn(7, length, generator=torch.Generator().manual_seed(1))
    y = torch.randn(7, length, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = module(x, y)
    # TorchScript may fuse or reorder the float32 ops: a sum of n terms then moves by up to n * 2^-24 of its
    # terms (n <= 512 x 7 in the ResNet: 2e-4); a wrong export (weights, train-mode BN/dropout) by O(1).
    # Outputs are T1/T2 in ms (>= 5), so a relative tolerance suffices.
    torch.testing.assert_close(model.module(x, y), expected, rtol=1e-3, atol=0)
    assert model.metadata["architecture"]["name"] == arch
    assert model.metadata["input"]["kind"] == ARCHITECTURES[arch][1]
    assert (model.basis is not None) == (ARCHITECTURES[arch][1] == "coefficients")


def test_metadata_records_the_recipe(tiny_model):
    _, _, metadata = tiny_model
    model = load_model(tiny_model[0])
    assert model.metadata == json.loads(json.dumps(metadata | {k: model.metadata[k] for k in
                                                               ("format", "format_version", "package_version")}))
    training = model.metadata["training"]
    assert training["seed"] == 0 and training["n_train"] == 256 and training["epochs_run"] == 1
    assert np.isfinite(training["best_val_loss"])
    assert model.metadata["schedule"]["hash"] == SCHEDULE.hash
    assert model.metadata["basis"]["hash"] == model.basis.hash and model.basis.rank == 5
    assert model.metadata["outputs"]["names"] == ["t1_ms", "t2_ms"]


def _resave(path, module, metadata, out):
    torch.jit.save(script(module), str(out), _extra_files={METADATA_FILE: json.dumps(metadata)})
    return out


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("schedule"), r"lacks the field\(s\) schedule"),
    (lambda m: m.update(format="something-else"), "format"),
    (lambda m: m.update(format_version=99), "format_version"),
    (lambda m: m["basis"].update(hash="0" * 16), "stored basis hashes to"),
    (lambda m: m["input"].update(length=7), "input length 7"),
    (lambda m: m["input"].update(kind="spectrum"), "input kind"),
    (lambda m: m["outputs"].update(names=["t1_ms"]), "outputs"),
    (lambda m: m["schedule"].update(hash="0123456789abcdef"), "schedule is invalid"),
])
def test_wrong_metadata_is_a_clear_error(tiny_model, tmp_path, change, message):
    path, module, metadata = tiny_model
    broken = json.loads(json.dumps(load_model(path).metadata))
    change(broken)
    out = _resave(path, module, broken, tmp_path / "broken.pt")
    with pytest.raises(ModelError, match=message):
        load_model(out)


def test_not_an_archive_is_a_clear_error(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a model")
    with pytest.raises(ModelError, match="not a TorchScript model archive"):
        load_model(text)
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    plain = tmp_path / "plain.pt"
    torch.jit.save(script(torch.nn.Linear(2, 2)), str(plain))
    with pytest.raises(ModelError, match="without MRF metadata"):
        load_model(plain)


class _Payload:
    """Unpickling this writes a marker file: a model loader must never run it."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_are_never_unpickled(tmp_path):
    _Payload.marker = str(tmp_path / "executed")
    for name, save in (("torch_save.pt", lambda p: torch.save({"x": _Payload()}, p)),
                       ("pickle.pt", lambda p: p.write_bytes(pickle.dumps(_Payload())))):
        path = tmp_path / name
        save(path)
        with pytest.raises(ModelError):
            load_model(path)
    assert not (tmp_path / "executed").exists()


def test_foreign_schedule_and_basis_are_mismatches(tiny_model):
    model = load_model(tiny_model[0])
    model.check(SCHEDULE)
    other = default_schedule().truncated(40)
    with pytest.raises(ModelMismatchError, match=f"{SCHEDULE.hash}.*{other.hash}"):
        model.check(other)
    foreign = TemporalBasis(model.basis.vectors[::-1].copy(), model.basis.singular_values, model.basis.signal_phase,
                            other.hash)
    with pytest.raises(ModelMismatchError, match="schedule"):
        model.map_coefficients(np.ones((3, 5), np.complex64), foreign)
    scrambled = TemporalBasis(np.linalg.qr(np.random.default_rng(0).normal(size=(32, 5)))[0].astype(np.float32),
                              model.basis.singular_values, model.basis.signal_phase, SCHEDULE.hash)
    with pytest.raises(ModelMismatchError, match="does not hold"):
        model.map_coefficients(np.ones((3, 5), np.complex64), scrambled)
    with pytest.raises(ModelError, match="32 time points"):
        model.map_signals(np.ones((3, 40), np.complex64))


def test_a_basis_that_holds_its_own_signal_is_converted(tiny_model):
    """A scan basis fitted to its signals (three tissues' fingerprints span it, its singular values say it
    holds them whole) need not hold the model's subspace: converted into the model's basis its coefficients
    give the projection of those signals, and the network maps them as from the model's own basis. The same
    vectors with singular values that claim no more than a generic basis are refused."""
    from mrf_core.physics.epg import simulate_fingerprints

    model = load_model(tiny_model[0])
    t1, t2 = np.array([400.0, 900.0, 1500.0]), np.array([50.0, 90.0, 150.0])
    signals = simulate_fingerprints(SCHEDULE, t1, t2, np.ones(3), n_states=20).numpy().astype(np.float64)
    rng = np.random.default_rng(4)
    vectors = np.linalg.qr(np.concatenate([signals.T, rng.normal(size=(32, 2))], axis=1))[0].astype(np.float32)
    singular = np.zeros(32)
    singular[:3] = np.linalg.svd(signals, compute_uv=False)
    fitted = TemporalBasis(vectors, singular, model.basis.signal_phase, SCHEDULE.hash)
    assert model.basis.conversion_to(fitted, min_captured=0.0) is not None
    with pytest.raises(Exception, match="captures"):
        model.basis.conversion_to(fitted, min_captured=0.9998)  # it does not hold the model's subspace
    x = (signals * model.basis.signal_phase).astype(np.complex64)
    own = model.map_coefficients(model.basis.project(x), model.basis)
    converted = model.map_coefficients(fitted.project(x), fitted)
    np.testing.assert_allclose(converted.t1_ms, own.t1_ms, rtol=1e-3)
    np.testing.assert_allclose(converted.t2_ms, own.t2_ms, rtol=1e-3)
    generic = TemporalBasis(vectors, np.r_[singular[:3], np.full(29, singular[2])], model.basis.signal_phase,
                            SCHEDULE.hash)
    with pytest.raises(ModelMismatchError, match="does not hold"):
        model.map_coefficients(fitted.project(x), generic)


def _rotated_basis(model):
    rotation = np.linalg.qr(np.random.default_rng(1).normal(size=(5, 5)))[0]
    rotated = TemporalBasis((model.basis.vectors @ rotation).astype(np.float32), model.basis.singular_values,
                            model.basis.signal_phase, SCHEDULE.hash)
    assert rotated.hash != model.basis.hash
    return rotated


EQUIVALENT_T1, EQUIVALENT_T2 = [300.0, 900.0, 1500.0], [40.0, 80.0, 200.0]


def test_equivalent_basis_gives_the_same_network_maps(tiny_model):
    """Without refinement: the conversion is exact up to float32 rounding, and so are the maps."""
    model = load_model(tiny_model[0])
    signals = simulate_fisp(SCHEDULE, EQUIVALENT_T1, EQUIVALENT_T2, n_states=10).numpy()
    rotated = _rotated_basis(model)
    direct_x = model.basis.project(signals)
    converted_x = rotated.project(signals) @ rotated.conversion_to(model.basis).T
    # two float32 projections of T terms (each within T u |s|, u = 2^-24), the float32 rounding of the rotated
    # basis and the K-term conversion: |difference| <= (2T + K + 2) u |s|, T = 32, K = 5 (4e-6 |s|)
    relative = (2 * 32 + 5 + 2) * 2.0**-24
    assert (np.linalg.norm(converted_x - direct_x, axis=1) <= relative * np.linalg.norm(signals, axis=1)).all()
    direct = model.map_coefficients(direct_x, model.basis, refine=0)
    converted = model.map_coefficients(rotated.project(signals), rotated, refine=0)
    # that relative input difference through the network and the table lookup: outputs move by its relative
    # gain times it (measured <= 8 over differently seeded tiny models): 10x
    for field in ("t1_ms", "t2_ms", "pd", "score"):
        np.testing.assert_allclose(getattr(converted, field), getattr(direct, field), rtol=10 * relative,
                                   err_msg=field)


def test_refinement_in_an_equivalent_basis_reaches_the_same_fit(tiny_model):
    """Refinement (mrf_core.mapping.refine) keeps a step only where it raises the fit, so it never lowers the
    score; run to convergence from (rounding-)equal starts it reaches the same maximum of the fit, to the
    fit's float32 rounding. Its parameters need not agree that closely: where the fit is flat (T2 = 200 ms
    with 32 TRs) points whose fits differ by less than the rounding are equally good stopping points."""
    model = load_model(tiny_model[0])
    signals = simulate_fisp(SCHEDULE, EQUIVALENT_T1, EQUIVALENT_T2, n_states=10).numpy()
    rotated = _rotated_basis(model)
    # the score |f.x| / (|f| |x|) from K = 5 term float32 sums is within (2K + 5) u of exact, u = 2^-24;
    # two scores (or two converged fits) differ by twice that
    tolerance = 2 * (2 * 5 + 5) * 2.0**-24
    converged = []
    for x, basis in ((model.basis.project(signals), model.basis), (rotated.project(signals), rotated)):
        raw = model.map_coefficients(x, basis, refine=0)
        for iterations in (DEFAULT_ITERATIONS, 30):  # converged at 30: more change nothing here
            refined = model.map_coefficients(x, basis, refine=iterations)
            assert (refined.score >= raw.score - tolerance).all(), (iterations, refined.score, raw.score)
            assert refined.score.mean() > raw.score.mean()  # a barely trained network leaves room to improve
        converged.append(refined.score)
    np.testing.assert_allclose(converged[1], converged[0], rtol=0, atol=tolerance)


def test_nan_and_zero_voxels_are_masked(tiny_model):
    model = load_model(tiny_model[0])
    coefficients = model.basis.project(simulate_fisp(SCHEDULE, [800.0] * 5, [60.0] * 5, n_states=10).numpy())
    coefficients[1] = 0
    coefficients[2, 3] = np.nan
    coefficients[3, 0] = np.inf
    result = model.map_coefficients(coefficients.reshape(5, 1, 5), model.basis)
    assert result.t1_ms.shape == (5, 1)
    bad = np.array([False, True, True, True, False])
    for field in (result.t1_ms, result.t2_ms):
        assert np.isnan(field[bad, 0]).all() and np.isfinite(field[~bad, 0]).all()
    assert (result.pd[bad] == 0).all() and (result.score[bad] == 0).all()
    assert (result.score[~bad] > 0.5).all() and np.isnan(result.b1).all() and (result.atom_index == -1).all()


@pytest.mark.parametrize("kind", ["coefficients", "complex", "magnitude"])
def test_input_features_ignore_pd(kind):
    rng = np.random.default_rng(3)
    real = rng.normal(size=(6, 12)) + 3.0
    transform = InputTransform(kind, np.ones(12, np.float32) / np.sqrt(12))
    pd = (rng.uniform(0.1, 10, (6, 1)) * np.exp(1j * rng.uniform(-np.pi, np.pi, (6, 1))))
    x = torch.as_tensor(real * pd, dtype=torch.complex64)
    features = transform(x.real.contiguous(), x.imag.contiguous())
    reference = transform(torch.as_tensor(real, dtype=torch.float32), torch.zeros(6, 12))
    torch.testing.assert_close(features, reference, atol=1e-4, rtol=1e-4)
    assert features.shape == (6, 2 if kind == "complex" else 1, 12)


def test_parameter_space_sampling_and_scaling():
    for scaling, distribution in (("log", "log-uniform"), ("linear", "uniform")):
        space = ParameterSpace((10.0, 4000.0), (2.0, 500.0), (0.7, 1.3), distribution, scaling)
        params = space.sample(5000, np.random.default_rng(0))
        assert (params[:, 1] < params[:, 0]).all() and params[:, 0].min() >= 10 and params[:, 1].max() <= 500
        u = space.normalise(params)
        assert u.min() >= 0 and u.max() <= 1
        back = space.output_scaling()(torch.as_tensor(u)).numpy()
        np.testing.assert_allclose(back, params, rtol=1e-4)
    logu = ParameterSpace().sample(20000, np.random.default_rng(1))
    assert np.median(logu[:, 0]) < 1000  # log-uniform puts half the draws below the geometric middle


def test_cli_train_writes_a_loadable_model(tmp_path, capsys):
    out = tmp_path / "cli.pt"
    assert main(["train", "--timepoints", "24", "--n-train", "200", "--n-val", "50", "--epochs", "1",
                 "--table-nodes", "9", "--states", "10", "--arch", "drone", "--option", "hidden=16",
                 "--seed", "3", "--quiet", "--out", str(out)]) == 0
    model = load_model(out)
    assert model.metadata["training"]["seed"] == 3 and model.metadata["architecture"]["options"] == {"hidden": 16}
    assert model.schedule.n_timepoints == 24 and "written to" in capsys.readouterr().out
    assert main(["train", "--arch", "nonsense", "--out", str(tmp_path / "x.pt")]) == 2
    assert "must be one of" in capsys.readouterr().err
