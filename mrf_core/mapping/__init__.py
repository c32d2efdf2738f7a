"""Neural T1/T2 (B1) mapping: the seed architectures, training on EPG signals, TorchScript archives.

Public API (what the gadgets call):

    model = load_model(path)                  # ModelError if not a valid archive (never unpickles)
    model.check(schedule)                     # ModelMismatchError for another schedule
    result = model.map_coefficients(c, basis) # or model.map_signals(time_courses): a MatchResult
"""

from mrf_core.mapping.archive import ModelError, ModelMismatchError
from mrf_core.mapping.model import MrfModel, default_model_path, load_model

__all__ = ["ModelError", "ModelMismatchError", "MrfModel", "default_model_path", "load_model"]
