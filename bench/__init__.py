"""Benchmarks (run as scripts: `python bench/bench_x.py`) and their instruments, importable by tests as `bench.*`."""
