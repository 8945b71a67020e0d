"""What a speculative step costs besides the target's forward: the verify inputs, acceptance and the
accepted K/V moves, at several batch sizes, with the forward replaced by fixed logits.

A stand-in runner returns the same logits every step (SmolLM2's vocabulary, 49,152) and keeps real
per-layer caches (30 layers of 3 KV heads x 64 dims in bf16), so `SpeculativeDecoder.decode` runs
everything it runs in the engine except the model. Every sequence drafts the same 3-node tree (two
children of the root, one grandchild); even sequences accept the root's second child (their K/V moves),
odd ones the first child and its child (a chain: nothing moves). One thread, median of 200 steps in ms.
With `compiled`, the verify inputs and acceptance run as compiled graphs (verify_steps.py), as they do in
an engine that compiles its decode steps. Run it from two trees alternately to compare them:

    PYTHONPATH=/path/to/tree python scripts/verify_host_cost.py 1,2,4,8 [compiled]
"""

from __future__ import annotations

import statistics
import sys
import time
from types import SimpleNamespace

import torch

from kilotok.sampling_params import SamplingParams
from kilotok.sequence import Sequence
from kilotok.speculative.decoder import SpeculativeDecoder
from kilotok.speculative.policy import TreeShape
from kilotok.speculative.tree import DraftTree

try:
    from kilotok.speculative.tree import DraftTrees
except ImportError:  # a tree from before drafters returned their trees as tensors
    DraftTrees = None

VOCAB, BLOCK_SIZE, LAYERS, BLOCKS = 49152, 16, 30, 2000
TREE = DraftTree([5, 6, 7], [-1, -1, 0])


class StandInRunner:
    """The runner's interface around fixed logits. `slot_of` and list slots serve trees whose decoder
    still asks for them (to time older code the same way)."""

    block_size, max_blocks_per_seq, device, gathers_key_window = BLOCK_SIZE, 128, torch.device("cpu"), True

    def __init__(self, logits: torch.Tensor) -> None:
        cache = lambda: torch.randn(BLOCKS, BLOCK_SIZE, 3, 64, dtype=torch.bfloat16)  # noqa: E731
        attention = [SimpleNamespace(k_cache=cache(), v_cache=cache()) for _ in range(LAYERS)]
        self.model = SimpleNamespace(layers=[SimpleNamespace(self_attn=layer) for layer in attention])
        self.logits = logits

    def padded_rows(self, rows: int, features: bool = False) -> int:
        return 1 << (rows - 1).bit_length()

    def collect_features(self, layer_ids) -> None:
        pass

    def decode_rows(self, input_ids, positions, meta, features=False):
        return self.logits[: input_ids.shape[0]].clone(), None

    def slot_of(self, seq: Sequence, position: int) -> int:
        return seq.block_table[position // BLOCK_SIZE] * BLOCK_SIZE + position % BLOCK_SIZE

    def copy_kv(self, sources, destinations) -> None:
        if not len(sources):
            return
        sources, destinations = (torch.as_tensor(slots, dtype=torch.int64) for slots in (sources, destinations))
        for layer in self.model.layers:
            for cache in (layer.self_attn.k_cache, layer.self_attn.v_cache):
                flat = cache.view(-1, *cache.shape[2:])
                flat.index_copy_(0, destinations, flat.index_select(0, sources))


class FixedTrees:
    aux_layer_ids = ()

    def propose(self, seqs, shape):
        return [TREE for _ in seqs] if DraftTrees is None else DraftTrees.from_trees([TREE for _ in seqs])

    def verified(self, *args) -> None:
        pass


class EveryBatch:
    def drafts_up_to(self, max_batch: int) -> bool:
        return True

    def shape_for(self, batch: int) -> TreeShape:
        return TreeShape(depth=2, tree_size=3)


def step_ms(batch: int, compiled: bool) -> float:
    rows = len(TREE) + 1
    logits = torch.full((512, VOCAB), -5.0)
    for seq in range(batch):
        root = seq * rows
        logits[root, 6 if seq % 2 == 0 else 5] = 5.0
        logits[root + 1, 7] = 5.0
    seqs = [Sequence(list(range(300 + 5 * i)), SamplingParams(temperature=0.0, max_tokens=500),
                     block_table=list(range(1 + 30 * i, 31 + 30 * i))) for i in range(batch)]
    decoder = SpeculativeDecoder(SimpleNamespace(runner=StandInRunner(logits)), FixedTrees(), EveryBatch(), 4096,
                                 8, 64, *([True] if compiled else []))
    times = []
    for _ in range(220):
        start = time.perf_counter()
        decoder.decode(seqs)
        times.append(time.perf_counter() - start)
    return statistics.median(times[20:]) * 1e3


def main() -> None:
    torch.set_num_threads(1)
    compiled = sys.argv[2:] == ["compiled"]
    for batch in (int(size) for size in (sys.argv[1] if len(sys.argv) > 1 else "1,2,4,8").split(",")):
        print(f"batch {batch}: {step_ms(batch, compiled):.3f} ms")


if __name__ == "__main__":
    main()
