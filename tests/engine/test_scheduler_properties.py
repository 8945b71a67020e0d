"""The engine's books under generated operation sequences: hypothesis adds, steps, aborts and preempts
requests against a small KV cache, with the real Scheduler, BlockManager and stop rules and a simulated
model that records which tokens' keys and values each cache slot holds.

After every operation: every usable block is free, evictable or referenced, never two of these; reference
counts equal the block tables that hold each block; a shared block is a cached, full block below every
holder's cache mark; every computed position a sequence reads holds the keys and values of its own
prefix, and every prefix-cache entry those of its key's tokens; a step stays within its token budget,
batch size and the blocks it was given, and writes only blocks no other sequence holds. At the end every
request that was not aborted finishes, and the cache is idle again."""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from kilotok.engine.block_manager import BlockManager
from kilotok.engine.output import OutputProcessor
from kilotok.engine.scheduler import Scheduler
from kilotok.runner.decoder import DraftOutcome, ScheduledBatch, StepResult
from kilotok.sampling_params import SamplingParams
from kilotok.sequence import Sequence
from tests.engine.books import check_blocks, check_idle
from tests.tiny_engine import EOS, VOCAB, StubTokenizer

MAX_DRAIN_STEPS = 2_000
"""Far more steps than the largest generated workload needs, even recomputing after every preemption."""


@dataclass(frozen=True)
class Setup:
    block_size: int
    num_blocks: int
    max_num_seqs: int
    budget: int
    lookahead: int
    max_model_len: int
    prefix_caching: bool


setups = st.builds(Setup, block_size=st.sampled_from([1, 2, 4]), num_blocks=st.integers(2, 24),
                   max_num_seqs=st.integers(1, 4), budget=st.integers(1, 16),
                   lookahead=st.sampled_from([0, 0, 2, 3]), max_model_len=st.integers(4, 40),
                   prefix_caching=st.booleans())
# Every prompt starts with 3 to 12 tokens of one of two stems, so leading blocks are shared, reused and evicted.
STEMS = ([0, 1, 2] * 4, [3, 3, 1, 1] * 3)
prompts = st.builds(lambda stem, cut, tail: stem[:cut] + tail, st.sampled_from(STEMS), st.integers(3, 12),
                    st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=4))
requests = st.tuples(prompts, st.integers(1, 10), st.booleans(), st.booleans())


