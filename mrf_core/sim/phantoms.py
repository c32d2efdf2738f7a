"""Digital phantoms with known T1, T2, PD and B1: the ISMRM/NIST system phantom, a brain, user maps.

Every phantom is a `Phantom`: maps of shape (n_slices, matrix, matrix) on a square FOV, 0 outside the
object (pd == 0 there), plus an integer label map (NIST: sphere number 1..14; brain: tissue class)
with names. Pixel (row i, column j) sits at x = (j - N//2) * fov/N, y = (i - N//2) * fov/N mm.

Placement (`Placement`): the object is shifted (mm), rotated (degrees, turning +x towards +y) and
scaled in plane before it is sampled on the grid, so QA sees phantoms where a technologist puts them.
A B1 field, when asked for, is fixed to the scanner (it does not move with the object) and quantised
to B1_STEP = 0.005, finer than any B1 map or dictionary grid, so that voxels share B1 values and the EPG
simulates them on its one-rotation-per-TR path.

NIST system phantom (Stupic et al., MRM 86:1194, 2021): a 200 mm sphere; the T1 (NiCl2) and T2 (MnCl2)
arrays each hold 14 spheres of 15 mm inner diameter, 10 on a 50 mm-radius ring and 4 on a 28 mm
ring, imaged coronally through the sphere centres. Here sphere n = 1..10 sits on the ring at angle
-90 + 36 (n - 1) deg (sphere 1 at the top of a displayed image, numbering clockwise), spheres 11..14
on the inner ring at -45 + 90 (n - 11) deg. The spheres sit in a signal-free plate (radius
NIST_PLATE_RADIUS_MM, an approximation) inside the bulk water fill (T1/T2 NIST_FILL_T1_MS/T2_MS, also
approximate, PD 1). Reference T1/T2 at 20 C per field (1.5 T, 3 T) and batch (1: serial <= 0041, 2:
>= 0042) come from the shipped table data/nist_system_phantom_reference.csv.

Brain: ellipses for scalp fat, skull (no signal), CSF, cortex, white matter, ventricles, deep grey
matter and a lesion, with literature-typical relaxation times at 1.5 T or 3 T and a smooth random
texture (a few %) so that no two voxels share a value and truth is never a dictionary atom.

User maps (`load_maps`): .npz (t1_ms, t2_ms, pd[, b1][, labels]); .npy stacking T1, T2, PD[, B1] on
the first axis, (3|4, [slices,] ny, nx); NIfTI (.nii, .nii.gz; needs the `nifti` extra) with the maps
on the 4th axis (nx, ny, nz, 3|4). Maps are resampled onto the requested grid (linear inside the
object, never mixing in the outside).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import ndimage

from mrf_core.errors import MrfError

B1_STEP = 0.005
NIST_ARRAYS = ("NiCl2", "MnCl2")
NIST_SPHERE_RADIUS_MM = 7.5
NIST_RING_RADIUS_MM = 50.0
NIST_INNER_RING_RADIUS_MM = 28.0
NIST_OUTER_RADIUS_MM = 100.0
NIST_PLATE_RADIUS_MM = 85.0
NIST_FILL_T1_MS = 4000.0
NIST_FILL_T2_MS = 2000.0
NIST_FILL_LABEL = 15
PHANTOM_NAMES = ("nist-t1", "nist-t2", "nist", "brain")


class PhantomError(MrfError):
    """A phantom that cannot be built or simulated: the message names the field and the value."""


@dataclass(frozen=True)
class Placement:
    """In-plane shift (mm, x then y), rotation (deg, +x towards +y) and scale of the object."""

    shift_mm: tuple[float, float] = (0.0, 0.0)
    rotation_deg: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        values = (*self.shift_mm, self.rotation_deg, self.scale)
        if len(self.shift_mm) != 2 or not all(math.isfinite(v) for v in values):
            raise PhantomError(f"placement {self} must have a finite 2-vector shift, rotation and scale")
        if self.scale <= 0:
            raise PhantomError(f"placement scale = {self.scale} must be > 0")

    def object_coords(self, x_mm: np.ndarray, y_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Object-frame coordinates (mm) of scanner positions: undo shift, rotation, scale."""
        c, s = math.cos(math.radians(self.rotation_deg)), math.sin(math.radians(self.rotation_deg))
        dx, dy = x_mm - self.shift_mm[0], y_mm - self.shift_mm[1]
        return (c * dx + s * dy) / self.scale, (-s * dx + c * dy) / self.scale


