"""`mrf reconstruct`: raw ISMRMRD scan -> maps file, the whole pipeline (mrf_core.pipeline) in one process.

Its flags are the settings table (mrf_core.settings), under the names of the gadget properties, with the
same defaults; the mapper is the default chain's (network with dictionary fallback). It writes the images
the default stream configuration sends (series 1-5: T1 ms, T2 ms, PD, B1 when estimated, match quality;
with --coefficient-images also series 10, the complex coefficient images) in the layout of
`gadgetron_ismrmrd_client`, so `mrf reconstruct scan.h5` and `mrf replay scan.h5 -c mrf_default.xml` give
the same maps.
"""

from __future__ import annotations

import argparse
import logging
import time
from types import SimpleNamespace

from mrf_core.settings import SETTINGS, boolean

log = logging.getLogger("mrf.reconstruct")


def _argument_type(setting):
    def parse(text: str):
        try:
            return setting.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = setting.name
    return parse


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting of the table: --name-with-dashes VALUE, its default shown as in the table."""
    group = parser.add_argument_group("settings (the gadget properties of the same names, same defaults)")
    for setting in SETTINGS:
        shown = setting.default if setting.default != "" else "empty"
        extra = {"nargs": "?", "const": "true"} if setting.parse is boolean else {}
        group.add_argument(setting.flag, dest=setting.name, default=setting.default, type=_argument_type(setting),
                           metavar="VALUE", help=f"{setting.help} (default: {shown})".replace("%", "%%"), **extra)


def settings_of(args: argparse.Namespace) -> SimpleNamespace:
    """The parsed settings of the command line, one attribute per setting."""
    return SimpleNamespace(**{s.name: getattr(args, s.name) for s in SETTINGS})


def register(sub) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="reconstruct a spiral MRF raw file into T1/T2/PD maps (the default chain, in one process)",
        description="Gather, reconstruct (NUFFT low-rank subspace), map (network with dictionary fallback by "
        "default) and write an ISMRMRD maps file in the gadgetron_ismrmrd_client layout: series 1-5 T1, T2, "
        "PD, B1 (when estimated), match quality; series 10 the complex coefficient images with "
        "--coefficient-images. The same images as `mrf replay SCAN -c mrf_default.xml`.",
    )
    p.add_argument("scan", help="ISMRMRD raw file (e.g. from mrf simulate)")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="maps file to write or add a group to")
    p.add_argument("--dataset", default="dataset", help="HDF5 group of the ISMRMRD dataset (default: dataset)")
    p.add_argument("-G", "--group", default=None, help="group name in the maps file (default: date and time)")
    p.add_argument("--force", action="store_true", help="replace the group of the same name in the maps file "
                   "(an existing maps file otherwise gets a new group, as gadgetron_ismrmrd_client appends)")
    add_settings_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from mrf_core.io.atomic import check_writable
    from mrf_core.io.map_images import check_new_group, write_images
    from mrf_core.io.rawio import MrfRawFile
    from mrf_core.mapping.maps import map_nrmse
    from mrf_core.pipeline import output_images, run_scan

    check_writable(args.out)
    check_new_group(args.out, args.group, args.force)
    settings = settings_of(args)
    started = time.perf_counter()
    images = []
    with MrfRawFile(args.scan, dataset=args.dataset) as raw:
        truth = raw.truth()
        for output in run_scan(raw.header, raw.acquisitions(), settings):
            s = output.coefficients.slice_index
            if truth is not None and output.maps is not None:
                t = truth.phantom
                log.info("slice %d vs ground truth: T1 NRMSE %.4f, T2 NRMSE %.4f (object voxels)", s,
                         map_nrmse(output.maps.t1_ms, t.t1_ms[s], t.mask[s]),
                         map_nrmse(output.maps.t2_ms, t.t2_ms[s], t.mask[s]))
            images.extend(output_images(output, settings))
    group = write_images(args.out, images, args.group, args.force)
    print(f"wrote {args.out} (group {group!r}): {len(images)} images in {time.perf_counter() - started:.1f} s")
    return 0
