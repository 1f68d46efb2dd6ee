"""Benchmarks for als: each operation against its bare standard-library baseline, in the same run.

Run ``python -m benchmarks --quick`` (under a minute) or ``python -m benchmarks``
(the full run, which writes its raw figures to ``benchmarks/results/``).
Not part of the test suite: speed is measured here, as ratios, never asserted.
"""
