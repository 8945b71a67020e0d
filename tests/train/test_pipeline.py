"""`kilotok train-draft` end to end on the default model with a handful of prompts and a tiny budget."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from kilotok.cli.main import main
from kilotok.models.registry import load_checkpoint, model_config
from kilotok.speculative.eagle3 import load_eagle3
from kilotok.train import fit as fit_module
from kilotok.train.data import load_prompts
from kilotok.train.fit import FitSettings
from kilotok.train.pipeline import TrainDraftSettings, run_train_draft

pytestmark = pytest.mark.slow

TINY = FitSettings(epochs=2, batch_size=2, lr=2e-3, ttt_steps=3, seed=7, warmup_steps=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run whose epoch-1 training state is kept aside, to resume from later."""
    out = tmp_path_factory.mktemp("head")
    kept = tmp_path_factory.mktemp("kept") / "epoch1.pt"
    original_save = fit_module._save

    def save_and_keep(path, model, optimizer, scheduler, epoch, history):
        original_save(path, model, optimizer, scheduler, epoch, history)
        if epoch == 1:
            shutil.copy(path, kept)

    # fp32 features: the int4 kernels are slow at prefill on the CPU, and these tiny runs need only speed.
    settings = TrainDraftSettings(out=out, num_prompts=4, num_held_out=1, max_response_tokens=8,
                                  draft_vocab_size=256, target_dtype="fp32", compile=False, fit=TINY)
    fit_module._save = save_and_keep
    try:
        record = run_train_draft(settings)
    finally:
        fit_module._save = original_save
    return settings, record, kept


def test_prompt_split_is_disjoint_and_stable():
    train, held_out = load_prompts(30, 3)
    assert len(train) == 30 and len(held_out) == 3
    assert not {p.id for p in train} & {p.id for p in held_out}
    assert [p.id for p in load_prompts(5, 1)[1]] == [p.id for p in held_out[:1]]


def test_run_saves_a_loadable_head_with_its_record(trained):
    settings, record, _ = trained
    checkpoint = load_checkpoint(settings.model, progress=False)
    target = model_config(checkpoint.config)
    embedding = torch.zeros(target.vocab_size, target.hidden_size)
    head = load_eagle3(settings.out, target, embedding)
    assert head.config.draft_vocab_size == 256 and head.config.aux_layer_ids == (2, 15, 27)
    assert record["train_prompts"] == 4 and record["train_answers_from_target"] == 4
    assert record["tokens_seen"] == 2 * record["train_response_tokens"] > 0
    assert 1.0 <= record["held_out_acceptance_length"] <= 1 + TINY.ttt_steps
    assert (settings.out / "data" / "train.jsonl").is_file()


def test_loss_decreases(trained):
    losses = trained[1]["epoch_loss"]
    assert losses[-1] < losses[0]


def test_resume_from_an_epoch_checkpoint_matches_an_uninterrupted_run(trained, tmp_path):
    settings, _, kept = trained
    resumed_out = tmp_path / "resumed"
    resumed_out.mkdir()
    shutil.copy(kept, resumed_out / "training_state.pt")
    run_train_draft(replace(settings, out=resumed_out, data=settings.out / "data", resume=True))
    expected = load_file(str(settings.out / "model.safetensors"))
    got = load_file(str(resumed_out / "model.safetensors"))
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_cli_rejects_bad_settings(capsys):
    assert main(["train-draft", "--out", "/tmp/unused", "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err
