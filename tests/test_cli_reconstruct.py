"""`mrf reconstruct`: the whole pipeline on the small simulated scan, the maps file it writes, and errors."""

from __future__ import annotations

import sys

import ismrmrd
import numpy as np
import pytest

from mrf_core.io.map_images import image_meta, read_map_file
from mrf_core.physics.dictionary import cache_key, percent_grid
from mrf_gadgetron.cli import main
from mrf_gadgetron.cli.reconstruct import COEFFICIENT_SERIES, COIL_METHOD_CHOICES, METHOD_CHOICES


def test_choices_are_the_librarys():
    from mrf_core.recon.coils import COIL_METHODS
    from mrf_core.recon.reconstruct import METHODS

    assert METHOD_CHOICES == METHODS and COIL_METHOD_CHOICES == COIL_METHODS


def test_reconstruct_writes_maps_and_coefficients(sim_small_scan, tmp_path, capsys, caplog):
    caplog.set_level("INFO")
    scan, _, raw = sim_small_scan
    out = tmp_path / "maps.h5"
    cache = tmp_path / "psf"
    argv = ["reconstruct", str(raw), "-o", str(out), "--dictionary", "percent:20", "--psf-cache", str(cache),
            "--dictionary-cache", str(tmp_path / "dictionaries"), "--group", "run1"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    maps = read_map_file(out)
    assert maps.group == "run1" and maps.slices == [0, 1]
    assert maps.maps["t1_ms"].shape == (2, 32, 32)
    truth = scan.phantom
    inside = truth.mask & np.isfinite(maps.maps["t1_ms"])
    assert inside.sum() > 0.5 * truth.mask.sum()  # most of the object is mapped
    t1_error = np.median(np.abs(maps.maps["t1_ms"][inside] - truth.t1_ms[inside]) / truth.t1_ms[inside])
    assert t1_error < 0.3  # 32 x 32, 40 TRs, 8 interleaves: coarse, but the maps are the phantom's
    dataset = ismrmrd.Dataset(str(out), "run1", create_if_needed=False)
    try:
        image = dataset.read_image(f"image_{COEFFICIENT_SERIES}", 1)
        assert image.data.shape == (10, 1, 32, 32) and image.data.dtype == np.complex64
        assert image_meta(image)["MRF_Rank"] == "10" and image.getHead().slice == 1
    finally:
        dataset.close()
    # both slices have the same trajectory and basis: slice 1 reads the PSF kernels slice 0 cached
    assert len(list(cache.glob("psf_*.npy"))) == 1
    assert "PSF kernels read from the cache" in caplog.text
    (cached,) = (tmp_path / "dictionaries").glob("dict_*.h5")
    assert cached.name == f"dict_{cache_key(scan.schedule, percent_grid(20.0), 50, 10)}.h5"
    assert main(argv[:-2] + ["--group", "run2", "--method", "cg"]) == 0
    assert f"dictionary from cache {cached}" in caplog.text


def test_reconstruct_errors(sim_small_scan, tmp_path, capsys, monkeypatch):
    _, _, raw = sim_small_scan
    out = str(tmp_path / "maps.h5")
    no_cache = ["--dictionary-cache", "", "--psf-cache", ""]
    assert main(["reconstruct", str(raw), "-o", out, "--dictionary", "percent:20", "--rank", "12", *no_cache]) == 2
    assert "exceeds" in capsys.readouterr().err
    assert main(["reconstruct", str(raw), "-o", out, "--dictionary", "nope", *no_cache]) == 2
    assert "neither a file nor a grid" in capsys.readouterr().err
    assert main(["reconstruct", str(raw), "-o", out, "--mapper", "network", "--model", str(tmp_path / "x.pt")]) == 2
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "mrf_core.mapping.model", None)
    assert main(["reconstruct", str(raw), "-o", out, "--mapper", "network"]) == 2
    assert "network mapper not available" in capsys.readouterr().err
    assert main(["reconstruct", str(raw), "-o", str(tmp_path / "missing" / "maps.h5"), *no_cache]) == 2
    assert not (tmp_path / "maps.h5").exists()


@pytest.mark.parametrize("method", ["gridding", "backprojection"])
def test_other_methods_run(sim_small_scan, tmp_path, method):
    _, _, raw = sim_small_scan
    out = tmp_path / "maps.h5"
    assert main(["reconstruct", str(raw), "-o", str(out), "--dictionary", "percent:20", "--method", method,
                 "--psf-cache", "", "--dictionary-cache", ""]) == 0
    assert read_map_file(out).maps["t2_ms"].shape == (2, 32, 32)
