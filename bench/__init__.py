"""Performance benchmarks: one script per stage, run by ``python -m bench.suite`` (`make bench`,
`xpool bench`).

Each script is run as ``python -m bench.<name> [--quick]`` from the repository root (they import
``bench.common``, so not as files) and writes ``<results>/<name>.json`` with
:func:`bench.common.BenchReport`; see ``bench/common.py``.
"""
