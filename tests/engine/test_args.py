"""`kilotok generate` options and how they reach the engine: `--spec ...` to SpecConfig, `--check-tensors`,
`--backend` and `--no-pdl`."""

from __future__ import annotations

import argparse

import pytest

from kilotok.cli import generate
from kilotok.engine.args import engine_settings, spec_config
from kilotok.engine.engine_config import EngineConfig
from kilotok.errors import InvalidRequestError
from kilotok.speculative.config import SpecConfig


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kilotok")
    generate.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["generate", "--prompt", "hi", *argv])


def test_spec_options_build_the_config():
    args = _parse(["--spec", "eagle3", "--draft", "heads/h", "--spec-depth", "4", "--spec-topk", "3",
                   "--spec-tree-size", "10"])
    assert spec_config(args) == SpecConfig("eagle3", draft="heads/h", depth=4, topk=3, tree_size=10)
    assert spec_config(_parse([])) == SpecConfig()
    assert not SpecConfig().enabled


def test_bad_spec_values_are_refused():
    with pytest.raises(SystemExit):
        _parse(["--spec", "medusa"])
    with pytest.raises(InvalidRequestError, match="tree_size"):
        spec_config(_parse(["--spec", "eagle3", "--spec-tree-size", "0"]))
    with pytest.raises(InvalidRequestError, match="unknown"):
        SpecConfig.of("lookahead")


def test_check_tensors_is_off_unless_asked():
    assert engine_settings(_parse([]))["check_tensors"] is False
    assert engine_settings(_parse(["--check-tensors"]))["check_tensors"] is True
    assert EngineConfig().check_tensors is False
    with pytest.raises(InvalidRequestError, match="check_tensors='yes' is out of range"):
        EngineConfig(check_tensors="yes")


def test_backend_and_pdl_options_reach_the_engine_config():
    default = EngineConfig(**engine_settings(_parse([])))
    assert (default.backend, default.pdl) == ("auto", True)
    chosen = EngineConfig(**engine_settings(_parse(["--backend", "torch", "--no-pdl"])))
    assert (chosen.backend, chosen.pdl) == ("torch", False)
    with pytest.raises(SystemExit):
        _parse(["--backend", "cuda"])
    with pytest.raises(InvalidRequestError, match="kernel backend"):
        EngineConfig(backend="cuda")


def test_parallel_sizes_reach_the_engine_and_are_validated_once():
    settings = engine_settings(_parse(["--tensor-parallel-size", "4", "--expert-parallel-size", "2"]))
    assert (settings["tensor_parallel_size"], settings["expert_parallel_size"]) == (4, 2)
    assert EngineConfig(tensor_parallel_size=4, expert_parallel_size=2).parallel.world_size == 4
    with pytest.raises(InvalidRequestError, match="expert_parallel_size 2 must divide tensor_parallel_size 3"):
        EngineConfig(tensor_parallel_size=3, expert_parallel_size=2)


def test_device_reaches_the_engine_config_and_is_validated_once(monkeypatch):
    assert engine_settings(_parse([]))["device"] == "auto"
    assert EngineConfig(**engine_settings(_parse(["--device", "cpu"]))).device == "cpu"
    with pytest.raises(SystemExit):
        _parse(["--device", "tpu"])
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert EngineConfig().torch_device.type == "cpu"
    with pytest.raises(InvalidRequestError, match="needs a CUDA GPU"):
        EngineConfig(device="cuda")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    assert EngineConfig().torch_device.type == "cuda"
    assert EngineConfig(device="cuda", dtype="fp8-block").dtype == "fp8-block"
    with pytest.raises(InvalidRequestError, match="dtype 'int4' runs on the CPU only .* choose one of auto, fp32"):
        EngineConfig(device="cuda", dtype="int4")
    assert EngineConfig(device="cpu", dtype="int4").dtype == "int4"


def test_tensor_parallelism_on_cuda_is_refused_with_what_to_do(monkeypatch):
    """Ranks run on CPUs: several ranks with a CUDA device, asked for or picked by auto, are refused before
    anything starts; on the CPU, or with one rank on CUDA, the config stands."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    for device, said in (("cuda", "--device cuda"), ("auto", "--device auto picked cuda")):
        settings = engine_settings(_parse(["--device", device, "--tensor-parallel-size", "3"]))
        with pytest.raises(InvalidRequestError, match=f"CPUs only .*, and {said}: pass --device cpu") as error:
            EngineConfig(**settings)
        assert error.value.param == "device"
    with pytest.raises(InvalidRequestError, match="--device cuda:1: pass --device cpu"):
        EngineConfig(device="cuda:1", tensor_parallel_size=2)
    assert EngineConfig(device="cpu", tensor_parallel_size=3).torch_device.type == "cpu"
    assert EngineConfig(device="cuda", tensor_parallel_size=1).torch_device.type == "cuda"
