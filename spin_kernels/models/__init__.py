"""Model zoo: ConvMixer (timm's and SPIN's) and DeiT with cross-layer weight sharing."""
from .convmixer import ConvMixer
from .registry import (
                       MODELS,
                       convert_timm_state_dict,
                       create_model,
                       list_models,
                       load_model,
                       profile,
                       read_checkpoint,
                       save_model,
)
from .vit import VisionTransformer

__all__ = ["MODELS", "create_model", "list_models", "load_model", "save_model", "profile", "read_checkpoint",
           "convert_timm_state_dict", "ConvMixer", "VisionTransformer"]