class SimulatedModel:
    """Does a step's work the way the runner and decoders do, on a KV cache of token prefixes: position p
    of a sequence holds the tuple of its tokens up to p. Decoding sequences may accept up to `lookahead`
    draft tokens (their K/V written past the sequence's end, as a speculative step writes them)."""

    def __init__(self, manager: BlockManager, lookahead: int) -> None:
        self.manager = manager
        self.lookahead = lookahead
        self.kv: dict[tuple[int, int], object] = {}

    def read(self, seq: Sequence, position: int) -> object:
        size = self.manager.block_size
        return self.kv.get((seq.block_table[position // size], position % size))

    def _write(self, seq: Sequence, position: int, value: object) -> None:
        size = self.manager.block_size
        block = seq.block_table[position // size]
        assert self.manager.ref_counts[block] == 1, f"seq {seq.seq_id} writes block {block}, which others hold"
        self.kv[(block, position % size)] = value

    def run(self, batch: ScheduledBatch, rng: random.Random) -> list[StepResult]:
        results = []
        for index, (seq, count, sample) in enumerate(zip(batch.seqs, batch.num_new_tokens, batch.samples,
                                                         strict=True)):
            start = seq.num_cached_tokens
            assert count >= 1 and start + count <= min(len(seq), len(seq.block_table) * self.manager.block_size)
            # Sampling needs the logits of the last token, so that token is computed in this step.
            assert sample == (start + count == len(seq))
            for position in range(start, start + count):
                self._write(seq, position, tuple(seq.token_ids[: position + 1]))
            if index < batch.num_decodes and self.lookahead:
                results.append(self._speculate(seq, rng))
            else:
                results.append(StepResult([rng.randrange(VOCAB)] if sample else [], count))
        return results

    def _speculate(self, seq: Sequence, rng: random.Random) -> StepResult:
        """Accept some drafts (their K/V written after the root's) and add a bonus token; rejected drafts
        leave throw-away K/V in the sequence's own blocks."""
        room = len(seq.block_table) * self.manager.block_size - len(seq)
        accepted = [rng.randrange(VOCAB) for _ in range(rng.randint(0, min(self.lookahead, room)))]
        for offset, _ in enumerate(accepted):
            self._write(seq, len(seq) + offset, tuple(seq.token_ids + accepted[: offset + 1]))
        for position in range(len(seq) + len(accepted), len(seq) + min(self.lookahead, room)):
            self._write(seq, position, "rejected draft")
        tokens = [*accepted, rng.randrange(VOCAB)]
        return StepResult(tokens, len(tokens), DraftOutcome(len(accepted), len(accepted), len(accepted)))


class EngineBooks(RuleBasedStateMachine):
    @initialize(setup=setups, first=st.lists(requests, min_size=1, max_size=4))
    def build(self, setup: Setup, first: list[tuple[list[int], int, bool, bool]]) -> None:
        self.setup = setup
        self.manager = BlockManager(setup.num_blocks, setup.block_size, setup.prefix_caching)
        self.scheduler = Scheduler(self.manager, setup.max_num_seqs, setup.budget, setup.lookahead,
                                   setup.max_model_len)
        self.outputs = OutputProcessor(StubTokenizer(), setup.max_model_len)
        self.model = SimulatedModel(self.manager, setup.lookahead)
        self.seqs: list[Sequence] = []
        self.aborted: set[int] = set()
        self.key_tokens: dict[bytes, tuple[int, ...]] = {}
        self.counters = (0, 0)
        for request in first:
            self.add(request)

    @rule(request=requests)
    def add(self, request: tuple[list[int], int, bool, bool]) -> None:
        prompt, max_tokens, ignore_eos, stop_string = request
        # Cut to what LLMEngine.new_request accepts: a request that can finish even alone in the cache.
        room = self.manager.num_usable_blocks * self.setup.block_size - self.setup.lookahead
        cached_alone = room + self.setup.lookahead >= self.setup.max_model_len
        prompt = prompt[: max(0, self.setup.max_model_len - 1 if cached_alone else room - 1)]
        if not prompt:
            return
        max_tokens = max_tokens if cached_alone else min(max_tokens, room - len(prompt))
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=ignore_eos,
                                stop=["<3><4>"] if stop_string else None)
        seq = Sequence(prompt, params, text=self.outputs.new_text_state())
        self.seqs.append(seq)
        self.scheduler.add(seq)

    @rule(seed=st.integers(0, 2**32 - 1))
    def step(self, seed: int) -> None:
        batch = self.scheduler.schedule()
        if batch is None:
            assert not self.scheduler.has_unfinished(), "requests are waiting but no step could be planned"
            return
        assert sum(batch.num_new_tokens) <= self.setup.budget and len(batch.seqs) <= self.setup.max_num_seqs
        assert len({seq.seq_id for seq in batch.seqs}) == len(batch.seqs)
        self._check_lookahead(batch)
        results = self.model.run(batch, random.Random(seed))
        self.scheduler.postprocess(batch, results, self.outputs)

    def _check_lookahead(self, batch: ScheduledBatch) -> None:
        for seq in batch.decode_seqs:
            assert seq.num_cached_tokens == len(seq) - 1
            wanted = max(len(seq), min(len(seq) + self.setup.lookahead, self.setup.max_model_len))
            assert len(seq.block_table) * self.setup.block_size >= wanted

    @rule(pick=st.integers(0, 63))
    def abort(self, pick: int) -> None:
        unfinished = [seq for seq in self.seqs if not seq.is_finished]
        if unfinished:
            seq = unfinished[pick % len(unfinished)]
            self.scheduler.finish(seq, "abort")  # what LLMEngine.abort does for an unfinished request
            self.aborted.add(seq.seq_id)

    @rule(pick=st.integers(0, 63))
    def preempt(self, pick: int) -> None:
        if self.scheduler.running:
            self.scheduler.preempt(self.scheduler.running[pick % len(self.scheduler.running)])

    @invariant()
    def books_balance(self) -> None:
        check_blocks(self.manager, self.scheduler, self.seqs)
        self._check_contents()
        query, hits = self.manager.prefix_query_tokens, self.manager.prefix_hit_tokens
        assert hits <= query and query >= self.counters[0] and hits >= self.counters[1]
        self.counters = (query, hits)

    def _check_contents(self) -> None:
        """Every computed token a running sequence reads, and every prefix-cache entry, holds the keys and
        values of exactly its prefix."""
        for seq in self.scheduler.running:
            for position in range(min(seq.num_cached_tokens, len(seq))):
                assert self.model.read(seq, position) == tuple(seq.token_ids[: position + 1]), (seq, position)
        size = self.setup.block_size
        for seq in self.seqs:
            for index, key in enumerate(seq.block_hashes):
                self.key_tokens[key] = tuple(seq.token_ids[: (index + 1) * size])
        cache = self.manager.prefix_cache
        for key, block in (cache.block_of.items() if cache else ()):
            tokens = self.key_tokens[key]
            for offset in range(size):
                assert self.model.kv[(block, offset)] == tokens[: len(tokens) - size + offset + 1]

    def teardown(self) -> None:
        if not hasattr(self, "manager"):
            return  # the example ended before `build` drew its setup
        for seed in range(MAX_DRAIN_STEPS):
            if not self.scheduler.has_unfinished():
                break
            self.step(seed)
            self.books_balance()
        assert not self.scheduler.has_unfinished(), f"requests still unfinished after {MAX_DRAIN_STEPS} steps"
        for seq in self.seqs:
            check_finished(seq, seq.seq_id in self.aborted, self.setup.max_model_len)
        check_idle(self.manager)


def check_finished(seq: Sequence, aborted: bool, max_model_len: int) -> None:
    assert seq.is_finished and not seq.block_table
    params = seq.params
    assert seq.num_output_tokens <= params.max_tokens
    if aborted:
        assert seq.finish_reason == "abort"
    elif seq.finish_reason == "length":
        assert seq.num_output_tokens == params.max_tokens or len(seq) == max_model_len
    else:
        assert seq.finish_reason == "stop"
        ended_by_eos = seq.token_ids[-1] == EOS and not params.ignore_eos
        assert ended_by_eos or seq.text.stopped_by_string


EngineBooks.TestCase.settings = settings(
    max_examples=400, stateful_step_count=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_engine_books = EngineBooks.TestCase
