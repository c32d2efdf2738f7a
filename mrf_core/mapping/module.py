"""The exported module: input transform -> network -> output scaling, plus the buffers a mapper needs.

`MappingModule.forward(re, im, b1=None)` takes the real and imaginary parts (N, length) of subspace
coefficients or time courses and returns T1/T2 (ms) and B1 (N, n_outputs), so a TorchScript consumer
(Gadgetron C++, a vendor runtime) needs nothing else. A module made with `b1_input` also takes the voxels'
measured B1 (N,) (None: 1), appended to the features as B1 - 1 (one more value along the length axis of
every channel); it then predicts T1/T2 only. Buffers travel in the same archive (never pickled):
- basis_vectors (n_timepoints, K) and basis_singular_values: the temporal basis (the input basis of a
  coefficient model; for a time-course model, the basis its fingerprint table is expressed in);
- table_coefficients, table_norms, table_lo, table_step, table_shape: the fingerprint table
  (mrf_core.mapping.table) for PD and match quality.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mrf_core.mapping.inputs import InputTransform
from mrf_core.mapping.parameters import OutputScaling
from mrf_core.mapping.table import FingerprintTable
from mrf_core.physics.temporal_basis import TemporalBasis


class MappingModule(nn.Module):
    def __init__(self, transform: InputTransform, network: nn.Module, scaling: OutputScaling, b1_input: bool = False):
        super().__init__()
        self.b1_input = b1_input
        self.transform = transform
        self.network = network
        self.scaling = scaling
        for name in ("basis_vectors", "basis_singular_values", "table_coefficients", "table_norms", "table_lo",
                     "table_step", "table_shape"):
            self.register_buffer(name, torch.zeros(0))

    @torch.jit.export
    def normalised(self, re: torch.Tensor, im: torch.Tensor, b1: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised outputs (what training regresses), unclamped."""
        features = self.transform(re, im)
        if self.b1_input:
            known = torch.ones_like(re[:, 0]) if b1 is None else b1
            extra = (known.to(features.dtype) - 1.0).view(-1, 1, 1).expand(-1, features.shape[1], 1)
            features = torch.cat([features, extra], dim=2)
        return self.network(features)

    def forward(self, re: torch.Tensor, im: torch.Tensor, b1: torch.Tensor | None = None) -> torch.Tensor:
        return self.scaling(self.normalised(re, im, b1))

    def attach(self, basis: TemporalBasis, table: FingerprintTable) -> None:
        """Store the basis and the fingerprint table as buffers (before scripting)."""
        self.basis_vectors = torch.as_tensor(basis.vectors, dtype=torch.float32)
        self.basis_singular_values = torch.as_tensor(np.asarray(basis.singular_values), dtype=torch.float64)
        self.table_coefficients = table.coefficients.to(torch.float32)
        self.table_norms = table.norms.to(torch.float32)
        self.table_lo = table.lo
        self.table_step = table.step
        self.table_shape = torch.tensor(table.shape, dtype=torch.long)


def table_of(module) -> FingerprintTable:
    """The fingerprint table stored in a (scripted or plain) MappingModule."""
    return FingerprintTable(module.table_coefficients, module.table_norms, module.table_lo, module.table_step,
                            tuple(int(n) for n in module.table_shape.tolist()))
