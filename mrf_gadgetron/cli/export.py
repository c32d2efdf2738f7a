"""`mrf export`: the maps of a map file as NIfTI and/or DICOM, for viewers (mrf_core.io.export)."""

from __future__ import annotations

from mrf_gadgetron.cli import HelpFormatter


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write the maps of a map file as NIfTI (--nifti DIR) and/or DICOM (--dicom DIR) for viewers",
        description="Write the T1, T2, PD, ... maps of a map file (ISMRMRD images as `mrf reconstruct`, `mrf replay` "
        "or gadgetron_ismrmrd_client write them) for ITK-SNAP, 3D Slicer, Horos or a PACS: --nifti DIR writes one "
        "<map>.nii.gz per map (float32, RAS affine), --dicom DIR one MR image per map and slice (<map>/slice_N.dcm, "
        "uint16 with rescale slope and real-world value mapping). Positions and directions come from the images; "
        "units and display windows are carried. NIfTI needs the 'nifti' extra, DICOM the 'dicom' extra.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("maps", metavar="MAPS.h5", help="map file")
    p.add_argument("--nifti", default=None, metavar="DIR", help="write NIfTI files into DIR")
    p.add_argument("--dicom", default=None, metavar="DIR", help="write DICOM files into DIR")
    p.add_argument("--group", default=None, help="image group in the map file (default: the newest)")
    p.add_argument("--patient-name", default="", help="DICOM PatientName")
    p.add_argument("--patient-id", default="", help="DICOM PatientID")
    p.set_defaults(func=run)


def run(args) -> int:
    from mrf_core.io.export import export_dicom, export_nifti
    from mrf_core.io.map_images import read_map_file
    from mrf_gadgetron.cli import CliError

    if not (args.nifti or args.dicom):
        raise CliError("nothing to export to: give --nifti DIR and/or --dicom DIR")
    map_file = read_map_file(args.maps, args.group)
    if args.nifti:
        paths = export_nifti(map_file, args.nifti)
        print(f"wrote {len(paths)} NIfTI files to {args.nifti}: {', '.join(p.name for p in paths)}")
    if args.dicom:
        paths = export_dicom(map_file, args.dicom, args.patient_name, args.patient_id)
        print(f"wrote {len(paths)} DICOM files to {args.dicom} ({len(map_file.maps)} series of "
              f"{len(map_file.slices)} slice(s))")
    return 0
