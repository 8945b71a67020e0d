"""EAGLE-3 draft head: a one-layer decoder over fused target hidden states, in the reference on-disk layout."""

from kilotok.speculative.eagle3.checkpoint import default_draft_path, load_eagle3, save_eagle3
from kilotok.speculative.eagle3.config import Eagle3Config, TargetFingerprint, default_aux_layer_ids
from kilotok.speculative.eagle3.model import Eagle3DraftModel, Eagle3Output

__all__ = [
    "Eagle3Config",
    "Eagle3DraftModel",
    "Eagle3Output",
    "TargetFingerprint",
    "default_aux_layer_ids",
    "default_draft_path",
    "load_eagle3",
    "save_eagle3",
]