@dataclass
class Phantom:
    """Tissue maps (n_slices, matrix, matrix): t1_ms, t2_ms, pd (relative), b1 (relative), all 0
    outside the object; labels (int16) with label_names; fov_mm; field_t; attrs (JSON-able facts)."""

    name: str
    t1_ms: np.ndarray
    t2_ms: np.ndarray
    pd: np.ndarray
    b1: np.ndarray
    labels: np.ndarray
    label_names: dict[int, str]
    fov_mm: float
    field_t: float | None = None
    attrs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("t1_ms", "t2_ms", "pd", "b1"):
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.float32))
        self.labels = np.ascontiguousarray(self.labels, dtype=np.int16)
        self.validate()

    @property
    def mask(self) -> np.ndarray:
        return self.pd > 0

    @property
    def n_slices(self) -> int:
        return int(self.pd.shape[0])

    @property
    def matrix(self) -> int:
        return int(self.pd.shape[-1])

    def validate(self) -> None:
        """Shapes agree and every object voxel is simulatable; the error names the map and the voxel."""
        shape = self.pd.shape
        if len(shape) != 3 or shape[1] != shape[2] or shape[1] < 2:
            raise PhantomError(f"pd has shape {shape}: expected (n_slices, matrix, matrix)")
        for name in ("t1_ms", "t2_ms", "b1", "labels"):
            if getattr(self, name).shape != shape:
                raise PhantomError(f"{name} has shape {getattr(self, name).shape} but pd has {shape}")
        if not (math.isfinite(self.fov_mm) and self.fov_mm > 0):
            raise PhantomError(f"fov_mm = {self.fov_mm} must be > 0")
        from mrf_core.physics.epg import MAX_B1  # here, not at import: reading a raw file needs no torch

        inside = self.mask
        empty = np.flatnonzero(~inside.any(axis=(1, 2)))
        if empty.size:
            raise PhantomError(f"phantom {self.name!r} slice {empty[0]} has no object voxel (pd > 0 nowhere)")
        checks = (
            ("pd", ~np.isfinite(self.pd) | (self.pd < 0), "must be finite and >= 0"),
            ("t1_ms", inside & ~(self.t1_ms > 0), "must be > 0 where pd > 0"),
            ("t2_ms", inside & ~(self.t2_ms > 0), "must be > 0 where pd > 0"),
            ("t2_ms", inside & (self.t2_ms > 2 * self.t1_ms), "exceeds 2 x t1_ms (not physical)"),
            ("b1", inside & ~((self.b1 > 0) & (self.b1 <= MAX_B1)), f"must be in (0, {MAX_B1:g}] where pd > 0"),
        )
        for name, bad, why in checks:
            if bad.any():
                where = tuple(int(i) for i in np.argwhere(bad)[0])
                value = getattr(self, name)[where]
                raise PhantomError(f"{name}[slice, row, col = {where}] = {value:g} {why}")

    def truth_attrs(self) -> dict:
        """Scalar facts for the ground-truth group: name, field, FOV, label names (JSON), extras."""
        return {
            "phantom": self.name,
            "field_T": float(self.field_t) if self.field_t is not None else float("nan"),
            "fov_mm": float(self.fov_mm),
            "label_names": json.dumps({str(k): v for k, v in self.label_names.items()}),
            **self.attrs,
        }


