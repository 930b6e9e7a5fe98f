"""Small helpers every layer may use (the bottom of the house: imports nothing of spin_kernels)."""
from __future__ import annotations

import warnings

_WARNED: set[str] = set()


def warn_once(key: str, message: str, stacklevel: int = 3) -> None:
    """Emit ``message`` as a warning the first time ``key`` is seen in this process (one registry for the whole
    package, so a fallback is reported once however many layers or calls take it)."""
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, stacklevel=stacklevel)
