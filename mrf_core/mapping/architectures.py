"""Networks that map features (N, channels, length) to normalised tissue parameters (N, n_outputs).

- "resnet": the residual 1-D CNN of Song et al. (ISMRM 2019): two convolutions (32 channels), four
  residual blocks (stride-2 max pooling, two convolutions, a 1x1 shortcut; channels doubling 64 ... 512),
  kernel 7, global average pooling, one fully connected output. Batch normalisation after each
  convolution is ours (the abstract does not say; it makes the 10-layer network train in few epochs).
- "gru", "lstm": Oksuz et al. (ISBI 2019): one recurrent layer of 100 units over the time course (one
  time point per step; `step` > 1 feeds that many per step, a speed option), the last hidden state into a
  fully connected layer.
- "drone": the fully connected network of Cohen et al. (DRONE, MRM 2018): two hidden layers of 300, tanh.
- "hoppe": a 1-D CNN after Hoppe et al. (2017): four convolution + average-pooling stages (kernels 21, 15,
  9, 5; 16, 32, 64, 64 channels), then two fully connected layers (256, outputs). Their exact layer sizes
  are not in the seeds; these are ours.
- "mlp": the default for inline CPU use, on subspace coefficients (length = rank, ~5-20): `depth`
  hidden layers of `width` with SiLU. The shipped model (width 128, rank 5) runs a 256^2 slice in ~0.1 s
  on one core.

All are plain nn.Modules that torch.jit.script compiles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mrf_core.mapping.parameters import MappingConfigError


class _ConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm1d(c_out))


class _ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__()
        self.pool = nn.MaxPool1d(2, ceil_mode=True)
        self.conv1 = _ConvBN(c_in, c_out, kernel)
        self.conv2 = _ConvBN(c_out, c_out, kernel)
        self.shortcut = _ConvBN(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class SongResNet(nn.Module):
    def __init__(self, in_channels: int, length: int, n_outputs: int, kernel: int = 7, channels: int = 32):
        super().__init__()
        self.stem = nn.Sequential(_ConvBN(in_channels, channels, kernel), nn.ReLU(),
                                  _ConvBN(channels, channels, kernel), nn.ReLU())
        widths = [channels * 2**i for i in range(5)]  # 32, 64, 128, 256, 512
        pairs = zip(widths[:-1], widths[1:], strict=True)
        self.blocks = nn.Sequential(*[_ResidualBlock(a, b, kernel) for a, b in pairs])
        self.head = nn.Linear(widths[-1], n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=2))


class RecurrentNet(nn.Module):
    def __init__(self, in_channels: int, length: int, n_outputs: int, cell: str = "gru", hidden: int = 100,
                 step: int = 1):
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise MappingConfigError(f"cell = {cell!r} must be 'gru' or 'lstm'")
        if step < 1:
            raise MappingConfigError(f"step = {step} must be >= 1")
        self.step = step
        self.pad = (-length) % step
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(in_channels * step, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad > 0:
            x = F.pad(x, (0, self.pad))
        n, c, length = x.shape
        seq = x.permute(0, 2, 1).reshape(n, length // self.step, self.step * c)
        out, _ = self.rnn(seq)
        return self.head(out[:, -1])


class Drone(nn.Module):
    def __init__(self, in_channels: int, length: int, n_outputs: int, hidden: int = 300):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * length, hidden), nn.Tanh(),
                                 nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class HoppeCNN(nn.Module):
    def __init__(self, in_channels: int, length: int, n_outputs: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out, kernel in ((16, 21), (32, 15), (64, 9), (64, 5)):
            layers += [nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2), nn.ReLU(),
                       nn.AvgPool1d(2, ceil_mode=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        pooled = length
        for _ in range(4):
            pooled = (pooled + 1) // 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * pooled, 256), nn.ReLU(), nn.Linear(256, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SubspaceMLP(nn.Module):
    def __init__(self, in_channels: int, length: int, n_outputs: int, width: int = 256, depth: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        size = in_channels * length
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.SiLU()]
            size = width
        layers.append(nn.Linear(size, n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _recurrent(cell: str):
    def make(in_channels: int, length: int, n_outputs: int, **options) -> RecurrentNet:
        return RecurrentNet(in_channels, length, n_outputs, cell=cell, **options)

    return make


# name -> (constructor(in_channels, length, n_outputs, **options), default input kind, one-line description)
ARCHITECTURES = {
    "mlp": (SubspaceMLP, "coefficients", "MLP on subspace coefficients (SiLU; width 256, depth 3 unless set)"),
    "resnet": (SongResNet, "complex", "Song et al. residual 1-D CNN (kernel 7, 32..512 channels)"),
    "gru": (_recurrent("gru"), "magnitude", "Oksuz et al. GRU, 100 units"),
    "lstm": (_recurrent("lstm"), "magnitude", "Oksuz et al. LSTM, 100 units"),
    "drone": (Drone, "magnitude", "Cohen et al. DRONE: fully connected 2 x 300, tanh"),
    "hoppe": (HoppeCNN, "magnitude", "1-D CNN after Hoppe et al. (4 conv + pool stages, FC 256)"),
}


def build_network(arch: str, in_channels: int, length: int, n_outputs: int, **options) -> nn.Module:
    """A fresh network of architecture `arch` (see ARCHITECTURES) for features (N, in_channels, length)."""
    if arch not in ARCHITECTURES:
        raise MappingConfigError(f"architecture {arch!r} must be one of {sorted(ARCHITECTURES)}")
    try:
        return ARCHITECTURES[arch][0](in_channels, length, n_outputs, **options)
    except TypeError as exc:
        raise MappingConfigError(f"architecture {arch!r} does not take options {options}: {exc}") from None
