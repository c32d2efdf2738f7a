"""Simulation: phantoms, receive coils, and the spiral MRF raw-data simulator."""
