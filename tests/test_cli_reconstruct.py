"""`mrf reconstruct`: the pipeline in one process gives the default chain's images; its flags and errors."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest

from mrf_core.io.map_images import image_meta, read_map_file
from mrf_core.physics.dictionary import cache_key, percent_grid
from mrf_core.pipeline import COEFFICIENT_SERIES
from mrf_gadgetron.cli import main
from mrf_gadgetron.host.chain import ChainOptions
from mrf_gadgetron.host.replay import replay
from mrf_gadgetron.host.stream_config import default_config_dir, parse_stream_config


def _quiet(tmp_path):
    """Caches in tmp_path, one thread (finufft's threaded spreading adds in no fixed order; one thread makes
    two runs of the same code bit-identical, so the comparison below is exact up to serialisation)."""
    return ["--psf-cache-dir", str(tmp_path / "psf"), "--dictionary-cache-dir", str(tmp_path / "dictionaries"),
            "--threads", "1"]


def _series(path, group: str) -> list[int]:
    with h5py.File(path, "r") as f:
        return sorted(int(name.removeprefix("image_")) for name in f[group])


def test_reconstruct_and_replay_of_the_default_chain_write_the_same_maps(sim_small_scan, tmp_path, monkeypatch):
    """The acceptance test of one pipeline: `mrf reconstruct scan.h5` and `mrf replay scan.h5 -c
    mrf_default.xml` (each stage its own process behind sockets) write the same series, with the same maps.
    The small scan's 40-TR schedule is not the default model's, so both take the dictionary fallback and
    say why."""
    _, _, raw = sim_small_scan
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the gadget processes' default caches
    text = (default_config_dir() / "mrf_default.xml").read_text()
    text, n = re.subn(r'(<property name="threads" value=")[^"]*(")', r"\g<1>1\g<2>", text)
    assert n == 3
    replayed = replay(raw, parse_stream_config(text, "mrf_default.xml, 1 thread"), tmp_path / "replay.h5",
                      "run", options=ChainOptions(connect_s=120, io_s=300, exit_s=60))
    cache = ["--psf-cache-dir", str(tmp_path / "mrf-gadgetron" / "psf"),
             "--dictionary-cache-dir", str(tmp_path / "mrf-gadgetron" / "dictionaries"), "--threads", "1"]
    assert main(["reconstruct", str(raw), "-o", str(tmp_path / "cli.h5"), "--group", "run", *cache]) == 0

    chain, cli = read_map_file(replayed.path), read_map_file(tmp_path / "cli.h5")
    assert _series(replayed.path, "run") == _series(tmp_path / "cli.h5", "run") == [1, 2, 3, 5]  # no B1 estimate
    assert chain.slices == cli.slices == [0, 1]
    for key in ("t1_ms", "t2_ms", "pd", "quality"):
        mapped = np.isfinite(chain.maps[key])
        np.testing.assert_array_equal(np.isfinite(cli.maps[key]), mapped)
        np.testing.assert_allclose(cli.maps[key][mapped], chain.maps[key][mapped], rtol=1e-6, err_msg=key)
    assert mapped.sum() > 100
    for meta in (chain.meta, cli.meta):
        assert meta["t1_ms"]["MRF_Mapper"] == "dictionary"
        assert "network mapping not used" in str(meta["t1_ms"]["MRF_Warning"])


def test_reconstruct_writes_coefficients_when_asked_and_reuses_its_caches(sim_small_scan, tmp_path, capsys,
                                                                         caplog):
    caplog.set_level("INFO")
    scan, _, raw = sim_small_scan
    out = tmp_path / "maps.h5"
    argv = ["reconstruct", str(raw), "-o", str(out), "--mapper", "dictionary", "--grid-step-pct", "20",
            "--coefficient-images", *_quiet(tmp_path), "--group", "run1"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    maps = read_map_file(out)
    assert maps.group == "run1" and maps.slices == [0, 1] and _series(out, "run1") == [1, 2, 3, 5, COEFFICIENT_SERIES]
    truth = scan.phantom
    inside = truth.mask & np.isfinite(maps.maps["t1_ms"])
    assert inside.sum() > 0.5 * truth.mask.sum()  # most of the object is mapped
    t1_error = np.median(np.abs(maps.maps["t1_ms"][inside] - truth.t1_ms[inside]) / truth.t1_ms[inside])
    assert t1_error < 0.3  # 32 x 32, 40 TRs, 8 interleaves: coarse, but the maps are the phantom's
    import ismrmrd

    dataset = ismrmrd.Dataset(str(out), "run1", create_if_needed=False)
    try:
        image = dataset.read_image(f"image_{COEFFICIENT_SERIES}", 1)
        assert image.data.shape == (10, 1, 32, 32) and image.data.dtype == np.complex64
        assert image_meta(image)["MRF_Rank"] == "10" and image.getHead().slice == 1
    finally:
        dataset.close()
    # both slices have the same trajectory and basis: slice 1 reads the PSF kernels slice 0 cached (made from the
    # 8 interleaves' spectra, cached too: 8 <= 55 pairs)
    assert len(list((tmp_path / "psf").glob("psf_*.npy"))) == 2
    assert len(list((tmp_path / "psf").glob("psf_interleaves_*.npy"))) == 1
    assert re.search(r"PSF kernels: psf_[0-9a-f]{24}\.npy read from the cache", caplog.text)
    (cached,) = (tmp_path / "dictionaries").glob("dict_*.h5")
    assert cached.name == f"dict_{cache_key(scan.schedule, percent_grid(20.0), 50, 10)}.h5"
    assert main(argv[:-2] + ["--group", "run2", "--method", "cg"]) == 0
    assert f"dictionary from cache {cached}" in caplog.text


def test_reconstruct_errors_name_the_setting(sim_small_scan, tmp_path, capsys):
    _, _, raw = sim_small_scan
    out = str(tmp_path / "maps.h5")
    quiet = _quiet(tmp_path)
    assert main(["reconstruct", str(raw), "-o", out, "--basis", "dictionary", "--rank", "12",
                 "--grid-step-pct", "20", *quiet]) == 2
    assert "rank = 12 exceeds the basis' rank 10" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: the flag, the value and what it accepts
        main(["reconstruct", str(raw), "-o", out, "--grid", "nope"])
    assert "--grid: must be one of percent, song, oksuz" in capsys.readouterr().err
    assert main(["reconstruct", str(raw), "-o", out, "--basis", "model", "--model", str(tmp_path / "x.pt")]) == 2
    assert "basis = model, but the model cannot be used: no model file" in capsys.readouterr().err
    assert main(["reconstruct", str(raw), "-o", str(tmp_path / "missing" / "maps.h5"), *quiet]) == 2
    assert not (tmp_path / "maps.h5").exists()


def test_mapper_none_writes_the_coefficients_only(sim_small_scan, tmp_path):
    _, _, raw = sim_small_scan
    out = tmp_path / "maps.h5"
    assert main(["reconstruct", str(raw), "-o", str(out), "--mapper", "none", "--basis", "dictionary",
                 "--grid-step-pct", "20", "--method", "backprojection", "--group", "g", *_quiet(tmp_path)]) == 0
    assert _series(out, "g") == [COEFFICIENT_SERIES]


@pytest.mark.parametrize("method", ["gridding", "backprojection"])
def test_other_methods_run(sim_small_scan, tmp_path, method):
    _, _, raw = sim_small_scan
    out = tmp_path / "maps.h5"
    assert main(["reconstruct", str(raw), "-o", str(out), "--mapper", "dictionary", "--grid-step-pct", "20",
                 "--method", method, *_quiet(tmp_path)]) == 0
    maps = read_map_file(out).maps["t2_ms"]
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).sum() > 100
