"""Benchmarks: pytest-benchmark micro-benchmarks (``pytest bench``) and the GPU suite
(``python -m bench.gpu_suite``)."""
