"""`mrf simulate`: a spiral MRF raw-data file (ISMRMRD, with ground truth) of a phantom."""

from __future__ import annotations

import os
from pathlib import Path

from mrf_gadgetron.cli import HelpFormatter


def register(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a spiral FISP-MRF scan of a phantom and write ISMRMRD raw data with ground truth",
        description="Simulate a multi-coil spiral FISP-MRF acquisition of a phantom (EPG per voxel, NUFFT per "
        "readout, correlated noise) and write it as an ISMRMRD HDF5 file whose group <dataset>/mrf_truth holds "
        "the true T1, T2, PD, B1 and label maps, the coil sensitivities and the noise covariance.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--phantom", required=True, metavar="NAME|FILE",
                   help="nist-t1 (NiCl2 array), nist-t2 (MnCl2 array), nist (both, 2 slices), brain, or a maps "
                   "file (.npz t1_ms/t2_ms/pd[/b1]; .npy stacked T1,T2,PD[,B1]; .nii/.nii.gz)")
    p.add_argument("--field", type=float, default=3.0, metavar="T", help="field strength (NIST: 1.5 or 3)")
    p.add_argument("--batch", type=int, default=1, choices=(1, 2), help="NIST phantom batch (serial <= 41: 1)")
    p.add_argument("--matrix", type=int, default=256, help="image matrix (N x N)")
    p.add_argument("--fov", type=float, default=300.0, metavar="MM", help="field of view")
    p.add_argument("--slices", type=int, default=1, help="slices (brain phantom)")
    p.add_argument("--coils", type=int, default=16, help="receive channels")
    p.add_argument("--snr", type=float, default=40.0,
                   help="mean object signal over noise std of one Nyquist-sampled time-point image; 0: noiseless")
    p.add_argument("--noise-correlation", type=float, default=0.3, metavar="RHO", help="channel noise coupling")
    p.add_argument("--timepoints", type=int, default=None, metavar="N", help="use only the first N TRs")
    p.add_argument("--schedule", default=None, metavar="FILE", help="schedule file (default: Jiang 2015)")
    p.add_argument("--interleaves", type=int, default=48, help="spiral interleaves that sample the k-space edge")
    p.add_argument("--centre-interleaves", type=int, default=24, help="interleaves that sample the centre")
    p.add_argument("--interleaves-per-tr", type=int, default=1, help="readouts per TR (all: fully sampled)")
    p.add_argument("--interleave-step", type=int, default=1, help="sequential order: interleaves advanced per TR")
    p.add_argument("--rotation", choices=("sequential", "golden"), default="sequential",
                   help="per-TR rotation: 360/interleaves steps, or the 137.5 deg golden angle")
    p.add_argument("--max-grad", type=float, default=40.0, metavar="MT_PER_M", help="gradient limit")
    p.add_argument("--max-slew", type=float, default=150.0, metavar="T_PER_M_PER_S", help="slew-rate limit")
    p.add_argument("--dwell", type=float, default=2.0, metavar="US", help="ADC dwell time")
    p.add_argument("--max-readout", type=float, default=None, metavar="MS", help="longest readout allowed")
    p.add_argument("--shift", type=float, nargs=2, default=(0.0, 0.0), metavar=("X_MM", "Y_MM"),
                   help="move the phantom in plane")
    p.add_argument("--rotate", type=float, default=0.0, metavar="DEG", help="rotate the phantom in plane")
    p.add_argument("--scale", type=float, default=1.0, help="scale the phantom in plane")
    p.add_argument("--b1-field", type=float, default=0.0, metavar="AMPLITUDE",
                   help="centre-bright B1 field, e.g. 0.1 for +-10 %%; 0: uniform B1 = 1")
    p.add_argument("--slice-profile", default="none", metavar="SHAPE:TBW[:N]",
                   help="model the 2-D slice profile of this RF pulse, e.g. hann-sinc:4 (N sub-slices, default 20); "
                   "none: an ideal profile")
    p.add_argument("--states", type=int, default=None, metavar="N", help="EPG states (default 50)")
    p.add_argument("--index-map", default=None, metavar="SPEC",
                   help="acquisition fields for the indices, e.g. 'timepoint=user_int[0]' (default: "
                   "timepoint=repetition,interleave=kspace_encode_step_1,slice=slice)")
    p.add_argument("--stack-of-spirals", action="store_true",
                   help="the slices are the partitions of one slab (kspace_encode_step_2, header matrix z > 1)")
    p.add_argument("--seed", type=int, default=0, help="noise and texture seed")
    p.add_argument("--dataset", default="dataset", help="HDF5 group of the ISMRMRD dataset")
    p.add_argument("--out", required=True, metavar="FILE", help="ISMRMRD HDF5 file to write")
    p.add_argument("--png", default=None, metavar="FILE", help="also write a preview figure")
    p.set_defaults(func=run)


def _check_writable(path: str, what: str) -> None:
    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise OSError(f"cannot write the {what} {path}: folder {folder} does not exist or is not writable")


