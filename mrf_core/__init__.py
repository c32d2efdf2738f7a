"""mrf_core: the MRF reconstruction library (no Gadgetron imports; usable from a notebook).

Grouped by concern: physics/ (schedule, EPG, dictionaries, temporal basis), recon/ (gather, trajectory,
NUFFT, coils, subspace reconstruction), mapping/ (matching, networks, maps), io/ (raw files, map images),
sim/ (phantoms, simulator), qa/ (phantom QA); pipeline and settings join them into the chain the gadgets
and the command line share; progress shows long waits (off unless a caller turns it on).
"""

__version__ = "0.1.0"


def cache_dir(kind: str):
    """$XDG_CACHE_HOME (else ~/.cache)/mrf-gadgetron/<kind>: where built dictionaries and PSF kernels are kept
    across processes (gadget processes start afresh for every scan)."""
    import os
    from pathlib import Path

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mrf-gadgetron" / kind
