"""spin_kernels: fused kernels and tools for weight-shared isotropic vision networks (SPIN, ECCV 2022).

Public API:
    SharingPlan            layer -> unique weight index (sharing.py)
    create_model           build a ConvMixer / DeiT with a sharing plan and a backend (models/)
    list_models            the model names create_model knows
    from_timm              convert a timm model / state_dict, optionally with weight fusion (interop.py)
    load_model             rebuild a model from one of our checkpoints
    profile                params, unique params and analytic MACs of a model
"""
from ._version import __version__
from .interop import from_timm  # also registers the spin_ models with timm
from .models import create_model, list_models, load_model, profile
from .sharing import SharingPlan

__all__ = ["SharingPlan", "create_model", "list_models", "load_model", "profile", "from_timm", "__version__"]
