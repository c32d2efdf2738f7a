"""Neural T1/T2 (B1) mapping: the seed architectures, training on EPG signals, TorchScript archives.

Public API (what the gadgets call):

    model = load_model(path)                  # ModelError if not a valid archive (never unpickles)
    model.check(schedule)                     # ModelMismatchError for another schedule
    result = model.map_coefficients(c, basis) # or model.map_signals(time_courses): a MatchResult
"""

import importlib

# Loaded on first use: the package's light modules (maps, matching's data types) are imported by image and
# gadget code that must not pay for torch and TorchScript.
_PUBLIC = {"ModelError": "archive", "ModelMismatchError": "archive", "MrfModel": "model",
           "default_model_path": "model", "load_model": "model"}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"mrf_core.mapping.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'mrf_core.mapping' has no attribute {name!r}")