def run(args) -> int:
    from mrf_core.io.rawio import IndexMap
    from mrf_core.physics.epg import DEFAULT_N_STATES
    from mrf_core.physics.sequence import load_schedule
    from mrf_core.physics.slice_profile import SliceProfile
    from mrf_core.recon.trajectory import SpiralParams
    from mrf_core.sim.phantoms import Placement, make_phantom
    from mrf_core.sim.simulate import ScanSettings, simulate_to_file

    _check_writable(args.out, "output")
    if args.png:
        _check_writable(args.png, "preview")
    schedule = load_schedule(args.schedule)
    if args.timepoints is not None:
        schedule = schedule.truncated(args.timepoints)
    spiral = SpiralParams(
        fov_mm=args.fov, matrix=args.matrix, n_interleaves=args.interleaves,
        centre_interleaves=args.centre_interleaves, max_grad_mT_per_m=args.max_grad,
        max_slew_T_per_m_per_s=args.max_slew, dwell_us=args.dwell, max_readout_ms=args.max_readout,
        rotation=args.rotation, interleaves_per_tr=args.interleaves_per_tr, interleave_step=args.interleave_step,
    )
    settings = ScanSettings(
        n_coils=args.coils, snr=args.snr if args.snr > 0 else None, noise_correlation=args.noise_correlation,
        n_states=args.states if args.states is not None else DEFAULT_N_STATES, seed=args.seed,
        index_map=IndexMap.from_string(args.index_map) if args.index_map else IndexMap(),
        stack_of_spirals=args.stack_of_spirals,
        slice_profile=SliceProfile.parse(args.slice_profile),
    )
    phantom = make_phantom(
        args.phantom, field_t=args.field, batch=args.batch, matrix=args.matrix, fov_mm=args.fov,
        placement=Placement(tuple(args.shift), args.rotate, args.scale), b1_amplitude=args.b1_field,
        n_slices=args.slices, seed=args.seed,
    )
    print(f"{phantom.name}: {phantom.n_slices} slice(s), {int(phantom.mask.sum())} object voxels; "
          f"{schedule.describe()}")
    report = simulate_to_file(args.out, phantom, schedule, spiral, settings, args.dataset)
    print(report.describe())
    if args.png:
        write_preview(args.out, args.png, args.dataset)
        print(f"preview written to {args.png}")
    return 0


def write_preview(raw_path: str, png_path: str, dataset: str = "dataset") -> None:
    """Truth T1/T2/PD of slice 0 (mrf_core.plotting.draw_map), the first readouts' trajectories, and the
    time-averaged image of slice 0 reconstructed from the file itself (adjoint NUFFT with the spiral's DCF,
    root-sum-of-squares)."""
    import numpy as np

    from mrf_core.io.map_images import ImageGeometry
    from mrf_core.io.rawio import MrfRawFile
    from mrf_core.plotting import draw_map, new_figure, save_figure

    with MrfRawFile(raw_path, dataset) as raw:
        truth = raw.truth()
        first = [r.traj for _, r in zip(range(6), raw.readouts(), strict=False)]
        image = _time_averaged_image(raw, slice_index=0)
        fov = raw.info.fov_mm
    phantom = truth.phantom
    where = f"truth, slice 0 (of {phantom.n_slices})"
    geometry = ImageGeometry((fov, fov, 0.0))  # the directions `mrf simulate` writes
    fig = new_figure(figsize=(22, 4), layout="constrained")
    axes = fig.subplots(1, 5)
    for ax, key in zip(axes[:3], ("t1_ms", "t2_ms", "pd"), strict=True):
        draw_map(fig, ax, np.where(phantom.mask[0], getattr(phantom, key)[0], np.nan), key, geometry, where=where)
    for t in first:
        axes[3].plot(t[:, 0], t[:, 1], lw=0.6)
    axes[3].set_aspect("equal")
    axes[3].set_title(f"first {len(first)} readouts (cycles/FOV)", fontsize=10)
    axes[4].imshow(np.sqrt((np.abs(image) ** 2).sum(axis=0)), cmap="gray")
    axes[4].set_title("slice 0, time-averaged image from the raw data", fontsize=10)
    axes[4].set_axis_off()
    save_figure(fig, png_path)


def _time_averaged_image(raw, slice_index: int, block: int = 64):
    """Mean over readouts of the DCF-weighted adjoint NUFFT of one slice: (n_channels, N, N)."""
    import itertools

    import finufft
    import numpy as np

    from mrf_core.recon.trajectory import design_spiral, nufft_coords

    n, dcf = raw.info.matrix, design_spiral(raw.info.spiral).dcf()
    image, count, data, trajs = 0.0, 0, [], []
    readouts = (r for r in raw.readouts() if r.slice == slice_index)
    for readout in itertools.chain(readouts, [None]):
        if readout is not None:
            data.append(readout.data * dcf)
            trajs.append(readout.traj)
        if data and (readout is None or len(data) == block):
            rows, cols = nufft_coords(np.stack(trajs), n)
            stacked = np.stack(data, axis=1).reshape(data[0].shape[0], -1).astype(np.complex128)
            image = image + finufft.nufft2d1(rows, cols, stacked, (n, n), isign=1, eps=1e-6)
            count += len(data)
            data, trajs = [], []
    return image * (raw.info.spiral.n_interleaves / max(count, 1) / n**2)
