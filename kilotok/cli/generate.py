"""`kilotok generate`: complete one prompt or a JSONL file of prompts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kilotok.engine.args import (
    add_model_args,
    add_sampling_args,
    add_spec_args,
    engine_settings,
    sampling_params,
    spec_config,
)
from kilotok.errors import InvalidRequestError

EXAMPLES = """examples:
  kilotok generate --prompt "Write a haiku about the sea." --chat
  kilotok generate --prompts-file prompts.jsonl --max-tokens 64 --json > out.jsonl
  kilotok generate --prompt "Repeat this list: ..." --spec ngram

A prompts file holds one JSON object per line: {"prompt": "..."} or {"messages": [{"role": ..., "content": ...}]}.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate text for one prompt or a file of prompts",
        description="Generate completions with the default model or any local GGUF / Hugging Face model.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the prompt text")
    source.add_argument("--prompts-file", type=Path, help="a JSONL file of prompts (see below)")
    parser.add_argument("--chat", action="store_true", help="apply the model's chat template to plain prompts")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per prompt on stdout and nothing else")
    add_model_args(parser)
    add_spec_args(parser)
    add_sampling_args(parser, default_temperature=0.0)
    parser.set_defaults(run=run)


def read_prompts(args: argparse.Namespace) -> list:
    records = [{"prompt": args.prompt}] if args.prompt is not None else _read_jsonl(args.prompts_file)
    prompts = []
    for record in records:
        if "messages" in record:
            prompts.append(record["messages"])
        elif args.chat:
            prompts.append([{"role": "user", "content": record["prompt"]}])
        else:
            prompts.append(record["prompt"])
    return prompts


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise InvalidRequestError(f"prompts file {path} does not exist")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidRequestError(f"{path}:{number} is not valid JSON: {error}") from None
        if not isinstance(record, dict) or not ({"prompt", "messages"} & record.keys()):
            raise InvalidRequestError(f'{path}:{number} needs a "prompt" or a "messages" field')
        records.append(record)
    if not records:
        raise InvalidRequestError(f"prompts file {path} holds no prompts")
    return records


def run(args: argparse.Namespace) -> int:
    from kilotok.llm import LLM

    params = sampling_params(args)
    prompts = read_prompts(args)
    llm = LLM(args.model, progress=True, spec=spec_config(args), **engine_settings(args))
    outputs = llm.generate(prompts, params, use_tqdm=len(prompts) > 1)
    for output in outputs:
        if args.json:
            print(json.dumps(output.to_json_dict(), ensure_ascii=False), flush=True)
        else:
            print(output.text, flush=True)
            print(f"[{output.num_output_tokens} tokens, finish={output.finish_reason}, "
                  f"ttft {output.ttft_s * 1000:.0f} ms, {output.decode_tokens_per_s:.1f} tok/s, "
                  f"acceptance length {output.acceptance_length:.2f}]", file=sys.stderr)
    return 0
