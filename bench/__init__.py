"""Performance benchmarks: one script per stage, run by `xpool bench` / `make bench`.

Each script is run as ``python -m bench.<name> [--quick]`` from the repository root and writes
``<results>/<name>.json`` with :func:`bench.common.BenchReport`; see ``bench/common.py``.
"""
