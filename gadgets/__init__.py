"""Gadgetron external Python gadgets: thin adapters over mrf_core."""
