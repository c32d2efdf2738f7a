"""Phantom QA of quantitative maps: the ISMRM/NIST system phantom's sphere arrays.

A weekly phantom scan should say, without anyone drawing ROIs, whether T1 and T2 are still right:

    spheres     find the 14 spheres of an array plate (blobs + a similarity-transform template fit)
    roi         ROI statistics per sphere (eroded discs: mean, median, std, voxel counts)
    references  reference values (field, batch, temperature) and which spheres the sequence can measure
    metrics     per-sphere errors and the aggregate agreement (R^2, Lin's CCC, Bland-Altman, CV), pass/fail
    analysis    one map file in, one QAResult out (input checks, slice and array choice)
    report      the self-contained HTML report, results.json and the summary figure
    trends      the SQLite store of past results and the trend plots
"""

from __future__ import annotations

from mrf_core.errors import MrfError


class QAError(MrfError):
    """QA cannot run on this input (no phantom, wrong array, wrong units or size, bad store): the
    message says what was found and what to do."""
