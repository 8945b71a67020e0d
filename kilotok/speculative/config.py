"""Speculative decoding settings: which drafter, and the shape of the trees it may propose."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from kilotok.errors import InvalidRequestError
from kilotok.speculative.policy import SpecPolicy, TreeShape, device_family, shipped_policy_path

SPEC_METHODS = ("none", "ngram", "eagle3")

DEFAULT_POLICY = SpecPolicy(((4, TreeShape(64, 64)),))
"""On the CPU, where no policy is given or shipped for the model and processor: the configured tree up to
batch 4, none above. On CUDA the configured tree drafts at every batch size instead (SpecConfig.tree_policy)."""


@dataclass(frozen=True)
class SpecConfig:
    method: str = "none"
    """none, ngram (prompt lookup) or eagle3 (a trained draft head)."""
    draft: str | None = None
    """EAGLE-3 head folder; None picks the head shipped for the model, if there is one."""
    depth: int = 3
    """Longest draft path: tree levels for eagle3, chain length for ngram."""
    topk: int = 1
    """EAGLE-3 branching: children tried per expanded node, and nodes expanded per level."""
    tree_size: int = 3
    """Most draft nodes verified per step (the root, the last sampled token, comes on top).

    Small by default: verification runs the compiled decode graph of its row count, and on the CPU the
    int4 matrix kernel's cost grows with the rows, so a small tree wins there although wider trees accept
    more (docs/benchmarks.md has the step costs by row count and the acceptance of wider trees)."""
    ngram_min: int = 2
    """Shortest context tail prompt lookup matches: a single token recurs so often that matching it
    proposes mostly wrong chains, whose verification costs more than it saves."""
    ngram_max: int = 3
    policy: str | None = None
    """JSON table of tree shape by batch size (`kilotok bench spec-policy --out FILE`); None uses the table
    shipped for the model on the device it runs on (tree_policy). Shapes never exceed depth and tree_size,
    which size the KV slots a step reserves."""

    def __post_init__(self) -> None:
        if self.method not in SPEC_METHODS:
            raise InvalidRequestError(
                f"speculative method {self.method!r} is unknown: choose one of {', '.join(SPEC_METHODS)}"
            )
        checks = {
            "depth": self.depth >= 1,
            "topk": self.topk >= 1,
            "tree_size": self.tree_size >= 1,
            "ngram_min": self.ngram_min >= 1,
            "ngram_max": self.ngram_max >= self.ngram_min,
        }
        for name, ok in checks.items():
            if not ok:
                raise InvalidRequestError(f"speculative setting {name}={getattr(self, name)!r} is out of range")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def max_draft_nodes(self) -> int:
        """KV-cache slots a step needs beyond the sequence itself."""
        return self.depth if self.method == "ngram" else self.tree_size

    def tree_policy(self, model_name: str = "", device: torch.device | str = "cpu") -> SpecPolicy:
        """The tree shape by batch size for `model_name` running on `device`: the `policy` file, else the table
        shipped for the model, the method and the device's family (speculative/policy.py), else on CUDA the
        configured tree at every batch size (one line on stderr says so), elsewhere DEFAULT_POLICY."""
        largest = TreeShape(self.depth, self.max_draft_nodes)
        family = None if self.policy else device_family(device)
        path = self.policy or shipped_policy_path(model_name, self.method, family)
        if path:
            return SpecPolicy.load(path).capped(largest)
        if torch.device(device).type != "cuda":
            return DEFAULT_POLICY.capped(largest)
        print(f"kilotok: no speculative policy is shipped for {model_name or 'this model'} ({self.method}) on "
              f"{family}: the configured tree (depth {largest.depth}, {largest.tree_size} nodes) drafts at every "
              "batch size; measure a table with `kilotok bench spec-policy --out FILE` and pass --spec-policy FILE",
              file=sys.stderr)
        return SpecPolicy.fixed(largest)

    @classmethod
    def of(cls, spec: SpecConfig | str | None) -> SpecConfig:
        """Accept a SpecConfig, a method name, or None (no speculation)."""
        if spec is None:
            return cls()
        if isinstance(spec, str):
            return cls(method=spec)
        if isinstance(spec, SpecConfig):
            return spec
        raise InvalidRequestError(f"spec must be a SpecConfig or a method name, not {type(spec).__name__}")
