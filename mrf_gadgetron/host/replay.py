"""Replay a raw ISMRMRD file through a stream configuration without Gadgetron, into a map file.

The file's header and acquisitions (noise scans included, in file order, unvalidated: checking them is
the gadgets' job, as on a scanner) go through the configuration's external stages (mrf_gadgetron.host.chain);
the images that come back are written as `gadgetron_ismrmrd_client` writes them (`<group>/image_<series>`,
mrf_core.io.map_images.write_images). Stage warnings come back through `on_text`, failures as ReplayError.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import ismrmrd

from mrf_core.errors import MrfError
from mrf_core.io.rawio import acquisition_from_row
from mrf_gadgetron.host.chain import ChainError, ChainOptions, ChainReport, run_chain
from mrf_gadgetron.host.stream_config import StreamConfig

_BLOCK = 64  # acquisitions read from HDF5 at a time


class ReplayError(MrfError):
    """The replay failed; the message is the reason (a stage's own words where it left any)."""


@dataclass(frozen=True)
class ReplayResult:
    """What a replay wrote: the file, its image group, images per series, warnings, timings."""

    path: Path
    group: str
    n_images: int
    series: dict[int, int]
    warnings: list[str]
    chain: ChainReport
    read_s: float  # reading the raw file (overlaps the chain)
    write_s: float


class RawSource:
    """A raw file's header and acquisitions as a client sends them (ismrmrd layout, read in blocks)."""

    def __init__(self, path: str | Path, dataset: str = "dataset"):
        self.path = Path(path)
        self.read_s = 0.0
        if not self.path.is_file():
            raise ReplayError(f"raw file {self.path} does not exist")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise ReplayError(f"cannot open raw file {self.path}: {exc}") from exc
        group = self._file.get(dataset)
        if not isinstance(group, h5py.Group) or "xml" not in group:
            self._file.close()
            raise ReplayError(f"{self.path} has no ISMRMRD dataset {dataset!r} with a header")
        try:
            self.header = ismrmrd.xsd.CreateFromDocument(group["xml"][0])
        except Exception as exc:  # xsdata raises several kinds for malformed XML
            self._file.close()
            raise ReplayError(f"{self.path}: the ISMRMRD header does not parse: {exc}") from exc
        self._data = group["data"] if "data" in group else None

    @property
    def n_acquisitions(self) -> int:
        return 0 if self._data is None else int(self._data.shape[0])

    def acquisitions(self) -> Iterator[ismrmrd.Acquisition]:
        for start in range(0, self.n_acquisitions, _BLOCK):
            t0 = time.perf_counter()
            rows = self._data[start:start + _BLOCK]
            block = [acquisition_from_row(row) for row in rows]
            self.read_s += time.perf_counter() - t0
            yield from block

    def close(self) -> None:
        self._file.close()


def replay(raw_path: str | Path, config: StreamConfig, out_path: str | Path, group: str | None = None,
           on_text: Callable[[str], None] | None = None, options: ChainOptions | None = None,
           force: bool = False) -> ReplayResult:
    """Run `config` on the raw file and write the images to `out_path` (whole or not at all) as a new
    group (an existing group of that name only with force: map_images.write_images)."""
    from mrf_core.io.map_images import write_images

    source = RawSource(raw_path)
    images: list[ismrmrd.Image] = []
    warnings: list[str] = []

    def warn(stage: str, level: str, message: str) -> None:
        text = f"[{stage}] {level}: {message}"
        warnings.append(text)
        if on_text is not None:
            on_text(text)

    try:
        report = run_chain(config, source.header, source.acquisitions(), images.append, warn, options or ChainOptions())
    except ChainError as exc:
        raise ReplayError(str(exc)) from exc
    finally:
        source.close()
    if not images:
        raise ReplayError(f"{config.source} returned no images for {raw_path} ({report.dropped} outputs dropped: "
                          f"no writer accepted them)")
    t0 = time.perf_counter()
    group = write_images(out_path, images, group, force)
    series: dict[int, int] = {}
    for image in images:
        series[image.image_series_index] = series.get(image.image_series_index, 0) + 1
    return ReplayResult(Path(out_path), group, len(images), series, warnings, report, source.read_s,
                        time.perf_counter() - t0)
