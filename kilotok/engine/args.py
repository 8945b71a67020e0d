"""Arguments that several commands share: which model to load, and how to sample."""

from __future__ import annotations

import argparse

from kilotok.kernels.backend import BACKEND_CHOICES
from kilotok.kernels.device import DEVICE_CHOICES
from kilotok.quant.formats import DTYPE_CHOICES
from kilotok.sampling_params import SamplingParams
from kilotok.speculative.config import SPEC_METHODS, SpecConfig


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="smollm2-135m",
                       help="a model alias (smollm2-135m), a .gguf file or a Hugging Face folder "
                            "(default: %(default)s)")
    group.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                       help="where the model runs: auto takes CUDA where torch sees a GPU, else the CPU "
                            "(default: %(default)s)")
    group.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                       help="weight format; auto runs a GGUF's 4-bit weights (int4) and FP8 checkpoints as stored, "
                            "else bf16. int8/int4 are weight-only (bf16/fp32 activations). fp8-tensor/-channel/-block "
                            "quantize weights to E4M3 per tensor, per output channel or in 128x128 blocks, and "
                            "activations per token (per 128 group for blocks); fp8 keeps stored FP8 weights and "
                            "quantizes the rest in blocks; on CUDA only the float and fp8 formats run, and auto "
                            "takes a GGUF's 4-bit weights as bf16 (default: %(default)s)")
    group.add_argument("--max-model-len", type=int, default=None,
                       help="context window in tokens (default: the model's)")
    group.add_argument("--kv-cache-gb", type=float, default=1.0, help="KV-cache memory (default: %(default)s)")
    group.add_argument("--gpu-memory-utilization", type=float, default=0.9, metavar="SHARE",
                       help="on CUDA, the share of the GPU's memory to fill: weights, activations and CUDA graphs "
                            "first, the KV cache gets the rest (default: %(default)s)")
    group.add_argument("--no-compile", action="store_true",
                       help="run the decode step eagerly instead of with torch.compile")
    group.add_argument("--no-cuda-graphs", action="store_true",
                       help="on CUDA, run the decode step eagerly instead of replaying CUDA graphs captured at "
                            "start-up")
    group.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                       help="kernel implementations: triton runs kilotok's Triton kernels on a CUDA device, torch the "
                            "PyTorch reference; auto picks triton where CUDA and Triton are available "
                            "(default: %(default)s)")
    group.add_argument("--no-pdl", action="store_true",
                       help="launch Triton kernels without Programmatic Dependent Launch (on by default on "
                            "Hopper and newer GPUs)")
    group.add_argument("--check-tensors", action="store_true",
                       help="check every loaded weight (values and quantization scales) for NaN and infinity "
                            "before running, naming any damaged tensor")
    group.add_argument("--tensor-parallel-size", type=int, default=1, metavar="N",
                       help="split the model over N processes (ranks): kilotok starts them, or joins the ranks "
                            "a torchrun launch started (default: %(default)s)")
    group.add_argument("--expert-parallel-size", type=int, default=1, metavar="M",
                       help="spread a mixture-of-experts model's experts over M groups of those ranks; "
                            "M divides N (default: %(default)s)")


def engine_settings(args: argparse.Namespace) -> dict:
    return {
        "device": args.device,
        "dtype": args.dtype,
        "max_model_len": args.max_model_len,
        "kv_cache_gb": args.kv_cache_gb,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "compile": not args.no_compile,
        "cuda_graphs": not args.no_cuda_graphs,
        "check_tensors": args.check_tensors,
        "backend": args.backend,
        "pdl": not args.no_pdl,
        "tensor_parallel_size": args.tensor_parallel_size,
        "expert_parallel_size": args.expert_parallel_size,
    }


def add_spec_args(parser: argparse.ArgumentParser) -> None:
    defaults = SpecConfig()
    group = parser.add_argument_group("speculative decoding (lossless: the output distribution is unchanged)")
    group.add_argument("--spec", choices=SPEC_METHODS, default="none",
                       help="ngram: prompt lookup; eagle3: a trained draft head (default: %(default)s)")
    group.add_argument("--draft", default=None,
                       help="EAGLE-3 head folder (default: the head shipped for the model)")
    group.add_argument("--spec-depth", type=int, default=defaults.depth,
                       help="longest draft path (default: %(default)s)")
    group.add_argument("--spec-topk", type=int, default=defaults.topk,
                       help="EAGLE-3 branching per node and level (default: %(default)s)")
    group.add_argument("--spec-tree-size", type=int, default=defaults.tree_size,
                       help="most draft tokens verified per step (default: %(default)s)")
    group.add_argument("--spec-policy", default=None, metavar="FILE",
                       help="tree shape by batch size, from `kilotok bench spec-policy` (default: the table "
                            "shipped for the model on this device; without one, the configured tree up to batch 4 "
                            "on the CPU, at every batch size on CUDA)")


def spec_config(args: argparse.Namespace) -> SpecConfig:
    return SpecConfig(method=args.spec, draft=args.draft, depth=args.spec_depth, topk=args.spec_topk,
                      tree_size=args.spec_tree_size, policy=args.spec_policy)


def add_sampling_args(parser: argparse.ArgumentParser, default_temperature: float) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate (default: %(default)s)")
    group.add_argument("--temperature", type=float, default=default_temperature,
                       help="0 is greedy (default: %(default)s)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: %(default)s)")
    group.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 is off")
    group.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p times the top one")
    group.add_argument("--seed", type=int, default=None, help="makes sampled output reproducible")
    group.add_argument("--stop", action="append", default=None, help="a stop string (repeatable)")
    group.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence")


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        seed=args.seed,
        max_tokens=args.max_tokens,
        stop=args.stop,
        ignore_eos=args.ignore_eos,
    )
