"""The GPU benchmark suite (``python -m bench.gpu_suite``), one module per job."""
