"""`mrf reconstruct`: raw ISMRMRD scan -> maps file, the whole pipeline in one process.

Read (MrfRawFile) -> gather slices (SliceGatherer) -> reconstruct each slice (mrf_core.recon.reconstruct) -> map the
coefficient images (dictionary matching, or a network model) -> write `maps.h5` in the layout of
`gadgetron_ismrmrd_client` (mrf_core.io.map_images): group `<date time>` (or --group), series 1-5 the maps
(T1 ms, T2 ms, PD, B1 if estimated, match quality), series COEFFICIENT_SERIES the K complex coefficient
images of each slice (one K-channel complex image per slice, meta MRF_BasisHash).

Dictionary: --dictionary FILE (made for the scan's schedule), or a grid name built for the scan's schedule
on the fly: percent[:STEP] (default percent:5, 12k atoms, 3-70 s for 1000 TRs on the 2-core machine
depending on its load and BLAS threads), song, oksuz; built ones are kept in --dictionary-cache.
Method gridding is matched in the dictionary's full SVD subspace (its whole basis: equal to matching the
gridded time series in time up to the basis' residual energy; see mrf_core.recon.reconstruct).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import mrf_core
from mrf_gadgetron.cli import CliError

log = logging.getLogger("mrf.reconstruct")

COEFFICIENT_SERIES = 10
DEFAULT_DICTIONARY = "percent:5"
_DICTIONARY_RANK = 10  # the basis the grids are built with; --rank truncates it


# Kept literal so that `mrf --help` does not import the reconstruction (torch, numba); a test checks them
# against mrf_core.recon.reconstruct. Options left at None take ReconSettings' defaults (chosen by measurement).
METHOD_CHOICES = ("gridding", "backprojection", "cg", "llr")
COIL_METHOD_CHOICES = ("lowres", "espirit")


def register(sub) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="reconstruct a spiral MRF raw file into T1/T2/PD maps and coefficient images (one process)",
        description="Gather, reconstruct (NUFFT low-rank subspace), map and write an ISMRMRD maps file in the "
        "gadgetron_ismrmrd_client layout: series 1-5 T1, T2, PD, B1, match quality; series "
        f"{COEFFICIENT_SERIES} the complex subspace coefficient images. Reconstruction options left out take "
        "the library defaults (mrf_core.recon.reconstruct.ReconSettings, chosen by measurement; README).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    library = "library default"
    p.add_argument("scan", help="ISMRMRD raw file (e.g. from mrf simulate)")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="maps file to write")
    p.add_argument("--method", choices=METHOD_CHOICES, default=None, help=f"reconstruction method ({library})")
    p.add_argument("--rank", type=int, default=None,
                   help=f"subspace rank: the basis truncated ({library}; gridding uses the whole basis)")
    p.add_argument("--iterations", type=int, default=None, help=f"CG / FISTA iterations ({library})")
    p.add_argument("--llr-lambda", type=float, default=None,
                   help=f"LLR weight of method llr, relative to the largest block singular value ({library})")
    p.add_argument("--virtual-coils", type=int, default=None, help=f"coil compression target ({library})")
    p.add_argument("--coil-method", choices=COIL_METHOD_CHOICES, default=None, help=f"coil maps ({library})")
    p.add_argument("--nufft-backend", default=None, help=f"finufft, sigpy or cufinufft ({library})")
    p.add_argument("--device", default=None, help=f"cpu or cuda[:n] for the GPU backends ({library})")
    p.add_argument("--threads", type=int, default=None, help=f"threads for NUFFT and FFT ({library})")
    p.add_argument("--mapper", choices=("dictionary", "network"), default="dictionary", help="how to map")
    p.add_argument("--model", default=None, metavar="FILE", help="network model archive (default: the packaged one)")
    p.add_argument("--dictionary", default=DEFAULT_DICTIONARY, metavar="FILE|GRID",
                   help="dictionary file, or grid percent[:STEP], song, oksuz built for the scan's schedule")
    p.add_argument("--dictionary-cache", default=str(mrf_core.cache_dir("dictionaries")), metavar="DIR",
                   help="folder keeping dictionaries built from a grid, by grid and schedule ('' to disable)")
    p.add_argument("--mask-fraction", type=float, default=0.1,
                   help="map voxels whose time-average magnitude exceeds this fraction of its 99th percentile")
    p.add_argument("--psf-cache", default=str(mrf_core.cache_dir("psf")), metavar="DIR",
                   help="folder caching Toeplitz PSF kernels ('' to disable)")
    p.add_argument("--max-missing", type=float, default=0.0, metavar="FRACTION",
                   help="reconstruct slices missing up to this fraction of time points (default: error)")
    p.add_argument("--dataset", default="dataset", help="HDF5 group of the ISMRMRD dataset")
    p.add_argument("--group", default=None, help="group name in the maps file (default: date and time)")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.set_defaults(func=run)


# ---- helpers shared with the benchmark --------------------------------------------------------------
def dictionary_for(spec: str, schedule, progress: bool = False, cache_dir: str | Path | None = None):
    """A dictionary for `schedule`: a file (checked against it), or a grid built now (or read from
    `cache_dir`: mrf_core.physics.dictionary.cached_dictionary)."""
    from mrf_core.physics.dictionary import Dictionary, cached_dictionary, oksuz_grid, percent_grid, song_grid

    name, _, arg = spec.partition(":")
    grids = {"percent": lambda: percent_grid(float(arg) if arg else 5.0), "song": song_grid, "oksuz": oksuz_grid}
    if name in grids and not Path(spec).exists():
        return cached_dictionary(schedule, grids[name](), rank=_DICTIONARY_RANK, cache_dir=cache_dir,
                                 progress=progress)
    if not Path(spec).is_file():
        raise CliError(f"--dictionary {spec!r} is neither a file nor a grid (percent[:STEP], song, oksuz)")
    return Dictionary.load(spec, schedule=schedule, fingerprints=False)


def match_coefficients(dictionary, result, mask: np.ndarray | None = None):
    """Dictionary matching of a ReconResult's coefficients in its basis (the dictionary's basis truncated)."""
    from mrf_core.mapping.matching import match

    rank = result.basis.rank
    if not np.allclose(result.basis.vectors, dictionary.basis.vectors[:, :rank], atol=1e-6):
        raise CliError("the coefficients' basis is not the dictionary's: cannot match them")
    truncated = replace(dictionary, basis=result.basis, compressed=dictionary.compressed[:, :rank])
    return match(truncated, np.moveaxis(result.coefficients, 0, -1), mask=mask)


def map_nrmse(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """||estimate - truth|| / ||truth|| over `mask`; unmapped voxels (NaN) count as 0."""
    e = np.where(np.isfinite(estimate), estimate, 0.0)[mask]
    return float(np.linalg.norm(e - truth[mask]) / np.linalg.norm(truth[mask]))


# ---- the command ------------------------------------------------------------------------------------
def _settings(args):
    from mrf_core.recon.reconstruct import ReconSettings

    given = {"method": args.method, "rank": args.rank, "n_iterations": args.iterations,
             "llr_lambda": args.llr_lambda, "n_virtual_coils": args.virtual_coils, "coil_method": args.coil_method,
             "nufft_backend": args.nufft_backend, "device": args.device, "n_threads": args.threads}
    options = {k: v for k, v in given.items() if v is not None}
    if options.get("method", ReconSettings().method) == "gridding" and args.rank is None:
        options["rank"] = None  # gridding is matched in the dictionary's whole subspace
    return ReconSettings(**options, psf_cache_dir=args.psf_cache or None)


def _network(args, schedule):
    try:
        from mrf_core.mapping.model import default_model_path, load_model
    except ImportError as exc:
        raise CliError(f"network mapper not available ({exc})") from None
    model = load_model(args.model or default_model_path())
    model.check(schedule)
    if model.basis is None:
        raise CliError(f"model {args.model or 'default'} maps time courses, not coefficients: use --mapper "
                       "dictionary")
    return model


def run(args) -> int:
    from mrf_core.io.atomic import check_writable
    from mrf_core.io.map_images import ImageGeometry, coefficient_image, map_images, write_images
    from mrf_core.io.rawio import MrfRawFile
    from mrf_core.mapping.maps import QuantitativeMaps, object_mask
    from mrf_core.recon.gather import SliceGatherer
    from mrf_core.recon.reconstruct import reconstruct_slice

    check_writable(args.out)
    settings = _settings(args)
    started = time.perf_counter()
    images = []
    with MrfRawFile(args.scan, dataset=args.dataset) as raw:
        info = raw.info
        model = _network(args, info.schedule) if args.mapper == "network" else None
        dictionary = (dictionary_for(args.dictionary, info.schedule, args.progress, args.dictionary_cache or None)
                      if model is None else None)
        basis = model.basis if model is not None else dictionary.basis
        if settings.rank is not None and settings.rank > basis.rank:
            raise CliError(f"--rank {settings.rank} exceeds the basis' rank {basis.rank}")
        truth = raw.truth()
        space = raw.header.encoding[0].encodedSpace.fieldOfView_mm
        gatherer = SliceGatherer(info, max_missing_fraction=args.max_missing)

        def process(data) -> None:
            result = reconstruct_slice(data, basis, settings, progress=args.progress)
            stages = ", ".join(f"{k} {v:.2f}" for k, v in result.timings_s.items())
            log.info("slice %d: %s reconstruction, rank %d: %s s", data.slice_index, settings.method,
                     result.basis.rank, stages)
            for note in result.notes:
                log.info("slice %d: note: %s", data.slice_index, note)
            mask = object_mask(result.time_average, args.mask_fraction)
            coefficients = np.moveaxis(result.coefficients, 0, -1)
            mapping_started = time.perf_counter()
            if model is not None:
                matched, mapper = model.map_coefficients(coefficients, result.basis), "network"
            else:
                matched, mapper = match_coefficients(dictionary, result, mask), "dictionary"
            maps = QuantitativeMaps.from_match(matched, mask.shape, data.slice_index, mapper, mask)
            log.info("slice %d: %s mapping %.2f s, %d voxels", data.slice_index, mapper,
                     time.perf_counter() - mapping_started, int(maps.mask.sum()))
            if truth is not None:
                t = truth.phantom
                object_ = t.mask[data.slice_index]
                log.info("slice %d vs ground truth: T1 NRMSE %.4f, T2 NRMSE %.4f (object voxels)", data.slice_index,
                         map_nrmse(maps.t1_ms, t.t1_ms[data.slice_index], object_),
                         map_nrmse(maps.t2_ms, t.t2_ms[data.slice_index], object_))
            geometry = ImageGeometry.from_acquisition(data.acquisition_header, (space.x, space.y, space.z))
            images.extend(map_images(maps, geometry, series_base=1))
            images.append(coefficient_image(result.coefficients, result.basis.hash, geometry, data.slice_index,
                                            COEFFICIENT_SERIES, {"MRF_Method": settings.method}))

        for acq in raw.acquisitions():
            for data in gatherer.add(acq):
                process(data)
        for data in gatherer.finish():
            process(data)
    if not images:
        raise CliError(f"{args.scan} has no imaging readouts")
    group = write_images(args.out, images, args.group)
    print(f"wrote {args.out} (group {group!r}): {len(images)} images in {time.perf_counter() - started:.1f} s")
    return 0
