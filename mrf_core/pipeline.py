"""The MRF pipeline: a scan's header and acquisitions -> per-slice coefficient images and maps -> images.

The gadgets and `mrf reconstruct` are thin adapters over this module, with the settings of one table
(mrf_core.settings), so a scan gives the same maps through either:

    Reconstruction  scan settings (schedule from the header or a schedule file, index map), the temporal
                    basis (the network model's or the dictionary's), gather into slices, prewhitening and
                    the subspace reconstruction (mrf_core.recon), object mask   -> SliceCoefficients
    NetworkMapper   the TorchScript network (after a check of schedule and basis)  -> QuantitativeMaps
    DictionaryMapper dictionary matching in the coefficients' own subspace        -> QuantitativeMaps
                    (with a `b1_map`: each voxel in its B1 slice, mrf_core.mapping.b1_matching)
    Mapping         the mapper chain of the `mapper` setting: network with dictionary fallback (a reason
                    for each fallback), dictionary only, or none
    output_images   the ISMRMRD images a scanner stores: one series per map (series_base ...), and the
                    coefficient images (series COEFFICIENT_SERIES) when asked

In a Gadgetron chain the stages run in separate processes (gadgets.reconstruct, map_network,
map_dictionary, emit) and `mapper` is the chain's choice of nodes; `run_scan` runs them in one process.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import ismrmrd
import numpy as np
from threadpoolctl import threadpool_limits

from mrf_core.errors import MrfError
from mrf_core.io.map_images import ImageGeometry, coefficient_image, map_images
from mrf_core.io.rawio import IndexMap, ScanInfo, _user_string, validate_header
from mrf_core.mapping.maps import QuantitativeMaps, object_mask
from mrf_core.physics.sequence import FispSchedule, ScheduleError, load_schedule
from mrf_core.physics.temporal_basis import TemporalBasis
from mrf_core.recon.gather import GatherError, SliceData, SliceGatherer

if TYPE_CHECKING:
    from mrf_core.io.b1map import B1Map
    from mrf_core.physics.dictionary import Dictionary
    from mrf_core.recon.reconstruct import ReconResult, ReconSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

B1_MAP_AXIS = tuple(np.round(np.arange(0.6, 1.4001, 0.05), 2))  # a built dictionary's B1 axis for a B1 map
COEFFICIENT_SERIES = 10  # image_series_index of the coefficient images, in a chain and from the command line
WARNING_KEY = "MRF_Warning"  # image meta listing warnings about an image (e.g. why the network did not map it)


class PipelineError(MrfError):
    """Settings that do not fit the scan (a rank above the basis', an unusable model asked for)."""


def one_line(exc: BaseException) -> str:
    """An exception as one line: the message of an explained error, else its type and message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, MrfError | OSError) else f"{type(exc).__name__}: {text}"


def set_threads(n_threads: int) -> None:
    """Cap torch's intra-op threads in this process; 0 keeps torch's default."""
    if n_threads > 0:
        import torch

        torch.set_num_threads(n_threads)


# ---- the scan ----------------------------------------------------------------------------------------
def scan_info(header, settings) -> ScanInfo:
    """The validated header, with the `schedule_file` and `index_map` settings applied (the schedule file
    replaces the header's sequenceParameters, with a warning when they differ)."""
    if settings.schedule_file is not None:
        schedule = load_schedule(settings.schedule_file)
        try:
            stated = FispSchedule.from_ismrmrd(header)
        except (ScheduleError, AttributeError):
            stated = None
        if stated is not None and stated.hash != schedule.hash:
            log.warning("schedule_file %s (hash %s) replaces the header's schedule (hash %s)",
                        settings.schedule_file, schedule.hash, stated.hash)
        schedule.to_ismrmrd(header)
    index_map = IndexMap.from_string(settings.index_map) if settings.index_map else None
    info = validate_header(header, index_map, settings.traj_units)
    stated = _user_string(header, "MRF_slice_profile")  # the simulator's statement of its RF pulse
    if stated is not None and _canonical_profile(stated) != _canonical_profile(settings.slice_profile):
        log.warning("the scan's header states the slice profile %s (user parameter MRF_slice_profile), the setting "
                    "slice_profile is %s: maps from a dictionary or model of another profile are biased", stated,
                    settings.slice_profile)
    log.info("scan: schedule %s (%d TRs, hash %s), matrix %d, FOV %g mm, %s slices, %s channels, index map %s",
             info.schedule.name, info.schedule.n_timepoints, info.schedule.hash, info.matrix, info.fov_mm,
             info.n_slices or "?", info.n_channels or "?",
             info.index_map.to_string() if info.index_map_stated else "detected from the counters")
    return info


def _canonical_profile(text: str) -> str:
    """A slice-profile text as its canonical spec ('none' for the ideal profile); unparsable text as it is."""
    from mrf_core.physics.slice_profile import SliceProfile, SliceProfileError, spec_of

    try:
        return spec_of(SliceProfile.parse(text))
    except SliceProfileError:
        return text


def gathered(acquisitions: Iterable, info: ScanInfo, settings) -> Iterator[SliceData]:
    """Complete slices as they fill up, then what is left when the stream ends; a stream without imaging
    readouts is a GatherError."""
    gatherer = SliceGatherer(info, settings.max_missing_fraction)
    n_slices = 0
    for acquisition in acquisitions:
        for data in gatherer.add(acquisition):
            n_slices += 1
            yield data
    for data in gatherer.finish():
        n_slices += 1
        yield data
    if n_slices == 0:
        raise GatherError("the scan has no imaging acquisitions: nothing to reconstruct")


def prefetched(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """`items`, produced by a background thread up to `depth` ahead: the gatherer keeps reading a stream
    (slice k + 1's readouts) while the caller works on what it yielded (slice k's reconstruction), so a
    sender is not held up by the reconstruction. An exception in the producer is raised here, in order.
    The producer does numpy and Python work between socket reads; the reconstruction's numerical code
    releases the GIL. The thread starts at once, before the first item is asked for."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        results.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            results.put((done, None))
        except BaseException as exc:  # handed to the consumer, raised there
            results.put((done, exc))

    threading.Thread(target=produce, name="mrf-gather", daemon=True).start()

    def consume() -> Iterator[T]:
        try:
            while True:
                item, error = results.get()
                if error is not None:
                    raise error
                if item is done:
                    return
                yield item
        finally:
            stop.set()

    return consume()


def _fov_z_mm(header) -> float:
    try:
        return float(header.encoding[0].encodedSpace.fieldOfView_mm.z) or 1.0
    except (AttributeError, IndexError, TypeError):
        return 1.0


# ---- dictionary and model ----------------------------------------------------------------------------
def dictionary_for(schedule: FispSchedule, settings, progress: bool | None = None) -> Dictionary:
    """The dictionary of the settings for `schedule`: `dictionary_file` (checked against the schedule), or
    the grid built for it (or read from `dictionary_cache_dir`)."""
    from mrf_core.mapping.fitted_basis import WIDE_RANK
    from mrf_core.physics.dictionary import GRIDS, Dictionary, cached_dictionary, percent_grid
    from mrf_core.physics.slice_profile import SliceProfile

    profile = SliceProfile.parse(settings.slice_profile)
    b1_map = settings.b1_map
    if settings.dictionary_file is not None:
        start = time.perf_counter()
        dictionary = Dictionary.load(settings.dictionary_file, schedule=schedule, fingerprints=False)
        log.info("dictionary %s loaded in %.2f s: %d atoms, basis rank %d", settings.dictionary_file,
                 time.perf_counter() - start, dictionary.n_atoms, dictionary.basis.rank)
        if b1_map is not None and not dictionary.has_b1:
            raise PipelineError(f"b1_map is set but dictionary_file {settings.dictionary_file} has no B1 axis: build "
                                "one with a B1 axis (mrf dictionary build --b1 0.6 1.4 0.05), or leave "
                                "dictionary_file empty")
        stored = dictionary.slice_profile.spec if dictionary.slice_profile else "none"
        if stored != _canonical_profile(settings.slice_profile):
            raise PipelineError(f"dictionary_file {settings.dictionary_file} was built with slice profile {stored}, "
                                f"the setting slice_profile says {settings.slice_profile}: use the same for both")
        return dictionary
    b1_axis = np.asarray(settings.b1_values)
    if b1_map is not None and b1_axis.size < 2:
        b1_axis = np.asarray(B1_MAP_AXIS)
    grid = (percent_grid(settings.grid_step_pct, b1_axis=b1_axis) if settings.grid == "percent"
            else GRIDS[settings.grid](b1_axis=b1_axis))
    wide = min(WIDE_RANK, schedule.n_timepoints)  # a B1-map dictionary keeps a wide basis for fitted bases
    rank = settings.dictionary_rank if b1_map is None else max(settings.dictionary_rank, wide)
    return cached_dictionary(schedule, grid, settings.n_states, rank, settings.dictionary_cache_dir,
                             progress=progress, slice_profile=profile)


def load_network(settings, device: str):
    """(model, None), or (None, why it cannot be used): mapping code not installed, no file, not a valid
    archive. The settings' `model`, else the package's default model (with a `b1_map`, its B1-input one).
    Never raises: the caller falls back to the dictionary with the reason."""
    try:
        from mrf_core.mapping import default_model_path, load_model
    except ImportError as exc:
        return None, f"the network mapping code is not installed ({exc})"
    path = Path(settings.model) if settings.model is not None else Path(default_model_path(settings.b1_map is not None))
    if not path.is_file():
        return None, f"no model file at {path}"
    try:
        return load_model(path, device=device), None
    except Exception as exc:  # any failure to load means: fall back, with the reason
        return None, f"model {path} cannot be used: {one_line(exc)}"


def _model_basis(model, schedule: FispSchedule) -> TemporalBasis:
    model.check(schedule)
    if model.basis is None:
        raise PipelineError(f"model {model.path.name} maps time courses: it has no subspace basis")
    return model.basis


def recon_basis(settings, schedule: FispSchedule, dictionary: Dictionary | None = None) -> tuple[TemporalBasis, str]:
    """The basis to reconstruct in and where it came from ("model <file>" or "dictionary"), by the `basis`
    setting: the model's (used whole), the dictionary's (truncated to `rank`; with a `b1_map` its leading
    `dictionary_rank` components, the dictionary keeping a wide basis for the fitted basis), fitted (the
    dictionary's for a first pass, see fits_basis), or auto: with a `b1_map` as fitted, else the model's
    when it loads and was trained for this schedule, else the dictionary's. A network maps coefficients of
    another basis by converting them into its own (NetworkMapper). `dictionary`: the settings' dictionary
    for `schedule` when the caller already holds it."""
    if settings.basis == "model" or (settings.basis == "auto" and settings.b1_map is None):
        model, reason = load_network(settings, "cpu")
        if model is not None:
            try:
                if settings.basis == "auto":
                    check_model_inputs(model, settings)
                return _model_basis(model, schedule), f"model {model.path.name}"
            except MrfError as exc:
                reason = one_line(exc)
        if settings.basis == "model":
            raise PipelineError(f"basis = model, but the model cannot be used: {reason}")
        log.info("basis from the dictionary (the network model cannot be used: %s)", reason)
    basis = (dictionary or dictionary_for(schedule, settings)).basis
    if settings.b1_map is not None:
        basis = basis.truncated(min(settings.dictionary_rank, basis.rank))
    return basis, "dictionary"


def fits_basis(settings) -> bool:
    """Whether each slice is reconstructed twice, the second time in a basis fitted to its tissues
    (mrf_core.mapping.fitted_basis): with a b1_map and basis fitted or auto (recon_basis then starts from
    the dictionary's basis)."""
    if settings.basis == "fitted" and settings.b1_map is None:
        raise PipelineError("basis = fitted needs a b1_map (the fitted basis is made for B1-corrected matching): "
                            "give b1_map, or use basis auto or dictionary")
    return settings.b1_map is not None and settings.basis in ("auto", "fitted")


def check_model_inputs(model, settings) -> None:
    """PipelineError when a B1 map is given and the model was trained without a B1 input (its maps would
    ignore the map), or when the model was trained for another slice profile than the setting's: the
    dictionary maps such a scan instead."""
    from mrf_core.physics.slice_profile import spec_of

    if settings.b1_map is not None and not getattr(model, "b1_input", False):
        raise PipelineError(f"a B1 map is given (b1_map) but model {model.path.name} was trained without a B1 "
                            "input: the dictionary maps with the B1 map")
    trained = spec_of(getattr(model, "slice_profile", None))
    if trained != _canonical_profile(settings.slice_profile):
        raise PipelineError(f"model {model.path.name} was trained for slice profile {trained}, the setting "
                            f"slice_profile is {settings.slice_profile}: the dictionary maps with that profile")


def load_b1_map(settings) -> B1Map | None:
    """The `b1_map` setting's map (B1MapError when unreadable), None when no map is given."""
    if settings.b1_map is None:
        return None
    from mrf_core.io.b1map import load_b1_map as load

    b1_map = load(settings.b1_map)
    log.info("B1 map %s: %s voxels, B1 %.3g-%.3g, %s", settings.b1_map, "x".join(map(str, b1_map.values.shape)),
             b1_map.values.min(), b1_map.values.max(),
             "placed by its own geometry" if b1_map.affine is not None else "assumed in the scan's geometry")
    return b1_map


def slice_b1(b1_map: B1Map, geometry: ImageGeometry | None, mask: np.ndarray, slice_index: int) -> np.ndarray:
    """B1 of a slice's voxels (ny, nx) from the map; voxels the map does not reach get B1 = 1 (logged). A map
    that reaches none of the slice's object voxels is a B1MapError."""
    from mrf_core.io.b1map import B1MapError

    if geometry is None:
        raise B1MapError(f"slice {slice_index} has no geometry (position, directions, FOV): the B1 map cannot be "
                         "placed on it")
    b1 = b1_map.on_slice(geometry, mask.shape, slice_index)
    covered = np.isfinite(b1) & mask
    if mask.any() and not covered.any():
        raise B1MapError(f"B1 map {b1_map.source} does not overlap slice {slice_index} (slice centre at "
                         f"{', '.join(f'{v:.1f}' for v in geometry.position)} mm, normal "
                         f"{', '.join(f'{v:.2f}' for v in geometry.slice_dir)}): give a map that covers the "
                         "scanned slices")
    missing = int(np.count_nonzero(mask & ~covered))
    if missing:
        log.warning("slice %d: the B1 map misses %d of %d object voxels; they assume B1 = 1", slice_index,
                    missing, int(mask.sum()))
    return np.where(np.isfinite(b1), b1, 1.0)


def recon_settings(settings, basis_source: str) -> ReconSettings:
    """ReconSettings from the table's settings; `rank` applies to a dictionary basis only."""
    from mrf_core.recon.reconstruct import ReconSettings

    rank = settings.rank if basis_source == "dictionary" and settings.rank > 0 else None
    defaults = ReconSettings()
    return ReconSettings(
        method=settings.method, rank=rank, n_virtual_coils=settings.virtual_coils or None,
        coil_energy=settings.coil_energy,
        coil_method=settings.coil_method, nufft_backend=settings.nufft_backend,
        n_iterations=settings.iterations or None, llr_lambda=settings.llr_lambda, device=settings.device,
        n_threads=settings.threads or defaults.n_threads,
        psf_cache_dir=str(settings.psf_cache_dir) if settings.psf_cache_dir is not None else None,
    )


# ---- reconstruction ----------------------------------------------------------------------------------
@dataclass
class SliceCoefficients:
    """One reconstructed slice: coefficients (K, ny, nx) complex64 in `basis`, 0 outside the object mask
    (mappers leave all-zero voxels unmapped), where the slice is, and the reconstruction's record."""

    slice_index: int
    coefficients: np.ndarray
    basis: TemporalBasis
    geometry: ImageGeometry
    result: ReconResult
    schedule: FispSchedule | None = None  # the slice's (truncated when the scan stopped early)
    warnings: list[str] = field(default_factory=list)  # from gathering: missing time points, a truncated scan

    def image(self) -> ismrmrd.Image:
        """The coefficient image (series COEFFICIENT_SERIES), as the reconstruct gadget sends it."""
        meta = {"MRF_Method": self.result.method}
        if self.warnings:
            meta[WARNING_KEY] = [ascii_text(w) for w in self.warnings]
        return coefficient_image(self.coefficients, self.basis.hash, self.geometry, self.slice_index,
                                 COEFFICIENT_SERIES, meta)


class Reconstruction:
    """One scan's reconstruction: the header checked, the basis chosen; `slices(acquisitions)` yields each
    slice's SliceCoefficients as soon as its readouts are complete."""

    def __init__(self, header, settings, progress: bool | None = None):
        self.settings = settings
        self.progress = progress
        self.info = scan_info(header, settings)
        self.fitted = fits_basis(settings)
        self._fit_dictionaries: dict[str, Dictionary] = {}  # by schedule hash, loaded once for both passes
        self.basis, self.basis_source = recon_basis(settings, self.info.schedule, self._fit_dictionary(self.schedule))
        self.options = recon_settings(settings, self.basis_source)
        self.options.basis_of(self.basis)  # a rank above the basis' is an error before any readout is read
        if self.fitted:
            from mrf_core.mapping.fitted_basis import WIDE_RANK

            self.b1_map = load_b1_map(settings)
            dictionary = self._fit_dictionary(self.schedule)
            rank = self.options.basis_of(self.basis).rank
            if dictionary.basis.rank <= rank:
                log.warning("no basis is fitted to the slices: the dictionary's basis has rank %d, not more than the "
                            "reconstruction's %d (a dictionary_file for fitting needs a wider basis, e.g. mrf "
                            "dictionary build --rank %d)", dictionary.basis.rank, rank, WIDE_RANK)
                self.fitted = False
        self._truncated: dict[str, tuple[TemporalBasis, ReconSettings]] = {}
        self.fov_mm = (self.info.fov_mm, self.info.fov_mm, _fov_z_mm(header) / self.info.n_partitions)
        log.info("%s reconstruction in the basis of the %s (rank %d, hash %s)", self.options.method,
                 self.basis_source, self.options.rank or self.basis.rank, self.basis.hash)

    @property
    def schedule(self) -> FispSchedule:
        return self.info.schedule

    def basis_for(self, schedule: FispSchedule) -> tuple[TemporalBasis, ReconSettings]:
        """The basis and options of a slice's schedule: the scan's, or one made for a truncated schedule."""
        if schedule.hash == self.schedule.hash:
            return self.basis, self.options
        if schedule.hash not in self._truncated:
            basis, source = recon_basis(self.settings, schedule, self._fit_dictionary(schedule))
            self._truncated[schedule.hash] = basis, recon_settings(self.settings, source)
        return self._truncated[schedule.hash]

    def slices(self, acquisitions: Iterable) -> Iterator[SliceCoefficients]:
        from mrf_core.recon.reconstruct import reconstruct_slice, warm_up

        stream = prefetched(gathered(acquisitions, self.info, self.settings))
        warm_up(self.options)  # while the first readouts arrive
        for data in stream:
            basis, options = self.basis_for(data.schedule)
            geometry = (ImageGeometry.from_acquisition(data.acquisition_header, self.fov_mm)
                        if data.acquisition_header is not None else ImageGeometry(self.fov_mm))
            refit = self._refit(data, geometry) if self.fitted else None
            result = reconstruct_slice(data, basis, options, progress=self.progress, refit=refit)
            coefficients = self._masked(result.coefficients, result.time_average)
            timings = ", ".join(f"{k} {v:.2f}" for k, v in result.timings_s.items())
            log.info("slice %d (%d readouts, %d coils): %s s", data.slice_index, data.n_readouts, data.n_coils,
                     timings)
            for note in result.notes:
                log.info("slice %d: %s", data.slice_index, note)
            yield SliceCoefficients(data.slice_index, coefficients, result.basis, geometry, result, data.schedule,
                                    list(data.warnings))

    def _fit_dictionary(self, schedule: FispSchedule) -> Dictionary | None:
        """The dictionary of a schedule when slices are fitted (None otherwise), loaded once."""
        if self.fitted and schedule.hash not in self._fit_dictionaries:
            self._fit_dictionaries[schedule.hash] = dictionary_for(schedule, self.settings)
        return self._fit_dictionaries.get(schedule.hash)

    def _masked(self, coefficients: np.ndarray, time_average: np.ndarray) -> np.ndarray:
        """Coefficients set to 0 outside the object mask (mask_fraction; 0: unchanged)."""
        if self.settings.mask_fraction <= 0:
            return coefficients
        mask = object_mask(time_average, self.settings.mask_fraction)
        return np.where(mask[None], coefficients, 0).astype(np.complex64)

    def _refit(self, data: SliceData, geometry: ImageGeometry):
        """The slice's refit (reconstruct_slice): the basis fitted to its first pass's tissues at the B1 map."""
        from mrf_core.mapping.fitted_basis import fit_basis

        def refit(coefficients: np.ndarray, basis: TemporalBasis, time_average: np.ndarray) -> TemporalBasis | None:
            x = np.moveaxis(self._masked(coefficients, time_average), 0, -1)
            mask = object_voxels(x)
            b1 = slice_b1(self.b1_map, geometry, mask, data.slice_index)
            fitted = fit_basis(self._fit_dictionary(data.schedule), x[mask], basis, b1[mask])
            if fitted is None:
                log.warning("slice %d: no basis fitted (%d voxels matched): kept the dictionary's",
                            data.slice_index, int(mask.sum()))
            return fitted

        return refit


# ---- mapping -----------------------------------------------------------------------------------------
def object_voxels(coefficients: np.ndarray) -> np.ndarray:
    """Voxels of coefficients (ny, nx, K) worth mapping: finite and not all zero."""
    return np.isfinite(coefficients).all(axis=-1) & (np.abs(coefficients) > 0).any(axis=-1)


class _Scattered:
    """A mapper's per-voxel result for the masked voxels, spread over the whole slice (NaN elsewhere)."""

    def __init__(self, result, mask: np.ndarray):
        def spread(values, fill):
            full = np.full(mask.shape, fill, dtype=np.asarray(values).dtype)
            full[mask] = np.asarray(values).reshape(-1)
            return full

        self.t1_ms, self.t2_ms = spread(result.t1_ms, np.nan), spread(result.t2_ms, np.nan)
        self.b1 = spread(result.b1, np.nan)
        self.pd, self.score = spread(result.pd, 0), spread(result.score, 0)


def _warn_clamped(slice_index: int, n_outside: int, covered: str, lo: float, hi: float) -> None:
    """The warning for B1 map values a mapper clamped to the B1 it covers (mapping.b1_matching.clamp_b1)."""
    if n_outside:
        log.warning("slice %d: B1 of %d voxels lies outside %s, %g-%g (clamped)", slice_index, n_outside, covered,
                    lo, hi)


class NetworkMapper:
    """The network model of the settings. Calling it maps a slice or raises with the reason it cannot
    (`unusable` says so up front when the model did not load)."""

    name = "network"

    def __init__(self, settings):
        self.model, self.unusable = load_network(settings, settings.device)
        self._checked: str | None = None
        if self.model is not None:
            try:
                check_model_inputs(self.model, settings)
            except PipelineError as exc:
                self.model, self.unusable = None, str(exc)
        self.b1_map = load_b1_map(settings) if getattr(self.model, "b1_input", False) else None

    def __call__(self, coefficients: np.ndarray, basis: TemporalBasis, schedule: FispSchedule,
                 slice_index: int, geometry: ImageGeometry | None = None) -> QuantitativeMaps:
        if self.model is None:
            raise PipelineError(self.unusable)
        if self._checked != schedule.hash:
            _model_basis(self.model, schedule)  # ModelMismatchError explains another schedule
            self._checked = schedule.hash
        x = np.moveaxis(coefficients, 0, -1)
        mask = object_voxels(x)
        b1_map = getattr(self, "b1_map", None)
        # numpy's BLAS work here is small (the basis conversion, the B1 map's resampling); woken, its threads
        # spin beside torch's on the same cores afterwards (measured: network mapping up to 2x slower)
        with threadpool_limits(limits=1, user_api="blas"):
            if b1_map is not None:  # a model with a B1 input
                from mrf_core.mapping.b1_matching import clamp_b1

                lo, hi = getattr(self.model, "b1_range", None) or (-np.inf, np.inf)
                b1, outside = clamp_b1(slice_b1(b1_map, geometry, mask, slice_index)[mask], lo, hi)
                _warn_clamped(slice_index, outside, f"the range model {self.model.path.name} was trained on", lo, hi)
                result = self.model.map_coefficients(x[mask], basis, b1=b1)
                result.b1, correction = b1.astype(np.float32), "map"
            else:
                result = self.model.map_coefficients(x[mask], basis)  # converts from `basis` when it differs
                correction = "estimated" if "b1" in getattr(self.model, "output_names", ()) else "none"
        profile = getattr(self.model, "slice_profile", None)
        return QuantitativeMaps.from_match(_Scattered(result, mask), mask.shape, slice_index, self.name, mask,
                                           b1_correction=correction, b1_source=f"map {Path(b1_map.source).name}"
                                           if b1_map is not None else "", slice_profile=profile.describe()
                                           if profile is not None else "")


class DictionaryMapper:
    """Dictionary matching with the settings' dictionary, made on first use for the scan's schedule, in
    the coefficients' own subspace (Dictionary.in_basis: atoms normalised in the data's subspace)."""

    name = "dictionary"

    def __init__(self, settings):
        self.settings = settings
        self._dictionary: Dictionary | None = None
        self._in_basis: dict[str, Dictionary] = {}
        self.b1_map = load_b1_map(settings)

    def dictionary(self, schedule: FispSchedule, basis: TemporalBasis) -> Dictionary:
        if self._dictionary is None:
            self._dictionary = dictionary_for(schedule, self.settings)
        if basis.hash not in self._in_basis:  # one kept: a fitted basis is each slice's own
            self._in_basis = {basis.hash: self._dictionary.in_basis(basis)}
        return self._in_basis[basis.hash]

    def __call__(self, coefficients: np.ndarray, basis: TemporalBasis, schedule: FispSchedule,
                 slice_index: int, geometry: ImageGeometry | None = None) -> QuantitativeMaps:
        from mrf_core.mapping.matching import match

        dictionary = self.dictionary(schedule, basis)
        if dictionary.basis.rank != coefficients.shape[0]:
            raise PipelineError(f"coefficients have {coefficients.shape[0]} components, their basis "
                                f"{basis.hash} has rank {dictionary.basis.rank}")
        x = np.moveaxis(coefficients, 0, -1)
        mask = object_voxels(x)
        profile = dictionary.slice_profile.describe() if dictionary.slice_profile else ""
        if self.b1_map is not None:
            from mrf_core.mapping.b1_matching import match_at_b1

            b1 = slice_b1(self.b1_map, geometry, mask, slice_index)
            result, n_clamped = match_at_b1(dictionary, x[mask], b1[mask], search=self.settings.search)
            _warn_clamped(slice_index, n_clamped, "the dictionary's B1 axis", dictionary.grid.b1_axis[0],
                          dictionary.grid.b1_axis[-1])
            return QuantitativeMaps.from_match(_Scattered(result, mask), mask.shape, slice_index, self.name, mask,
                                               b1_correction="map", b1_source=f"map {Path(self.b1_map.source).name}",
                                               slice_profile=profile)
        result = match(dictionary, x, mask=mask, search=self.settings.search, device="cpu")
        if not dictionary.has_b1:  # one B1 value is an assumption, not an estimate: no B1 map
            result.b1 = np.full_like(result.b1, np.nan)
        return QuantitativeMaps.from_match(result, mask.shape, slice_index, self.name, mask,
                                           b1_correction="estimated" if dictionary.has_b1 else "none",
                                           slice_profile=profile)


MAPPER_CHAINS = {"network": (NetworkMapper, DictionaryMapper), "dictionary": (DictionaryMapper,), "none": ()}


@dataclass
class SliceOutput:
    """A slice through the whole pipeline: its coefficients, its maps (None with mapper none) and the
    warnings collected on the way (e.g. why the network did not map it)."""

    coefficients: SliceCoefficients
    maps: QuantitativeMaps | None
    warnings: list[str] = field(default_factory=list)


def map_slice(mapper, coefficients: np.ndarray, basis: TemporalBasis, schedule: FispSchedule,
              slice_index: int, geometry: ImageGeometry | None = None) -> QuantitativeMaps:
    """One mapper on one slice, timed in the log (the in-process chain and the mapping gadgets alike);
    `geometry` places a B1 map on the slice."""
    started = time.perf_counter()
    maps = mapper(coefficients, basis, schedule, slice_index, geometry=geometry)
    log.info("slice %d: %s mapping %.2f s, %d voxels", slice_index, mapper.name, time.perf_counter() - started,
             int(maps.mask.sum()))
    return maps


def fallback_warning(mapper, exc: BaseException) -> str:
    """The warning a slice carries when `mapper` could not map it and a later one takes over (its
    traceback goes to the debug log)."""
    log.debug("%s mapping failed", mapper.name, exc_info=exc)
    return f"{mapper.name} mapping not used: {one_line(exc)}"


class Mapping:
    """The mapper chain of the `mapper` setting, in one process: each mapper in turn until one maps the
    slice; a mapper that cannot is logged with its reason and the next one tries. The last mapper's
    failure is the slice's error."""

    def __init__(self, settings):
        self.mappers = [make(settings) for make in MAPPER_CHAINS[settings.mapper]]

    def __call__(self, slice_: SliceCoefficients, schedule: FispSchedule) -> SliceOutput:
        warnings: list[str] = list(slice_.warnings)
        for position, mapper in enumerate(self.mappers):
            try:
                maps = map_slice(mapper, slice_.coefficients, slice_.basis, schedule, slice_.slice_index,
                                 slice_.geometry)
            except Exception as exc:
                if position == len(self.mappers) - 1:
                    raise
                warnings.append(fallback_warning(mapper, exc))
                log.warning("slice %d: %s; the %s mapper takes over", slice_.slice_index, warnings[-1],
                            self.mappers[position + 1].name)
                continue
            return SliceOutput(slice_, maps, warnings)
        return SliceOutput(slice_, None, warnings)


def run_scan(header, acquisitions: Iterable, settings, progress: bool | None = None) -> Iterator[SliceOutput]:
    """The whole pipeline in this process: each slice reconstructed and mapped as its readouts complete."""
    set_threads(settings.threads)
    reconstruction = Reconstruction(header, settings, progress)
    mapping = Mapping(settings)
    for slice_ in reconstruction.slices(acquisitions):
        yield mapping(slice_, slice_.schedule or reconstruction.schedule)


# ---- output ------------------------------------------------------------------------------------------
def ascii_text(text: str) -> str:
    """Image meta is ASCII only."""
    return text.encode("ascii", errors="replace").decode("ascii")


def scanner_images(maps: QuantitativeMaps, geometry: ImageGeometry, warnings: list[str], settings
                   ) -> list[ismrmrd.Image]:
    """The map images of one slice as the output settings ask (series, ushort, windows, which maps)."""
    windows = {key: window for key, window in (("t1_ms", settings.t1_window), ("t2_ms", settings.t2_window))
               if window is not None}
    extra = {WARNING_KEY: [ascii_text(w) for w in warnings]} if warnings else None
    images = map_images(maps, geometry, series_base=settings.series_base, as_ushort=settings.ushort,
                        extra_meta=extra, windows=windows)
    return [image for image, key in zip(images, maps.arrays(), strict=True) if key in settings.maps]


def output_images(output: SliceOutput, settings) -> list[ismrmrd.Image]:
    """Everything a slice sends to the scanner: its map images, and its coefficient image when
    `coefficient_images` is set or when nothing mapped it."""
    images = []
    if output.maps is not None:
        images = scanner_images(output.maps, output.coefficients.geometry, output.warnings, settings)
    if settings.coefficient_images or output.maps is None:
        images.append(output.coefficients.image())
    return images
