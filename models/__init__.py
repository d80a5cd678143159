"""SiT backbone with per-group timesteps and Attention Separation; registry and checkpoint import.

models/reference.py is the release-cost reference of the same math (tests and bench.py only)."""
from .attention import Attention, separated_attention
from .checkpoint import (CheckpointError, SiTTimeFlip, infer_config, init_from_checkpoint, load_checkpoint,
                         load_state_dict_strict, read_checkpoint, read_training_state, weights_digest)
from .groups import SegmentLayout
from .reference import ReferenceSiT, dense_masked_attention
from .sit import DIT_NAMES, SIZES, SiT, SiT_models, model_name_for, patch_size_of

__all__ = ["Attention", "separated_attention", "CheckpointError", "SiTTimeFlip", "infer_config",
           "init_from_checkpoint", "load_checkpoint", "load_state_dict_strict", "read_checkpoint",
           "read_training_state", "weights_digest", "SegmentLayout",
           "ReferenceSiT", "dense_masked_attention", "DIT_NAMES", "SIZES", "SiT", "SiT_models",
           "model_name_for", "patch_size_of"]
