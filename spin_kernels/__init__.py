"""spin_kernels: fused kernels and tools for weight-shared isotropic vision networks (SPIN, ECCV 2022).

Public API:
    SharingPlan            layer -> unique weight index (sharing.py)
    create_model           build a ConvMixer / DeiT with a sharing plan and a backend (models/)
    list_models            the model names create_model knows
    from_timm              convert a timm model / state_dict, optionally with weight fusion (fusion.py)
    load_model             rebuild a model from one of our checkpoints
    profile                params, unique params and analytic MACs of a model
"""
from .sharing import SharingPlan
from .models import create_model, list_models, load_model, profile
from .fusion import from_timm

__version__ = "0.1.0"
__all__ = ["SharingPlan", "create_model", "list_models", "load_model", "profile", "from_timm", "__version__"]
