"""`kilotok quantize`: write a model's linear layers in FP8 or int8 as a Hugging Face folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from kilotok.models.registry import load_checkpoint
from kilotok.quant.quantize_checkpoint import WRITE_SCHEMES, quantize_checkpoint

EXAMPLES = """examples:
  kilotok quantize --out models/smollm2-fp8 --scheme fp8-block
  kilotok generate --model models/smollm2-fp8 --prompt "Hello"      # runs the FP8 weights as stored
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "quantize", help="write a model with FP8 or int8 weights as a Hugging Face folder",
        description=(
            "Quantize the decoder's linear layers and write config.json (with quantization_config), "
            "model.safetensors and the tokenizer files. fp8-block and fp8-tensor use quant_method fp8 "
            "(block: 128x128, scales in <name>_scale_inv), fp8-channel uses fbgemm_fp8 (<name>_scale per row), "
            "int8 uses compressed-tensors int-quantized. Embeddings, norms, routers and the LM head stay as "
            "they are."
        ),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="smollm2-135m",
                        help="a model alias, a .gguf file or a Hugging Face folder (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (new or empty)")
    parser.add_argument("--scheme", choices=WRITE_SCHEMES, default="fp8-block",
                        help="weight format (default: %(default)s)")
    parser.add_argument("--quantize-lm-head", action="store_true",
                        help="quantize the LM head too (a tied head is written as its own tensor)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.model)
    folder = quantize_checkpoint(checkpoint, args.out, args.scheme, args.quantize_lm_head)
    print(f"wrote {args.scheme} weights of {checkpoint.name} to {folder}")
    return 0
