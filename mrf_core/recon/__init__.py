"""Reconstruction: gathering readouts into slices, spiral trajectories, NUFFT, coils, and the low-rank
subspace reconstruction of a slice."""
