"""`kilotok chat`: an interactive chat in the terminal that streams the answer as it is generated."""

from __future__ import annotations

import argparse
import sys

from kilotok.engine.args import add_model_args, add_sampling_args, engine_settings, sampling_params

HELP_TEXT = "Type a message and press Enter. /reset starts a new conversation, /exit (or Ctrl-D) quits."


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "chat", help="chat with a model interactively",
        description=f"Chat with a model in the terminal. {HELP_TEXT}",
    )
    parser.add_argument("--system", default=None, help="a system message for the conversation")
    add_model_args(parser)
    add_sampling_args(parser, default_temperature=0.7)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kilotok.llm import LLM

    params = sampling_params(args)
    llm = LLM(args.model, progress=True, **engine_settings(args))
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    print(HELP_TEXT, file=sys.stderr)
    while True:
        try:
            user_text = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        command = user_text.strip()
        if command == "/exit":
            return 0
        if command == "/reset":
            messages = list(system)
            continue
        if not command:
            continue
        messages.append({"role": "user", "content": user_text})
        answer = _stream_answer(llm, messages, params)
        messages.append({"role": "assistant", "content": answer})


def _stream_answer(llm, messages: list[dict], params) -> str:
    pieces = []
    output = None
    for output in llm.stream(messages, params):
        sys.stdout.write(output.delta_text)
        sys.stdout.flush()
        pieces.append(output.delta_text)
    sys.stdout.write("\n")
    if output is not None:
        print(f"[{output.num_output_tokens} tokens, {output.decode_tokens_per_s:.1f} tok/s]", file=sys.stderr)
    return "".join(pieces)
