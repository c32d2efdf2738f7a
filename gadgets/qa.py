"""Gadget qa: phantom QA on the scanner. Map images pass through untouched; at the end of the stream each
slice's maps are analysed exactly as `mrf qa` does (they are written to a temporary map file and read by
mrf_core.qa.analysis.run_qa), and the QA summary figure (verdict, per-sphere errors against the
tolerances) is added as one more image series, so the technologist sees pass/fail beside the maps.

The figure is an RGB image (3 ushort channels 0-255, IMTYPE_RGB) or, with `figure=grey`, one ushort
channel (0-4095). When QA cannot run (no phantom in the slice, wrong settings), the figure says why
instead, and a warning is logged: the maps still reach the scanner. Optionally the result is appended to a
trend store and the HTML report written on the server.
"""

from __future__ import annotations

import datetime
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import ismrmrd
import numpy as np

from gadgets.properties import read_properties
from gadgets.runtime import run_gadget
from gadgets.stage_images import geometry_of, role_of, set_meta
from mrf_core.io.map_images import ImageGeometry, client_group_name, image_meta, write_images
from mrf_core.settings import Setting, choice, integer, number, optional_number, optional_path

log = logging.getLogger(__name__)

NAME = "qa"
QUANTITATIVE_ROLE = "Quantitative"
USHORT_GREY_MAX = 4095
NIST_FIELDS_T = (1.5, 3.0)
# ismrmrd.IMTYPE_RGB (6, ISMRMRD_IMTYPE_RGB in C++) came with ismrmrd-python 1.15; Gadgetron's image has 1.14
IMTYPE_RGB = getattr(ismrmrd, "IMTYPE_RGB", 6)
PROPERTIES = (
    Setting("array", "auto", choice("auto", "t1", "t2"),
            "NIST plate: t1 (NiCl2), t2 (MnCl2), or auto (the plate the spheres agree with)"),
    Setting("field", "auto", choice("auto", "1.5", "3"),
            "field strength in T for the reference (auto: the header's systemFieldStrength_T)"),
    Setting("batch", "1", integer(1, 2), "phantom batch (serial <= 41: 1)"),
    Setting("temperature", "", optional_number(0.0, 40.0),
            "phantom temperature in C (empty: not known; the reference values are for 20 C)"),
    Setting("tolerance_t1", "5", number(0.0), "per-sphere |T1 error| limit in %"),
    Setting("tolerance_t2", "5", number(0.0), "per-sphere |T2 error| limit in %"),
    Setting("min_r2", "0.99", number(0.0, 1.0), "least R^2 of T1 and of T2 over the counted spheres"),
    Setting("series_index", "99", integer(0, 65000), "image_series_index of the QA figure"),
    Setting("figure", "rgb", choice("rgb", "grey"), "QA figure as an RGB or a grey image"),
    Setting("store", "", optional_path, "SQLite trend store to append each result to (empty: none)"),
    Setting("report_dir", "", optional_path, "folder for the HTML report and results.json (empty: none)"),
)


def field_of(header, setting: str) -> float:
    """The field strength for the reference: the property, or the header's rounded to 1.5 or 3 T."""
    if setting != "auto":
        return float(setting)
    system = getattr(header, "acquisitionSystemInformation", None)
    value = getattr(system, "systemFieldStrength_T", None) if system is not None else None
    if value:
        nearest = min(NIST_FIELDS_T, key=lambda f: abs(f - float(value)))
        if abs(nearest - float(value)) <= 0.2:
            return nearest
    raise ValueError(f"{NAME}: the header's field strength ({value}) is not 1.5 or 3 T; set the 'field' property")


def figure_image(rgb: np.ndarray, like: ImageGeometry, slice_index: int, settings, comment: str) -> ismrmrd.Image:
    """An RGB (or grey) uint8 figure as an ismrmrd.Image with the slice's position and square pixels."""
    height, width = rgb.shape[:2]
    if settings.figure == "rgb":
        data = rgb.transpose(2, 0, 1).astype(np.uint16)[:, None]  # (3 channels, z, y, x), 0-255
        image_type = IMTYPE_RGB
    else:
        grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        data = np.rint(grey * (USHORT_GREY_MAX / 255.0)).astype(np.uint16)[None, None]
        image_type = ismrmrd.IMTYPE_MAGNITUDE
    image = ismrmrd.Image.from_array(data, transpose=False)
    head = image.getHead()
    ImageGeometry(
        (like.fov_mm[0], like.fov_mm[0] * height / width, like.fov_mm[2]), like.position, like.read_dir,
        like.phase_dir, like.slice_dir, like.patient_table_position,
    ).apply(head)
    head.image_series_index = settings.series_index
    head.image_index = slice_index + 1
    head.slice = slice_index
    head.image_type = image_type
    image.setHead(head)
    top = USHORT_GREY_MAX if settings.figure == "grey" else 255
    ascii_comment = comment.encode("ascii", errors="replace").decode("ascii")[:200]
    return set_meta(image, {
        "DataRole": "QAFigure", "GADGETRON_DataRole": "QA", "GADGETRON_SeqDescription": "_MRF_QA",
        "GADGETRON_ImageComment": ascii_comment, "GADGETRON_WindowCenter": f"{top / 2:g}",
        "GADGETRON_WindowWidth": f"{top:g}", "MRF_QAVerdict": ascii_comment.split(":")[0],
    })


