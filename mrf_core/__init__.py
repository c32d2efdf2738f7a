"""mrf_core: the MRF reconstruction library (no Gadgetron imports; usable from a notebook)."""

__version__ = "0.1.0"
