"""benchmarks/gpu_run.py (issue 19's one GPU run) as a CPU smoke run: every stage with tiny sizes, the JSON of
figures complete (finite figures or a recorded error per network), the archives loadable and < 16 MiB."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest

from mrf_core.mapping import load_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
pytestmark = pytest.mark.repository  # runs a script of the checkout, not of the installed package


def _numbers(record: dict) -> list:
    return [v for v in record.values() if isinstance(v, int | float) and not isinstance(v, bool)]


def test_quick_cpu_run_writes_every_figure_and_archive(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    gpu_run = importlib.import_module("gpu_run")
    out = tmp_path / "out"
    # --max-archive-mib 8: the residual CNN (~15 MiB in float32) takes the float16 export path here too
    # a generous budget, so that a loaded machine skips no stage (--quick caps the training at 4 epochs)
    gpu_run.main(["--out", str(out), "--device", "cpu", "--quick", "--budget-s", "300", "--max-archive-mib", "8"])

    figures = json.loads((out / "figures.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    stages = figures["stages"]
    assert stages["env"]["status"] == "ok"
    assert all(s["status"] in ("ok", "skipped") for s in stages.values()), stages  # no stage fails on a CPU
    assert stages["song_export"]["status"] == "ok" and stages["oksuz_export"]["status"] == "ok", stages

    networks = {**figures["song"]["networks"], **figures["oksuz"]["networks"]}
    for name, stem in gpu_run.ARCHIVE_NAMES.items():
        record = networks[name]
        assert "error" not in record, (name, record)
        if "figures" in record:  # absent only when the budget skipped the evaluation
            assert record["figures"] and None not in record["figures"].values(), (name, record)
            assert all(math.isfinite(v) for v in _numbers(record["figures"])), (name, record)
        path = out / f"{stem}.pt"  # training runs at least one epoch, so every network has its archive
        assert record["archive"] == path.name and path.is_file(), (name, record)
        assert path.stat().st_size < 16 * 2**20 and record["archive_under_16_mib"]
        model = load_model(path)
        assert model.metadata["architecture"]["name"] == record["arch"]
    resnet = networks["residual CNN"]
    assert resnet["export"]["weights"] == "float16" and "export" in load_model(out / "song_resnet.pt").metadata
    if "figures" in resnet:
        assert set(resnet["float16_loss"]) >= {"t1_rmse_ms", "t2_rmse_ms"}
        assert resnet["paper"]["t1_rmse_ms"] == "0.659"
    if "figures" in networks["GRU"]:
        assert networks["GRU"]["paper"]["t1_mae_ms"].startswith("101.81")

    recon = figures["recon"]
    if stages["recon"]["status"] == "ok" and "agreement" in recon:
        assert isinstance(recon["agreement"]["maps_agree"], bool)
        assert recon["cpu"]["total_s"] > 0 and recon["device"]["nufft_backend"] == "sigpy"
    # what comes back from a GPU machine: at most 8 files
    assert len(list(out.iterdir())) <= 8
