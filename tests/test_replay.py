"""`mrf replay` with the throwaway gadget of test_wire on a small simulated raw file: every acquisition
(noise scans included) goes through real stage processes, the images come back into a client-layout
file, and failures exit 2 with the stage's reason."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from chain_helpers import child_pids, config_xml

from mrf_gadgetron.cli import main


def test_replay_sends_the_whole_file_and_writes_images_like_the_client(sim_small_scan, test_gadget, tmp_path,
                                                                       capsys):
    scan, acquisitions, raw = sim_small_scan
    config = tmp_path / "echo.xml"
    config.write_text(config_xml(("images", {"scale": "2"}), ("passthrough", None)))
    out = tmp_path / "images.h5"
    assert main(["replay", str(raw), "-c", str(config), "-o", str(out), "-G", "run1"]) == 0
    captured = capsys.readouterr()
    assert f"{len(acquisitions)} images (series 8: {len(acquisitions)})" in captured.out
    assert "wire_test_gadget.passthrough" in captured.out  # the stage table
    assert "warning: [wire_test_gadget.images] WARNING: wire test gadget: scale 2" in captured.err
    with h5py.File(out, "r") as f:
        assert list(f) == ["run1"] and list(f["run1"]) == ["image_8"]
        data = f["run1/image_8/data"][()]
    assert data.shape[0] == len(acquisitions)
    for k in (0, len(acquisitions) - 1):  # first (a noise scan) and last acquisition, |data| x 2
        expected = 2 * np.abs(acquisitions[k].data)
        assert np.allclose(data[k].reshape(-1)[:expected.size], expected.reshape(-1), rtol=1e-6)


def test_replay_failure_exits_2_with_the_stage_reason_and_writes_nothing(sim_small_scan, test_gadget, tmp_path,
                                                                        capsys):
    _, _, raw = sim_small_scan
    config = tmp_path / "text.xml"
    config.write_text(config_xml(("images", {"mode": "text"})))
    out = tmp_path / "images.h5"
    assert main(["replay", str(raw), "-c", str(config), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "mrf replay: error: wire_test_gadget.images: illegal message id from an external peer: 5" in err
    assert not out.exists()


def test_replay_refuses_a_configuration_it_cannot_run(sim_small_scan, tmp_path, capsys):
    config = tmp_path / "cpp.xml"
    config.write_text("<configuration><version>2</version><stream><gadget><name>x</name></gadget></stream>"
                      "</configuration>")
    assert main(["replay", str(sim_small_scan[2]), "-c", str(config), "-o", str(tmp_path / "o.h5")]) == 2
    assert "stream node 1 is <gadget>" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_replay_leaves_no_stage_process(sim_small_scan, test_gadget, tmp_path, sig):
    """Ctrl-C: the replay stops its stages and exits 130; killed outright: the stages die with it."""
    config = tmp_path / "hang.xml"
    config.write_text(config_xml(("images", {"mode": "hang"})))
    command = [sys.executable, "-m", "mrf_gadgetron", "replay", str(sim_small_scan[2]), "-c", str(config), "-o",
               str(tmp_path / "o.h5")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not child_pids(proc.pid, b"mrf_gadgetron.host.stage_main") and time.monotonic() < deadline:
        time.sleep(0.1)
    stages = child_pids(proc.pid, b"mrf_gadgetron.host.stage_main")
    assert len(stages) == 1
    time.sleep(0.5)
    proc.send_signal(sig)
    output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == (130 if sig == signal.SIGINT else -9), output
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in stages) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in stages)
