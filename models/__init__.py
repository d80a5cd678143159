"""SiT backbone with per-group timesteps and Attention Separation; registry and checkpoint import."""
from .attention import Attention, dense_masked_attention, separated_attention
from .checkpoint import (CheckpointError, SiTTimeFlip, infer_config, init_from_checkpoint, load_checkpoint,
                         load_state_dict_strict, read_checkpoint, read_training_state, weights_digest)
from .groups import MaskLayout, SegmentLayout, plan_groups
from .sit import SIZES, SiT, SiT_models, model_name_for, patch_size_of

__all__ = ["Attention", "dense_masked_attention", "separated_attention", "CheckpointError", "SiTTimeFlip",
           "infer_config", "init_from_checkpoint", "load_checkpoint", "load_state_dict_strict",
           "read_checkpoint", "read_training_state", "weights_digest", "MaskLayout", "SegmentLayout",
           "plan_groups", "SIZES", "SiT", "SiT_models", "model_name_for", "patch_size_of"]
