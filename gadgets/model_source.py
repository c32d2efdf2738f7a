"""The mapping network a chain may use: a configured model archive or the package's default model.

Loading never fails a scan: `load_network` returns the model, or None and the reason it cannot be used
(mapping code not installed, no file, not a valid archive), which the gadgets log and pass on so the
dictionary fallback takes over. Whether a loaded model fits the scan (schedule, basis) is checked per scan
by the caller (MrfModel.check, map_coefficients).
"""

from __future__ import annotations

from pathlib import Path

from gadgets.properties import Property, optional_path, text
from gadgets.runtime import one_line

MODEL_PROPERTIES = (
    Property("model", "", optional_path, "model archive (.pt); empty: the package's default model"),
    Property("device", "cpu", text, "torch device the model runs on (cpu, cuda, cuda:1, ...)"),
)


def load_network(path: Path | None, device: str):
    """(model, None), or (None, why it cannot be used)."""
    try:
        from mrf_core.mapping import default_model_path, load_model
    except ImportError as exc:
        return None, f"the network mapping code is not installed ({exc})"
    path = Path(path) if path is not None else Path(default_model_path())
    if not path.is_file():
        return None, f"no model file at {path}"
    try:
        return load_model(path, device=device), None
    except Exception as exc:  # any failure to load means: fall back, with the reason
        return None, f"model {path} cannot be used: {one_line(exc)}"
