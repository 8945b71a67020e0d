"""Self-distillation: the target answers the prompts greedily with kilotok's own batched engine.

Responses are stored as JSONL (one record per prompt, token ids included) so that later sessions reuse
them with `--data DIR`, and so that features are computed on exactly the tokens the target produced.
"""

from __future__ import annotations

import json
from pathlib import Path

from kilotok.sampling_params import SamplingParams
from kilotok.train.data import TrainingPrompt

GENERATE_CHUNK = 64
"""Prompts handed to the engine at once: big enough to batch, small enough to write progress often."""


def distill(llm, prompts: list[TrainingPrompt], out_path: Path, max_response_tokens: int) -> list[dict]:
    """Answer every prompt not already in `out_path` (so an interrupted run resumes); returns all records."""
    records = read_records(out_path)
    done = {r["id"] for r in records}
    todo = [p for p in prompts if p.id not in done]
    params = SamplingParams(temperature=0, max_tokens=max_response_tokens)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(todo), GENERATE_CHUNK):
        chunk = todo[start : start + GENERATE_CHUNK]
        outputs = llm.generate([p.messages for p in chunk], params, use_tqdm=True)
        with out_path.open("a") as handle:
            for prompt, output in zip(chunk, outputs, strict=True):
                record = {"id": prompt.id, "prompt": prompt.text, "prompt_token_ids": list(output.prompt_token_ids),
                          "response_token_ids": list(output.token_ids)}
                handle.write(json.dumps(record) + "\n")
                records.append(record)
    wanted = {p.id for p in prompts}
    return [r for r in records if r["id"] in wanted]


def dataset_answer_records(tokenizer, prompts: list[TrainingPrompt], max_response_tokens: int,
                           answered: list[dict]) -> list[dict]:
    """Records for prompts the target has not answered, with ShareGPT's own answer as the response.

    Training still follows the target: its loss is against the target's distribution at every position,
    which is computed from the target's features on these tokens. Only the token path is not the target's
    greedy one, which is why self-distilled answers are preferred wherever they exist.
    """
    by_id = {r["id"]: r for r in answered}
    records = []
    for prompt in prompts:
        if prompt.id in by_id:
            records.append(by_id[prompt.id])
        elif prompt.dataset_answer:
            response = tokenizer.encode(prompt.dataset_answer, add_special_tokens=False)[:max_response_tokens]
            records.append({"id": prompt.id, "prompt": prompt.text, "source": "dataset",
                            "prompt_token_ids": tokenizer.encode_chat(prompt.messages),
                            "response_token_ids": response})
    return records


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