def pixel_coords_mm(matrix: int, fov_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of every pixel centre in mm, each (matrix, matrix); pixel N//2 is the origin."""
    if matrix < 2 or not fov_mm > 0:
        raise PhantomError(f"matrix = {matrix} and fov_mm = {fov_mm} must be >= 2 and > 0")
    r = (np.arange(matrix) - matrix // 2) * (fov_mm / matrix)
    y, x = np.meshgrid(r, r, indexing="ij")
    return x, y


def b1_field(matrix: int, fov_mm: float, amplitude: float, n_slices: int = 1) -> np.ndarray:
    """A centre-bright transmit field, 1 + amplitude (1 - r^2 / (100 mm)^2), quantised to B1_STEP:
    (n_slices, matrix, matrix). amplitude 0.1 is typical of a head at 3 T (+10 % centre, -10 % at
    141 mm)."""
    if not (math.isfinite(amplitude) and 0 <= amplitude < 0.5):
        raise PhantomError(f"b1 amplitude = {amplitude} must be in [0, 0.5)")
    x, y = pixel_coords_mm(matrix, fov_mm)
    b1 = 1.0 + amplitude * (1.0 - (x**2 + y**2) / NIST_OUTER_RADIUS_MM**2)
    return np.broadcast_to(quantise_b1(b1), (n_slices, matrix, matrix)).copy()


def quantise_b1(b1: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(b1, dtype=np.float64) / B1_STEP) * B1_STEP


def _with_b1(phantom: Phantom, b1_amplitude: float) -> Phantom:
    b1 = b1_field(phantom.matrix, phantom.fov_mm, b1_amplitude, phantom.n_slices)
    return replace(phantom, b1=np.where(phantom.mask, b1, 0.0), attrs={**phantom.attrs, "b1_amplitude": b1_amplitude})


# ---- NIST system phantom ---------------------------------------------------------------------------
def nist_reference(field_t: float, batch: int, array: str) -> dict[int, tuple[float, float]]:
    """{sphere: (T1 ms, T2 ms)} at 20 C from the shipped table; the error lists what the table has."""
    if array not in NIST_ARRAYS:
        raise PhantomError(f"NIST array = {array!r} must be one of {', '.join(NIST_ARRAYS)}")
    text = resources.files("mrf_core").joinpath("data", "nist_system_phantom_reference.csv").read_text()
    rows = list(csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#")))
    table: dict[tuple, dict[int, dict[str, float]]] = {}
    for row in rows:
        key = (int(row["batch"]), float(row["field_T"]), row["array"])
        table.setdefault(key, {}).setdefault(int(row["sphere"]), {})[row["quantity"]] = float(row["value_ms"])
    spheres = table.get((int(batch), float(field_t), array))
    if spheres is None:
        have = sorted({(b, f) for b, f, a in table if a == array})
        listing = ", ".join(f"batch {b} at {f:g} T" for b, f in have)
        raise PhantomError(f"no NIST {array} reference for batch {batch} at field {field_t:g} T (have: {listing})")
    return {n: (v["T1"], v["T2"]) for n, v in sorted(spheres.items())}


def nist_sphere_centres_mm() -> dict[int, tuple[float, float]]:
    """{sphere: (x, y)} in the object frame, mm (see the module docstring)."""
    centres = {}
    for n in range(1, 11):
        a = math.radians(-90.0 + 36.0 * (n - 1))
        centres[n] = (NIST_RING_RADIUS_MM * math.cos(a), NIST_RING_RADIUS_MM * math.sin(a))
    for n in range(11, 15):
        a = math.radians(-45.0 + 90.0 * (n - 11))
        centres[n] = (NIST_INNER_RING_RADIUS_MM * math.cos(a), NIST_INNER_RING_RADIUS_MM * math.sin(a))
    return centres


def nist_phantom(
    arrays: tuple[str, ...] | str = "NiCl2",
    field_t: float = 3.0,
    batch: int = 1,
    matrix: int = 256,
    fov_mm: float = 300.0,
    placement: Placement = Placement(),
    b1_amplitude: float = 0.0,
    fill: bool = True,
) -> Phantom:
    """The system phantom's relaxation arrays, one slice per array (e.g. ("NiCl2", "MnCl2"))."""
    arrays = (arrays,) if isinstance(arrays, str) else tuple(arrays)
    x, y = placement.object_coords(*pixel_coords_mm(matrix, fov_mm))
    r2 = x**2 + y**2
    maps = {k: np.zeros((len(arrays), matrix, matrix)) for k in ("t1_ms", "t2_ms", "pd", "labels")}
    for s, array in enumerate(arrays):
        reference = nist_reference(field_t, batch, array)
        if fill:
            water = (r2 <= NIST_OUTER_RADIUS_MM**2) & (r2 > NIST_PLATE_RADIUS_MM**2)
            for key, value in (("t1_ms", NIST_FILL_T1_MS), ("t2_ms", NIST_FILL_T2_MS), ("pd", 1.0),
                               ("labels", NIST_FILL_LABEL)):
                maps[key][s][water] = value
        for n, (cx, cy) in nist_sphere_centres_mm().items():
            inside = (x - cx) ** 2 + (y - cy) ** 2 <= NIST_SPHERE_RADIUS_MM**2
            t1, t2 = reference[n]
            for key, value in (("t1_ms", t1), ("t2_ms", t2), ("pd", 1.0), ("labels", n)):
                maps[key][s][inside] = value
    names = {n: f"sphere {n}" for n in range(1, 15)}
    if fill:
        names[NIST_FILL_LABEL] = "fill water"
    name = {("NiCl2",): "nist-t1", ("MnCl2",): "nist-t2"}.get(arrays, "nist")
    phantom = Phantom(
        name=name, b1=np.where(maps["pd"] > 0, 1.0, 0.0), label_names=names, fov_mm=fov_mm, field_t=field_t,
        attrs={"batch": int(batch), "arrays": json.dumps(list(arrays)), "temperature_C": 20.0,
               "placement": json.dumps(placement.__dict__)},
        **maps,
    )
    return _with_b1(phantom, b1_amplitude) if b1_amplitude else phantom


# ---- brain -----------------------------------------------------------------------------------------
# (T1 ms, T2 ms) at 1.5 T and 3 T, and PD: rounded literature-typical values.
BRAIN_TISSUES: dict[str, dict] = {
    "white matter": {1.5: (600.0, 80.0), 3.0: (830.0, 80.0), "pd": 0.69},
    "grey matter": {1.5: (950.0, 100.0), 3.0: (1330.0, 110.0), "pd": 0.80},
    "CSF": {1.5: (4000.0, 2000.0), 3.0: (4000.0, 2000.0), "pd": 1.00},
    "fat": {1.5: (260.0, 85.0), 3.0: (380.0, 130.0), "pd": 0.90},
    "deep grey matter": {1.5: (800.0, 85.0), 3.0: (1100.0, 90.0), "pd": 0.75},
    "lesion": {1.5: (1000.0, 170.0), 3.0: (1400.0, 180.0), "pd": 0.85},
}
# Painted in order: (tissue or None for signal-free bone, centre x, y mm, semi-axes a, b mm, angle deg).
_BRAIN_ELLIPSES = (
    ("fat", 0, 0, 78, 98, 0),
    (None, 0, 0, 73, 93, 0),
    ("CSF", 0, 0, 69, 89, 0),
    ("grey matter", 0, 0, 66, 86, 0),
    ("white matter", 0, 2, 56, 74, 0),
    ("CSF", -9, -6, 5, 22, -12),
    ("CSF", 9, -6, 5, 22, 12),
    ("deep grey matter", -19, 10, 8, 12, 10),
    ("deep grey matter", 19, 10, 8, 12, -10),
    ("lesion", 32, -34, 5, 5, 0),
)


def brain_phantom(
    field_t: float = 3.0,
    matrix: int = 256,
    fov_mm: float = 300.0,
    n_slices: int = 1,
    slice_spacing_mm: float = 10.0,
    placement: Placement = Placement(),
    b1_amplitude: float = 0.0,
    texture: float = 0.03,
    seed: int = 0,
) -> Phantom:
    """An axial brain-like slab: tissues by ellipses, slices shrinking away from the centre, and a smooth
    multiplicative texture (relative std `texture`) on T1, T2 and PD."""
    if field_t not in (1.5, 3.0):
        raise PhantomError(f"brain field_t = {field_t:g} T: tissue values exist for 1.5 and 3 T")
    if n_slices < 1:
        raise PhantomError(f"n_slices = {n_slices} must be >= 1")
    x, y = placement.object_coords(*pixel_coords_mm(matrix, fov_mm))
    names = {i: name for i, name in enumerate(BRAIN_TISSUES, start=1)}
    codes = {name: i for i, name in names.items()}
    labels = np.zeros((n_slices, matrix, matrix), dtype=np.int16)
    for s in range(n_slices):
        z = (s - (n_slices - 1) / 2) * slice_spacing_mm
        shrink = math.sqrt(max(0.3, 1.0 - (z / 110.0) ** 2))
        for tissue, cx, cy, a, b, angle in _BRAIN_ELLIPSES:
            c, sn = math.cos(math.radians(angle)), math.sin(math.radians(angle))
            u, v = (x - cx * shrink), (y - cy * shrink)
            inside = ((c * u + sn * v) / (a * shrink)) ** 2 + ((-sn * u + c * v) / (b * shrink)) ** 2 <= 1
            labels[s][inside] = codes[tissue] if tissue else 0
    rng = np.random.default_rng(seed)
    maps = {}
    for key, index in (("t1_ms", 0), ("t2_ms", 1), ("pd", None)):
        lookup = np.zeros(len(names) + 1)
        for code, name in names.items():
            values = BRAIN_TISSUES[name]
            lookup[code] = values["pd"] if index is None else values[field_t][index]
        smooth = ndimage.gaussian_filter(rng.standard_normal(labels.shape), sigma=(0, 3, 3))
        smooth /= smooth.std()
        maps[key] = lookup[labels] * (1.0 + texture * np.clip(smooth, -3, 3))
    phantom = Phantom(
        name="brain", b1=np.where(labels > 0, 1.0, 0.0), labels=labels, label_names=names, fov_mm=fov_mm,
        field_t=field_t, attrs={"texture": texture, "seed": seed, "placement": json.dumps(placement.__dict__)},
        **maps,
    )
    return _with_b1(phantom, b1_amplitude) if b1_amplitude else phantom


# ---- user maps -------------------------------------------------------------------------------------
def load_maps(
    path: str | Path,
    matrix: int = 256,
    fov_mm: float = 300.0,
    source_fov_mm: float | None = None,
    placement: Placement = Placement(),
    field_t: float | None = None,
    b1_amplitude: float = 0.0,
) -> Phantom:
    """A phantom from T1/T2/PD(/B1) maps in a file (formats: module docstring), resampled onto a
    matrix x matrix grid over fov_mm. source_fov_mm: the maps' own FOV (default: the NIfTI voxel size
    times the size, else fov_mm). A B1 map in the file wins over b1_amplitude."""
    path = Path(path)
    maps, labels, voxel_mm = _read_map_file(path)
    n_rows = maps["pd"].shape[-1]
    if source_fov_mm is None:
        source_fov_mm = voxel_mm * n_rows if voxel_mm else fov_mm
    x, y = placement.object_coords(*pixel_coords_mm(matrix, fov_mm))
    # object mm -> source pixel index (row, column)
    src = np.stack([y, x]) / (source_fov_mm / n_rows) + n_rows // 2
    inside_src = (maps["pd"] > 0).astype(np.float64)
    out = {k: np.zeros((maps["pd"].shape[0], matrix, matrix)) for k in maps}
    out_labels = np.zeros_like(out["pd"], dtype=np.int16)
    for s in range(maps["pd"].shape[0]):
        weight = ndimage.map_coordinates(inside_src[s], src, order=1, mode="constant")
        inside = weight >= 0.5
        for key, values in maps.items():
            sampled = ndimage.map_coordinates(values[s] * inside_src[s], src, order=1, mode="constant")
            out[key][s] = np.where(inside, sampled / np.maximum(weight, 1e-12), 0.0)
        if labels is not None:
            out_labels[s] = np.where(inside, ndimage.map_coordinates(labels[s], src, order=0, mode="constant"), 0)
        else:
            out_labels[s] = inside
    b1 = out.pop("b1", None)
    has_b1 = b1 is not None
    phantom = Phantom(
        name=path.name,
        b1=np.where(out["pd"] > 0, quantise_b1(b1) if has_b1 else 1.0, 0.0),
        labels=out_labels,
        label_names={} if labels is not None else {1: "object"},
        fov_mm=fov_mm,
        field_t=field_t,
        attrs={"source": str(path), "source_fov_mm": float(source_fov_mm),
               "placement": json.dumps(placement.__dict__)},
        **out,
    )
    return _with_b1(phantom, b1_amplitude) if b1_amplitude and not has_b1 else phantom


def _read_map_file(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None, float | None]:
    """({t1_ms, t2_ms, pd[, b1]}: (n_slices, ny, nx) float64, labels or None, voxel size mm or None)."""
    names = ("t1_ms", "t2_ms", "pd", "b1")
    suffixes = "".join(path.suffixes[-2:]).lower()
    voxel_mm, labels = None, None
    if not path.is_file():
        raise PhantomError(f"maps file {path} does not exist")
    if suffixes.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in names[:3] if k not in f]
            if missing:
                raise PhantomError(f"maps file {path} has no array {missing[0]!r} (has: {', '.join(f.files)})")
            maps = {k: np.asarray(f[k], dtype=np.float64) for k in names if k in f}
            labels = np.asarray(f["labels"]) if "labels" in f else None
    elif suffixes.endswith(".npy"):
        stack = np.load(path, allow_pickle=False)
        if stack.ndim not in (3, 4) or stack.shape[0] not in (3, 4):
            raise PhantomError(
                f"maps file {path} has shape {stack.shape}: expected (3 or 4, [slices,] ny, nx) = T1, T2, PD[, B1]"
            )
        maps = dict(zip(names, np.asarray(stack, dtype=np.float64), strict=False))
    elif suffixes.endswith((".nii", ".nii.gz")):
        try:
            import nibabel
        except ImportError as exc:
            raise PhantomError(f"reading {path} needs nibabel: pip install 'mrf-gadgetron[nifti]'") from exc
        image = nibabel.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float64)
        if data.ndim == 3:
            data = data[:, :, None, :]
        if data.ndim != 4 or data.shape[3] not in (3, 4):
            raise PhantomError(f"NIfTI {path} has shape {data.shape}: expected (nx, ny, nz, 3 or 4) = T1, T2, PD[, B1]")
        voxel_mm = float(image.header.get_zooms()[0])
        maps = {n: data[..., i].transpose(2, 1, 0) for i, n in enumerate(names[: data.shape[3]])}
    else:
        raise PhantomError(f"maps file {path}: unknown format (expected .npy, .npz, .nii or .nii.gz)")
    for key, value in maps.items():
        if value.ndim == 2:
            maps[key] = value[None]
    shape = maps["pd"].shape
    for key, value in maps.items():
        if value.shape != shape or shape[-1] != shape[-2]:
            raise PhantomError(f"maps file {path}: {key} has shape {value.shape}; all maps must be (slices, n, n)")
    if labels is not None:
        labels = labels.reshape(shape)
    maps["pd"] = np.where(np.isfinite(maps["pd"]), maps["pd"], 0.0)
    return maps, labels, voxel_mm


def make_phantom(
    spec: str,
    field_t: float = 3.0,
    batch: int = 1,
    matrix: int = 256,
    fov_mm: float = 300.0,
    placement: Placement = Placement(),
    b1_amplitude: float = 0.0,
    n_slices: int = 1,
    seed: int = 0,
) -> Phantom:
    """A phantom by name (nist-t1, nist-t2, nist (both arrays, 2 slices), brain) or a maps file path."""
    if spec == "nist-t1":
        return nist_phantom("NiCl2", field_t, batch, matrix, fov_mm, placement, b1_amplitude)
    if spec == "nist-t2":
        return nist_phantom("MnCl2", field_t, batch, matrix, fov_mm, placement, b1_amplitude)
    if spec == "nist":
        return nist_phantom(NIST_ARRAYS, field_t, batch, matrix, fov_mm, placement, b1_amplitude)
    if spec == "brain":
        return brain_phantom(field_t, matrix, fov_mm, n_slices, placement=placement,
                             b1_amplitude=b1_amplitude, seed=seed)
    if Path(spec).suffix.lower() in (".npy", ".npz", ".nii", ".gz"):
        return load_maps(spec, matrix, fov_mm, placement=placement, field_t=field_t, b1_amplitude=b1_amplitude)
    raise PhantomError(
        f"unknown phantom {spec!r}: expected one of {', '.join(PHANTOM_NAMES)} or a "
        ".npy/.npz/.nii/.nii.gz maps file"
    )
