# The Triton interpreter switch and the gpu marker live in tests/conftest.py, which pytest loads first.
