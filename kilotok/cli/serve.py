"""`kilotok serve`: an OpenAI-compatible HTTP server for one model."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from kilotok.engine.args import add_model_args, add_spec_args, engine_settings, spec_config

EXAMPLES = """examples:
  kilotok serve --port 8000
  kilotok serve --model smollm2-135m --spec eagle3 --max-num-seqs 16 --api-key secret

then:
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi!"}]}'

Routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (stream: true for server-sent
events), GET /health, GET /metrics (Prometheus, vLLM's metric names).
"""

GRACEFUL_SHUTDOWN_S = 30
"""After SIGTERM, running responses get this long to finish before uvicorn cancels them."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve the OpenAI API (completions, chat completions) over HTTP",
        description="Serve a model over an OpenAI-compatible HTTP API, with continuous batching.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(parser)
    add_spec_args(parser)
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    group.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    group.add_argument("--max-num-seqs", type=int, default=32,
                       help="most requests decoded together in one batch (default: %(default)s)")
    group.add_argument("--kv-cache-blocks", type=int, default=None,
                       help="KV-cache size in blocks of 16 tokens; overrides --kv-cache-gb")
    group.add_argument("--api-key", default=None,
                       help="require 'Authorization: Bearer KEY' on /v1 routes (default: no key)")
    group.add_argument("--no-warm-up", action="store_true",
                       help="start serving before compiling the steps of every batch size: each then compiles "
                            "when a batch of its size first runs, stalling the requests in it")
    group.add_argument("--served-model-name", default=None,
                       help="the model name clients send and see (default: the --model value)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from kilotok.llm import LLM
    from kilotok.server.app import build_app

    llm = LLM(args.model, progress=True, spec=spec_config(args), max_num_seqs=args.max_num_seqs,
              kv_cache_blocks=args.kv_cache_blocks, **engine_settings(args))
    if llm.engine.config.compile and not args.no_warm_up:
        print("kilotok: compiling the steps of every batch size up to --max-num-seqs (cached after the first run)",
              file=sys.stderr)
        start = time.perf_counter()
        llm.engine.warm_up()
        print(f"kilotok: steps compiled in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    app = build_app(llm.engine, args.served_model_name or args.model, api_key=args.api_key,
                    start_engine_thread=False)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info",
                                           timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S))
    print(f"kilotok: serving {args.served_model_name or args.model} on http://{args.host}:{args.port}/v1",
          file=sys.stderr)
    return _serve(server, app.state.kilotok.async_engine)


def _serve(server, async_engine) -> int:
    """HTTP on a thread of its own, the engine loop on this (the main) thread, which loaded and compiled the
    model: see server/async_engine.py for why. SIGTERM and SIGINT start uvicorn's graceful shutdown, whose
    end stops the engine loop."""

    def serve_http() -> None:
        try:
            server.run()
        finally:
            async_engine.stop(timeout_s=0)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, server.handle_exit)
    http = threading.Thread(target=serve_http, name="kilotok-http")
    http.start()
    async_engine.run()
    http.join()
    if not server.started:
        print(f"kilotok: the server could not start on {server.config.host}:{server.config.port} "
              "(see the error above)", file=sys.stderr)
        return 1
    return 0
