"""The `mrf` command: help, signal JSON, dictionary build/info, and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from chain_helpers import default_config_text

from mrf_core.physics.epg import simulate_fisp
from mrf_core.physics.sequence import default_schedule
from mrf_gadgetron.cli import main


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "mrf_gadgetron", "--help"], capture_output=True, text=True, check=True)
    for name in ("signal", "dictionary", "demo"):
        assert name in out.stdout


def test_signal_json_is_the_simulated_fingerprint(capsys):
    assert main(["signal", "--t1", "900", "--t2", "70", "--b1", "0.9", "--json", "--timepoints", "300"]) == 0
    payload = json.loads(capsys.readouterr().out)
    signal = np.array([complex(re, im) for re, im in payload["signal"]])
    expected = simulate_fisp(default_schedule().truncated(300), [900], [70], [0.9], device="cpu")[0].numpy()
    assert payload["n_timepoints"] == 300 and payload["n_states"] == 50
    np.testing.assert_allclose(signal, expected, atol=1e-7)


def test_signal_options_change_the_fingerprint(capsys, tmp_path):
    main(["signal", "--t1", "900", "--t2", "70", "--json", "--timepoints", "50", "--no-inversion"])
    no_inv = json.loads(capsys.readouterr().out)
    main(["signal", "--t1", "900", "--t2", "70", "--json", "--timepoints", "50", "--te", "4", "--states", "20"])
    te4 = json.loads(capsys.readouterr().out)
    assert no_inv["inversion"] is False and te4["te_ms"] == 4 and te4["n_states"] == 20
    assert main(["signal", "--t1", "900", "--t2", "70", "--timepoints", "50", "--png", str(tmp_path / "s.png")]) == 0
    assert "|signal|" in capsys.readouterr().out and (tmp_path / "s.png").stat().st_size > 1000


def test_dictionary_build_and_info(capsys, tmp_path):
    path = tmp_path / "d.h5"
    assert main(["dictionary", "build", "--grid", "percent", "--step-pct", "25", "--timepoints", "100",
                 "--states", "20", "--energy", "1e-3", "--b1", "0.9", "1.1", "0.1", "-o", str(path)]) == 0
    assert "written to" in capsys.readouterr().out
    assert main(["dictionary", "info", str(path)]) == 0
    info = capsys.readouterr().out
    assert "B1 0.9-1.1 (3)" in info and "residual energy by rank" in info


@pytest.mark.parametrize(
    "argv, message",
    [
        (["signal", "--t1", "-5", "--t2", "100"], "t1_ms[0] = -5.0 must be > 0"),
        (["signal", "--t1", "100", "--t2", "10", "--schedule", "/nonexistent.csv"], "cannot read schedule"),
        (["dictionary", "info", "/nonexistent.h5"], "does not exist"),
        (["dictionary", "build", "--grid", "percent", "--step-pct", "0", "-o", "x.h5"], "step_pct = 0"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith(f"mrf {argv[0]}: error:")


def test_a_bug_shows_its_traceback_and_asks_for_a_report(capsys, monkeypatch):
    """Only explained errors (MrfError, OSError) are one line; a programming error keeps its traceback."""
    from mrf_gadgetron.cli import signal as signal_command

    def broken(args):
        raise KeyError("oops")

    monkeypatch.setattr(signal_command, "run", broken)
    assert main(["signal", "--t1", "900", "--t2", "70"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'oops'" in err and "please report it" in err


def test_unwritable_output_leaves_nothing(tmp_path, capsys):
    target = tmp_path / "missing_folder" / "d.h5"
    assert main(["dictionary", "build", "--step-pct", "40", "--timepoints", "20", "-o", str(target)]) == 2
    assert "does not exist" in capsys.readouterr().err and not target.parent.exists()


def test_demo_reconstructs_through_the_default_chain(tmp_path, capsys, gadget_cache):
    """The demo, small (64^2, 400 TRs, 2 coils; 200 TRs left short-T1 spheres 25-100 % off) and with a 10 %
    dictionary grid to stay quick: simulated scan, replay through the default configuration, maps file,
    figure, accuracy line and its JSON."""
    config = tmp_path / "demo_config.xml"
    config.write_text(default_config_text(grid_step_pct="10"))
    argv = ["demo", "--out", str(tmp_path), "--matrix", "64", "--timepoints", "400", "--coils", "2", "--config",
            str(config)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for name in ("fingerprints.png", "nist_scan.h5", "nist_scan.png", "maps.h5", "maps.png", "accuracy.json"):
        assert (tmp_path / name).stat().st_size > 1000, name
    summary = json.loads((tmp_path / "accuracy.json").read_text())
    line = [row for row in out.splitlines() if row.startswith("accuracy vs truth over")]
    assert line == [summary["summary"]] and len(summary["spheres"]) >= 10
    good = [r["t1_ms_error_pct"] for r in summary["spheres"] if r["t1_ms_true"] > 100 and r["mapped_fraction"] > 0.5]
    assert len(good) >= 6 and sorted(good)[len(good) // 2] < 15, good