def message_rgb(title: str, text: str) -> np.ndarray:
    """A figure that says why QA did not run, as uint8 RGB."""
    import textwrap

    from mrf_core.plotting import new_figure
    from mrf_core.qa.report import FAIL_COLOUR

    fig = new_figure(figsize=(8, 6), dpi=100)
    fig.text(0.5, 0.85, title, ha="center", fontsize=20, fontweight="bold", color=FAIL_COLOUR)
    fig.text(0.06, 0.7, textwrap.fill(text, 70), ha="left", va="top", fontsize=12)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    return rgb


def analyse(images: list[ismrmrd.Image], header, settings, workdir: Path) -> list[ismrmrd.Image]:
    """QA of every slice of the collected map images: one figure image per slice."""
    from mrf_core.qa import QAError
    from mrf_core.qa.analysis import QASettings, run_qa
    from mrf_core.qa.metrics import Tolerances, format_r2
    from mrf_core.qa.report import summary_rgb, write_report
    from mrf_core.qa.trends import TrendStore

    group = client_group_name()
    path = workdir / "maps.h5"
    write_images(path, images, group=group)
    field_t = field_of(header, settings.field)
    tolerances = Tolerances(settings.tolerance_t1, settings.tolerance_t2, settings.min_r2)
    geometries = {im.getHead().slice: geometry_of(im) for im in images}
    figures = []
    for slice_index in sorted(geometries):
        qa_settings = QASettings(tolerances=tolerances, slice_index=slice_index)
        try:
            result = run_qa(path, settings.array, field_t, settings.batch, settings.temperature, None, qa_settings)
        except QAError as exc:
            log.warning("%s: slice %d: phantom QA not possible: %s", NAME, slice_index, exc)
            figures.append(figure_image(message_rgb("QA NOT POSSIBLE", str(exc)), geometries[slice_index],
                                        slice_index, settings, f"QA NOT POSSIBLE: {exc}"))
            continue
        verdict = "PASS" if result.passed else "FAIL"
        metrics = result.evaluation.metrics
        comment = (f"{verdict}: NIST {result.reference.array} R2 T1 {format_r2(metrics['t1_ms'].r2)} "
                   f"T2 {format_r2(metrics['t2_ms'].r2)}")
        log.info("%s: slice %d: %s; %s", NAME, slice_index, comment, "; ".join(result.evaluation.failures))
        if settings.report_dir is not None:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            write_report(result, settings.report_dir / f"qa-{stamp}-slice{slice_index}")
        if settings.store is not None:
            with TrendStore(settings.store) as store:
                store.add(result, datetime.datetime.now().replace(microsecond=0))
        figures.append(figure_image(summary_rgb(result), geometries[slice_index], slice_index, settings, comment))
    return figures


def with_qa(items: Iterable, header, settings) -> Iterator:
    """The stage: every item passes on; the map images are kept, and the QA figures follow at the end."""
    collected = []
    for item in items:
        if role_of(item) == QUANTITATIVE_ROLE and image_meta(item).get("MRF_Quantity") is not None:
            collected.append(item)
        yield item
    if not collected:
        log.warning("%s: the stream held no map images: no phantom QA", NAME)
        return
    with tempfile.TemporaryDirectory(prefix="mrf-qa-") as workdir:
        yield from analyse(collected, header, settings, Path(workdir))


def qa(connection) -> None:
    """Gadgetron target: map images in and out, plus one QA figure image per slice."""

    def body() -> None:
        settings = read_properties(connection.config, PROPERTIES, NAME)
        for item in with_qa(connection, connection.header, settings):
            connection.send(item)

    run_gadget(NAME, connection, body)
