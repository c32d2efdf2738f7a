"""Gadget map_network: the TorchScript mapping network on every coefficient image, when it may be used.

An adapter over mrf_core.pipeline.NetworkMapper (the model of the `model` property, default the package's;
checked against the scan's schedule and the coefficients' basis). When it cannot map a slice (mapping
code or model file missing, unreadable model, another schedule, another subspace, an error while
mapping) the coefficient image is passed on UNMAPPED with the reason in MRF_Warning and a logged warning,
so the dictionary gadget after it maps the slice. Never a silent wrong map: a mismatch always falls back.
"""

from __future__ import annotations

from gadgets.map_stage import run_mapping_gadget
from mrf_core.pipeline import NetworkMapper
from mrf_core.settings import for_stages

NAME = "map_network"
PROPERTIES = for_stages("network")


def map_network(connection) -> None:
    """Gadgetron target: coefficient images in, maps bundles (or unmapped coefficient images) out."""
    run_mapping_gadget(connection, NAME, PROPERTIES, NetworkMapper, fallback=True)
