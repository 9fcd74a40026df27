"""Synthetic feeds with known ground truth (IoT telemetry, network flows) and the detector presets
that suit them, shared by the demo, evaluation, benchmarks and tests."""
