"""The batch-size policy: table lookups, capping to the reserved KV slots, and its JSON file."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kilotok.errors import InvalidRequestError
from kilotok.speculative import policy as policy_module
from kilotok.speculative.config import DEFAULT_POLICY, SpecConfig
from kilotok.speculative.decoder import build_decoder
from kilotok.speculative.ngram import NgramDrafter
from kilotok.speculative.policy import SHIPPED_POLICIES, SpecPolicy, TreeShape, device_family, processor_family

POLICY = SpecPolicy(((1, TreeShape(6, 16)), (4, TreeShape(4, 6)), (8, None), (16, TreeShape(1, 1))))


def test_each_batch_size_gets_the_first_row_that_covers_it():
    assert [POLICY.shape_for(b) for b in (1, 2, 4, 5, 8, 9, 16, 17)] == [
        TreeShape(6, 16), TreeShape(4, 6), TreeShape(4, 6), None, None, TreeShape(1, 1), TreeShape(1, 1), None,
    ]


def test_capping_never_exceeds_the_configured_tree():
    capped = POLICY.capped(TreeShape(depth=5, tree_size=5))
    assert capped.shape_for(1) == TreeShape(5, 5) and capped.shape_for(3) == TreeShape(4, 5)
    assert capped.shape_for(6) is None


def test_a_policy_drafts_up_to_a_batch_size_when_any_size_up_to_it_gets_a_tree():
    shape = TreeShape(3, 3)
    late = SpecPolicy(((2, None), (8, shape)))
    assert not late.drafts_up_to(1) and not late.drafts_up_to(2) and late.drafts_up_to(3) and late.drafts_up_to(64)
    assert not SpecPolicy(((1, None), (8, None))).drafts_up_to(64)
    assert not SpecPolicy(()).drafts_up_to(4)
    assert SpecPolicy.fixed(shape).drafts_up_to(1)


def test_verify_rows_peak_where_batch_times_tree_is_largest():
    # 1 x 17, 4 x 7 = 28, 8 x 1, 16 x 2 = 32, then 32 sequences with no tree.
    assert [POLICY.max_verify_rows(b) for b in (1, 4, 8, 16, 32)] == [17, 28, 28, 32, 32]


def test_json_round_trip(tmp_path):
    path = POLICY.save(tmp_path / "policy.json")
    assert SpecPolicy.load(path) == POLICY
    config = SpecConfig(method="ngram", depth=3, policy=str(path))
    assert config.tree_policy().shape_for(1) == TreeShape(3, 3)


def test_bad_tables_are_rejected(tmp_path):
    with pytest.raises(InvalidRequestError, match="increasing"):
        SpecPolicy(((4, None), (2, None)))
    with pytest.raises(InvalidRequestError, match="does not exist"):
        SpecPolicy.load(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"limits": [{"depth": 2}]}')
    with pytest.raises(InvalidRequestError, match="max_batch_size"):
        SpecPolicy.load(broken)


def test_ngram_chains_follow_the_shape():
    drafter = NgramDrafter(min_ngram=1, max_ngram=3, num_tokens=8)
    context = [1, 2, 3, 4, 5, 6, 7, 1, 2]

    class Seq:
        token_ids = context

    assert drafter.propose([Seq()], TreeShape(depth=2, tree_size=8)).tokens.tolist() == [[3, 4]]
    assert drafter.propose([Seq()], TreeShape(depth=8, tree_size=3)).tokens.tolist() == [[3, 4, 5]]


def test_processor_families_tell_amx_and_vnni_apart():
    assert processor_family({"avx512f", "avx512_vnni", "amx_tile", "amx_int8"}) == "avx512-vnni-amx"
    assert processor_family({"avx512f", "avx512_vnni"}) == "avx512-vnni"
    assert processor_family({"avx2", "fma"}) is None


def test_the_table_shipped_for_the_model_and_processor_is_picked(tmp_path, monkeypatch):
    shipped = tmp_path / "smollm2-135m"
    POLICY.save(shipped / "eagle3-avx512-vnni.json")
    monkeypatch.setattr(policy_module, "SHIPPED_POLICIES", tmp_path)
    monkeypatch.setattr(policy_module, "_cpu_flags", lambda: {"avx512f", "avx512_vnni"})
    config = SpecConfig(method="eagle3", depth=8, tree_size=16)
    assert config.tree_policy("smollm2-135m") == POLICY.capped(TreeShape(8, 16))
    assert config.tree_policy("other-model") == DEFAULT_POLICY.capped(TreeShape(8, 16))
    assert config.tree_policy("../smollm2-135m") == DEFAULT_POLICY.capped(TreeShape(8, 16))
    monkeypatch.setattr(policy_module, "_cpu_flags", lambda: {"avx512f", "avx512_vnni", "amx_tile"})
    assert config.tree_policy("smollm2-135m") == DEFAULT_POLICY.capped(TreeShape(8, 16))


def test_gpu_families_are_named_after_the_card(monkeypatch):
    monkeypatch.setattr(policy_module, "_gpu_name", lambda device: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(policy_module, "_cpu_flags", lambda: {"avx512f", "avx512_vnni"})
    assert device_family(torch.device("cuda", 1)) == "cuda-nvidia-h100-80gb-hbm3"
    assert device_family("cpu") == "avx512-vnni"
    assert device_family("meta") is None


def test_a_gpu_never_gets_the_host_processors_table(tmp_path, monkeypatch, capsys):
    """On CUDA: the table shipped for that card; without one the configured tree at every batch size, and one
    line that says so, although the host processor has a table (which drafts at no batch size here)."""
    never = SpecPolicy(((1, None), (8, None)))
    never.save(tmp_path / "smollm2-135m" / "eagle3-avx512-vnni.json")
    monkeypatch.setattr(policy_module, "SHIPPED_POLICIES", tmp_path)
    monkeypatch.setattr(policy_module, "_cpu_flags", lambda: {"avx512f", "avx512_vnni"})
    monkeypatch.setattr(policy_module, "_gpu_name", lambda device: "NVIDIA H200")
    config = SpecConfig(method="eagle3", depth=5, topk=4, tree_size=16)
    assert config.tree_policy("smollm2-135m", "cpu") == never
    capsys.readouterr()

    on_gpu = config.tree_policy("smollm2-135m", torch.device("cuda"))
    assert on_gpu == SpecPolicy.fixed(TreeShape(5, 16))
    assert [on_gpu.shape_for(b) for b in (1, 8, 64, 1024)] == [TreeShape(5, 16)] * 4
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "cuda-nvidia-h200" in lines[0] and "every batch size" in lines[0]

    POLICY.save(tmp_path / "smollm2-135m" / "eagle3-cuda-nvidia-h200.json")
    assert config.tree_policy("smollm2-135m", "cuda:0") == POLICY.capped(TreeShape(5, 16))
    monkeypatch.setattr(policy_module, "_gpu_name", lambda device: "NVIDIA H100 80GB HBM3")
    assert config.tree_policy("smollm2-135m", "cuda:0") == SpecPolicy.fixed(TreeShape(5, 16))
    capsys.readouterr()


def test_the_speculative_decoder_takes_the_policy_of_its_runners_device(monkeypatch, capsys):
    monkeypatch.setattr(policy_module, "_gpu_name", lambda device: "NVIDIA H200")
    spec = SpecConfig(method="ngram", depth=4)
    for device, want in (("cpu", DEFAULT_POLICY.capped(TreeShape(4, 4))), ("cuda", SpecPolicy.fixed(TreeShape(4, 4)))):
        target = SimpleNamespace(runner=SimpleNamespace(device=torch.device(device)))
        decoder = build_decoder(spec, target, None, "smollm2-135m", max_model_len=64, max_num_seqs=32,
                                compile_steps=False)
        assert decoder.policy == want
    capsys.readouterr()


def test_a_policy_file_wins_on_every_device(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(policy_module, "_gpu_name", lambda device: "NVIDIA H200")
    path = POLICY.save(tmp_path / "mine.json")
    config = SpecConfig(method="eagle3", depth=8, tree_size=16, policy=str(path))
    for device in ("cpu", "cuda"):
        assert config.tree_policy("smollm2-135m", device) == POLICY.capped(TreeShape(8, 16))
    assert capsys.readouterr().err == ""


def test_every_shipped_table_loads():
    tables = list(SHIPPED_POLICIES.glob("*/*.json"))
    assert tables, f"no policy tables under {SHIPPED_POLICIES}"
    for path in tables:
        assert SpecPolicy.load(path).limits, path
