"""The benchmark suite behind `stream-detector bench` (see benchmarks/README.md).

Every row runs in one process and one run, so the ratios between rows (engine vs. the broker's
consume ceiling, vs. River) stay meaningful on a shared, noisy machine where absolute numbers are
not.
"""
