"""`kilotok train-draft` end to end: prompts -> target answers -> target features -> training -> held-out
acceptance -> a saved head whose config records what it was trained on.

Every stage keeps its output in the data folder (answers as JSONL, features as safetensors), so a later
run with `--data` reuses them, and `--init-from` continues training a head on more data.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from kilotok.errors import InvalidRequestError
from kilotok.loader.checkpoint import Checkpoint
from kilotok.models.builder import build_model
from kilotok.models.registry import load_checkpoint, model_config
from kilotok.quant.formats import resolve_weight_format
from kilotok.speculative.eagle3.checkpoint import load_eagle3, read_training_record, save_eagle3
from kilotok.speculative.eagle3.config import Eagle3Config
from kilotok.speculative.eagle3.model import Eagle3DraftModel
from kilotok.train.data import TrainingPrompt, load_prompts
from kilotok.train.distill import dataset_answer_records, distill, read_records
from kilotok.train.eval import estimate_acceptance
from kilotok.train.features import FeatureSet, build_feature_set, draft_vocabulary
from kilotok.train.fit import FitSettings, fit
from kilotok.train.init import dense_weight, init_from_target, target_head_weight


@dataclass(frozen=True)
class TrainDraftSettings:
    out: Path
    model: str = "smollm2-135m"
    data: Path | None = None
    num_prompts: int = 400
    num_held_out: int = 32
    max_response_tokens: int = 128
    draft_vocab_size: int = 8192
    aux_layer_ids: tuple[int, int, int] | None = None
    init_from: Path | None = None
    resume: bool = False
    device: str = "cpu"
    target_dtype: str = "auto"
    compile: bool = True
    answers: str = "target"
    """Who answers the training prompts: "target" (self-distillation) or "dataset" (ShareGPT's answers,
    except where the data folder already holds the target's own); held-out prompts are always the target's."""
    fit: FitSettings = field(default_factory=FitSettings)

    def __post_init__(self) -> None:
        if self.num_prompts < 1 or self.num_held_out < 1 or self.max_response_tokens < 1:
            raise InvalidRequestError("--num-prompts, --num-held-out and --max-response-tokens must be >= 1")
        if self.fit.epochs < 1 or self.fit.batch_size < 1 or self.fit.ttt_steps < 1 or self.fit.lr <= 0:
            raise InvalidRequestError("--epochs, --batch-size and --ttt-steps must be >= 1 and --lr > 0")
        if self.answers not in ("target", "dataset"):
            raise InvalidRequestError(f"--answers must be target or dataset, not {self.answers!r}")


def run_train_draft(settings: TrainDraftSettings) -> dict:
    """Train (or continue training) a head and save it to `settings.out`; returns the training record."""
    started = time.perf_counter()
    checkpoint = load_checkpoint(settings.model, progress=False)
    data_dir = settings.data or settings.out / "data"
    train_prompts, held_out_prompts = load_prompts(settings.num_prompts, settings.num_held_out)
    if settings.answers == "dataset":
        held_out_records = _answers(settings, data_dir, held_out=held_out_prompts)["held_out"]
        train_records = dataset_answer_records(checkpoint.tokenizer, train_prompts, settings.max_response_tokens,
                                               read_records(data_dir / "train.jsonl"))
    else:
        answers = _answers(settings, data_dir, train=train_prompts, held_out=held_out_prompts)
        train_records, held_out_records = answers["train"], answers["held_out"]
    embedding = dense_weight(checkpoint, "model.embed_tokens.weight")
    head_weight = target_head_weight(checkpoint)
    draft = _initial_draft(settings, checkpoint, embedding, head_weight, train_records)
    aux_ids = draft.config.aux_layer_ids
    train_features, held_out_features = _features(settings, checkpoint, data_dir, aux_ids,
                                                  train_records, held_out_records)
    device = torch.device(settings.device)
    draft.to(device)
    head_rows = head_weight[draft.draft_vocab_target_ids().cpu()].to(device)
    history = fit(draft, train_features, head_rows, settings.fit, settings.out / "training_state.pt",
                  settings.resume)
    estimate = estimate_acceptance(draft, held_out_features, head_rows, settings.fit.ttt_steps)
    previous = read_training_record(settings.init_from) if settings.init_from else {}
    tokens_seen = train_features.num_response_tokens * settings.fit.epochs
    record = {
        "target_model": settings.model,
        "train_prompts": len(train_records),
        "train_answers_from_target": sum(r.get("source") != "dataset" for r in train_records),
        "train_response_tokens": train_features.num_response_tokens,
        "train_tokens_with_prompts": int(train_features.token_ids.numel()),
        "max_response_tokens": settings.max_response_tokens,
        "epochs": settings.fit.epochs,
        "tokens_seen": tokens_seen,
        "cumulative_tokens_seen": tokens_seen + previous.get("cumulative_tokens_seen", 0),
        "init_from": str(settings.init_from) if settings.init_from else "target last layer",
        "fit": asdict(settings.fit),
        "epoch_loss": history.epoch_loss,
        "epoch_step0_accuracy": history.epoch_accuracy,
        "held_out_prompts": len(held_out_records),
        "held_out_positions": estimate.positions,
        "held_out_acceptance_length": estimate.acceptance_length,
        "held_out_step_accuracy": list(estimate.step_accuracy),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    save_eagle3(draft.cpu(), settings.out, training=record)
    return record


def _answers(settings: TrainDraftSettings, data_dir: Path, **splits: list[TrainingPrompt]) -> dict[str, list[dict]]:
    """The target's greedy answers per split, generated only for prompts that the data folder lacks."""
    paths = {name: data_dir / f"{name}.jsonl" for name in splits}
    have = {name: read_records(path) for name, path in paths.items()}
    if all({p.id for p in splits[name]} <= {r["id"] for r in have[name]} for name in splits):
        return {name: _in_order(splits[name], have[name]) for name in splits}
    from kilotok.llm import LLM

    llm = LLM(settings.model, dtype=settings.target_dtype, compile=settings.compile, progress=False,
              max_num_seqs=64, device=settings.device)
    return {name: _in_order(prompts, distill(llm, prompts, paths[name], settings.max_response_tokens))
            for name, prompts in splits.items()}


def _in_order(prompts: list[TrainingPrompt], records: list[dict]) -> list[dict]:
    by_id = {r["id"]: r for r in records}
    return [by_id[p.id] for p in prompts if p.id in by_id]


def _initial_draft(settings: TrainDraftSettings, checkpoint: Checkpoint, embedding: torch.Tensor,
                   head_weight: torch.Tensor, train_records: list[dict]) -> Eagle3DraftModel:
    if settings.init_from is not None:
        return load_eagle3(settings.init_from, model_config(checkpoint.config), embedding).float()
    torch.manual_seed(settings.fit.seed)
    config = Eagle3Config.for_target(model_config(checkpoint.config), settings.draft_vocab_size,
                                     settings.aux_layer_ids)
    draft = Eagle3DraftModel(config, embedding)
    draft.set_draft_vocab(draft_vocabulary(train_records, config.draft_vocab_size, config.target_vocab_size))
    init_from_target(draft, checkpoint, head_weight, torch.Generator().manual_seed(settings.fit.seed))
    return draft


def _features(settings: TrainDraftSettings, checkpoint: Checkpoint, data_dir: Path, aux_ids: tuple[int, ...],
              *splits: list[dict]) -> list[FeatureSet]:
    """Features per split, cached in the data folder under a name that says what they were computed from."""
    # The target runs where the head trains, in the format it was distilled in there (int4 is CPU-only).
    fmt = resolve_weight_format(settings.target_dtype, checkpoint.weights, settings.device)
    tag = f"{fmt.name}-aux{'_'.join(map(str, aux_ids))}"
    target = None
    result = []
    for name, records in zip(("train", "held_out"), splits, strict=True):
        path = data_dir / f"features-{name}-{len(records)}-{tag}.safetensors"
        if path.is_file():
            result.append(FeatureSet.load(path))
            continue
        target = target or build_model(checkpoint, fmt, progress=False, device=settings.device)
        features = build_feature_set(target, records, aux_ids, desc=f"target features ({name})")
        features.save(path)
        result.append(features)
    return result
