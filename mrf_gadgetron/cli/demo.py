"""`mrf demo`: the main job on an embedded default, end to end through the product's gadget chain.

Simulates a spiral FISP-MRF scan of the NIST system phantom's T1 plate (ISMRMRD raw data with its ground
truth), reconstructs it through the default stream configuration (config_xml/mrf_default.xml: network
mapping with the dictionary fallback) by replay, exactly as Gadgetron would run the gadgets, and writes
the maps file, a figure of the T1/T2/PD maps beside the truth, and a one-line accuracy summary per
sphere against the truth. Also, because it is cheap: the fingerprints of five tissues (fingerprints.png).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mrf_gadgetron.cli import CliError, HelpFormatter, add_figure_arguments

TISSUES = {"white matter": (830.0, 80.0), "grey matter": (1330.0, 110.0), "CSF": (3500.0, 1500.0),
           "fat": (380.0, 130.0), "muscle": (1410.0, 50.0)}
N_SPHERES = 14  # NIST plate spheres are labels 1..14 in the phantom


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="simulate a NIST phantom scan and reconstruct it through the default gadget chain",
        description=__doc__.split("\n\n")[1], formatter_class=HelpFormatter)
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument("--config", default="mrf_default.xml", help="stream configuration (file or name)")
    p.add_argument("--matrix", type=int, default=128, help="image matrix of the simulated scan")
    p.add_argument("--timepoints", type=int, default=1000, help="TRs of the Jiang schedule played")
    p.add_argument("--coils", type=int, default=8, help="receive channels")
    p.add_argument("--snr", type=float, default=40.0, help="SNR of the simulated scan (mrf simulate --snr)")
    add_figure_arguments(p)
    p.set_defaults(func=run)


def sphere_accuracy(map_file, phantom) -> list[dict]:
    """Per NIST sphere and slice: median mapped and true T1/T2 inside the sphere (eroded by one voxel
    against partial volume, unless that leaves fewer than 4) and the fraction of its voxels mapped."""
    import numpy as np
    from scipy.ndimage import binary_erosion

    rows = []
    for i, s in enumerate(map_file.slices):
        for label in range(1, N_SPHERES + 1):
            sphere = phantom.labels[s] == label
            inside = binary_erosion(sphere)
            if inside.sum() < 4:  # small matrices: the whole sphere rather than nothing
                inside = sphere
            if inside.sum() == 0:
                continue
            row = {"slice": int(s), "sphere": label, "voxels": int(inside.sum()),
                   "mapped_fraction": float(np.isfinite(map_file.maps["t1_ms"][i][inside]).mean())}
            for key in ("t1_ms", "t2_ms"):
                row[f"{key}_true"] = float(np.median(getattr(phantom, key)[s][inside]))
                row[f"{key}_mapped"] = float(np.nanmedian(map_file.maps[key][i][inside])) \
                    if row["mapped_fraction"] > 0 else float("nan")
                row[f"{key}_error_pct"] = 100.0 * abs(row[f"{key}_mapped"] / row[f"{key}_true"] - 1.0)
            rows.append(row)
    return rows


def accuracy_line(rows: list[dict], mapper: str) -> str:
    """The one-line summary: median (and max) |error| over spheres, spheres within 10 %."""
    import numpy as np

    if not rows:
        return f"accuracy vs truth: no NIST sphere found in the maps ({mapper} maps)"
    parts = []
    for key, name in (("t1_ms", "T1"), ("t2_ms", "T2")):
        errors = np.array([r[f"{key}_error_pct"] for r in rows])
        errors = np.where(np.isfinite(errors), errors, np.inf)
        parts.append(f"median |{name} error| {np.median(errors):.1f} % (max {np.max(errors):.0f} %, "
                     f"{int((errors <= 10).sum())}/{len(rows)} spheres within 10 %)")
    return f"accuracy vs truth over {len(rows)} NIST spheres ({mapper} maps): " + "; ".join(parts)


def run(args) -> int:
    import numpy as np

    from mrf_core.io.map_images import read_map_file
    from mrf_core.io.rawio import MrfRawFile
    from mrf_core.physics.epg import simulate_fisp
    from mrf_core.physics.sequence import default_schedule
    from mrf_core.plotting import FigureStyle, plot_fingerprints, plot_map_file
    from mrf_gadgetron.cli import main as mrf
    from mrf_gadgetron.host.replay import ReplayError, replay
    from mrf_gadgetron.host.stream_config import find_config

    started = time.perf_counter()
    style = FigureStyle.from_options(args.linear, args.window)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = find_config(args.config)
    schedule = default_schedule().truncated(args.timepoints)
    print(schedule.describe())
    t1, t2 = (np.array(v) for v in zip(*TISSUES.values(), strict=True))
    signals = simulate_fisp(schedule, t1, t2, n_states=50, device="cpu").numpy()
    plot_fingerprints(schedule, signals, [f"{n} (T1 {a:g} ms, T2 {b:g} ms)" for n, (a, b) in TISSUES.items()],
                      out / "fingerprints.png")

    raw = out / "nist_scan.h5"
    print(f"\n1. Simulating a spiral MRF scan of the NIST T1 plate (3 T, {args.matrix}^2, {args.timepoints} TRs, "
          f"{args.coils} coils, 1/48 interleaves per TR, SNR {args.snr:g}):")
    status = mrf(["simulate", "--phantom", "nist-t1", "--field", "3", "--matrix", str(args.matrix), "--coils",
                  str(args.coils), "--snr", str(args.snr), "--timepoints", str(args.timepoints), "--out", str(raw),
                  "--png", str(out / "nist_scan.png")])
    if status:
        return status

    print(f"\n2. Reconstructing it through {config.source} by replay (each <external> its own `python -m gadgetron` "
          f"process, as Gadgetron runs them):")
    maps_path = out / "maps.h5"
    try:
        result = replay(raw, config, maps_path, on_text=lambda t: print(f"   warning: {t}"))
    except ReplayError as exc:
        raise CliError(f"the reconstruction failed: {exc}") from exc
    print(f"   wrote {maps_path}: {result.n_images} images in series {sorted(result.series)}")
    print("   " + result.chain.table().replace("\n", "\n   "))

    print("\n3. Maps against the phantom's truth:")
    map_file = read_map_file(maps_path)
    with MrfRawFile(raw) as f:
        phantom = f.truth().phantom
    plot_map_file(maps_path, out / "maps.png", truth=phantom, style=style,
                  title=f"NIST T1 plate, {args.matrix}^2, {args.timepoints} TRs, through {Path(config.source).name}")
    rows = sphere_accuracy(map_file, phantom)
    mapper = map_file.meta.get("t1_ms", {}).get("MRF_Mapper", "unknown")
    mapper = mapper[0] if isinstance(mapper, list) else mapper
    print(f"   {'sphere':>6} {'T1 true':>8} {'mapped':>8} {'err %':>6} {'T2 true':>8} {'mapped':>8} {'err %':>6}")
    for r in rows:
        print(f"   {r['sphere']:>6} {r['t1_ms_true']:>8.1f} {r['t1_ms_mapped']:>8.1f} {r['t1_ms_error_pct']:>6.1f} "
              f"{r['t2_ms_true']:>8.1f} {r['t2_ms_mapped']:>8.1f} {r['t2_ms_error_pct']:>6.1f}")
    line = accuracy_line(rows, mapper)
    (out / "accuracy.json").write_text(json.dumps({"summary": line, "spheres": rows}, indent=1))
    print(f"\n{line}")
    print(f"demo done in {time.perf_counter() - started:.0f} s; written to {out}/: fingerprints.png, nist_scan.h5, "
          f"nist_scan.png, maps.h5, maps.png, accuracy.json")
    return 0
