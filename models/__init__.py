"""SiT backbone with per-group timesteps and Attention Separation; registry and checkpoint import."""
from .attention import Attention, dense_masked_attention, separated_attention
from .checkpoint import SiTTimeFlip, infer_config, load_checkpoint, load_state_dict_strict, read_state_dict
from .groups import MaskLayout, SegmentLayout, plan_groups
from .sit import SIZES, SiT, SiT_models, model_name_for, patch_size_of

__all__ = ["Attention", "dense_masked_attention", "separated_attention", "SiTTimeFlip", "infer_config",
           "load_checkpoint", "load_state_dict_strict", "read_state_dict", "MaskLayout", "SegmentLayout",
           "plan_groups", "SIZES", "SiT", "SiT_models", "model_name_for", "patch_size_of"]
