"""Build the drafter that a SpecConfig names, for a loaded target model."""

from __future__ import annotations

from kilotok.models.llama import LlamaForCausalLM
from kilotok.speculative.config import SpecConfig
from kilotok.speculative.drafter import Drafter
from kilotok.speculative.ngram import NgramDrafter


def build_drafter(spec: SpecConfig, model: LlamaForCausalLM, model_name: str) -> Drafter | None:
    if spec.method == "ngram":
        return NgramDrafter(spec.ngram_min, spec.ngram_max, spec.depth)
    if spec.method == "eagle3":
        from kilotok.speculative.eagle3_drafter import Eagle3Drafter

        return Eagle3Drafter.load(spec, model, model_name)
    return None
