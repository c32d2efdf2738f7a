"""Block and checkerboard patterns in the PD map inside the NIST spheres, by reconstruction method.

    python benchmarks/bench_checkerboard.py [--raw nist_scan.h5] [--out-dir out/bench_checkerboard]

The raw file (default: `mrf demo`'s scan, simulated here when missing: NIST T1 plate, 3 T, 128^2, 1000 TRs,
8 coils, SNR 40) is reconstructed by `mrf reconstruct --method M` for M = llr (the default), cg (no
regulariser) and backprojection, each mapped by the network; the reference row is the true PD with its
k-space cut to the disc |k| <= N/2 the spiral samples (FFT, no reconstruction): the Gibbs ringing any
reconstruction of these data has. Per sphere (label 1-14 of the truth), the PD relative to the sphere's
median gives r; printed:
- the pixel checkerboard: |mean of r (-1)^(row + col)| (%), per sphere;
- the energy at the LLR block period: r of the eroded spheres folded onto the 8 x 8 cells (row mod 8,
  col mod 8), the variance of the cell means over what white noise leaves there (1: no pattern of that
  period; a period-2 pattern raises every even period, so the other methods are the reference).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_erosion

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mrf_core.io.map_images import read_map_file  # noqa: E402
from mrf_core.io.rawio import MrfRawFile  # noqa: E402
from mrf_gadgetron.cli import main as mrf  # noqa: E402

BLOCK = 8  # mrf_core.recon.subspace.fista_llr's default block
METHODS = ("llr", "cg", "backprojection")


def block_energy(residual: np.ndarray, mask: np.ndarray, period: int = BLOCK) -> float:
    rows, cols = np.nonzero(mask)
    r = residual[rows, cols]
    cells = (rows % period) * period + cols % period
    count = np.bincount(cells, minlength=period * period)
    sums = np.bincount(cells, weights=r, minlength=period * period)
    used = count > 0
    return float((sums[used] / count[used]).var() / (r.var() * np.mean(1.0 / count[used])))


def disc_truncated(image: np.ndarray) -> np.ndarray:
    """|image| with its centred DFT kept only inside |k| <= N/2 (pixel r = index - N // 2)."""
    n = image.shape[0]
    k = np.fft.fftshift(np.fft.fftfreq(n, 1.0 / n))
    spectrum = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image)))
    inside = np.hypot(*np.meshgrid(k, k)) <= n / 2
    return np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(spectrum * inside))))


def measure(pd: np.ndarray, labels: np.ndarray) -> str:
    """The printed row: checkerboard amplitude per sphere (%), their maximum, the block-period energy."""
    rows, cols = np.indices(pd.shape)
    sign = (-1.0) ** (rows + cols)
    amplitudes, residual, eroded = [], np.zeros(pd.shape), np.zeros(pd.shape, bool)
    for label in range(1, 15):
        sphere = (labels == label) & np.isfinite(pd)
        r = pd[sphere] / np.median(pd[sphere]) - 1
        amplitudes.append(100 * abs(np.mean(r * sign[sphere])))
        inner = binary_erosion(labels == label) & np.isfinite(pd)
        residual[inner] = pd[inner] / np.median(pd[inner]) - 1
        eroded |= inner
    return f"{' '.join(f'{a:.1f}' for a in amplitudes)}  {max(amplitudes):4.1f}  {block_energy(residual, eroded):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", default=None, help="raw file with truth (default: simulate the demo's scan)")
    parser.add_argument("--out-dir", default="out/bench_checkerboard")
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = Path(args.raw) if args.raw else out / "nist_scan.h5"
    if not raw.is_file():
        mrf(["simulate", "--phantom", "nist-t1", "--field", "3", "--matrix", "128", "--coils", "8", "--snr", "40",
             "--timepoints", "1000", "--out", str(raw)])
    with MrfRawFile(raw) as f:
        phantom = f.truth().phantom
    labels = phantom.labels[0]
    print(f"{'method':>15}  PD checkerboard per sphere 1-14 (%)                        max  block-period energy")
    print(f"{'truth, k disc':>15}  {measure(disc_truncated(np.where(phantom.mask[0], phantom.pd[0], 0.0)), labels)}")
    for method in METHODS:
        maps = out / f"maps_{method}.h5"
        maps.unlink(missing_ok=True)
        if mrf(["reconstruct", str(raw), "-o", str(maps), "--method", method, "--mapper", "network"]):
            raise SystemExit(f"mrf reconstruct --method {method} failed")
        print(f"{method:>15}  {measure(read_map_file(maps).maps['pd'][0], labels)}")


if __name__ == "__main__":
    main()
