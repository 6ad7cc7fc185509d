"""Benchmarks of the kit, run from its root as modules: `python -m benchmarks.<name>`."""
