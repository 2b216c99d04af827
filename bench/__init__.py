"""Benchmarks and the synthetic darknet capture generator (`bench.synth`)."""
