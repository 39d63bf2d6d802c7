"""Experiment statistics on sufficient statistics (counts, sums, cross-sums).

Every function here is pure numpy/scipy: it takes summaries that can be
computed in one vectorized pass over a log and merged across partitions, and
returns frozen results. Degenerate input (an empty arm, zero variance) gives a
result whose ``error`` names the problem instead of raising or leaking NaN.

Modules by family:
``summary`` (input and result types), ``srm``, ``frequentist`` (z, Welch,
delta-method relative and ratio effects), ``cuped``, ``power``, ``multiple``,
``sequential`` (Lan-DeMets group-sequential and always-valid mSPRT), ``bayes``.
"""
