"""The parts of ``experiments.bench_speed``: options, timing, cases, profiling, report.

Run the benchmark with ``python -m experiments.bench_speed``; these modules are its
library (``bench_speed`` re-exports their public names).
"""
