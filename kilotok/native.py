"""Builds kilotok's C++ CPU ops (quant/csrc/, kernels/csrc/) the first time they are needed.

`torch.utils.cpp_extension` compiles a source once and caches it on disk; each build is named by its
sources' hash, so installs (or checkouts) with different sources keep their own builds instead of
rebuilding over each other. A build that fails is not an error: the caller runs its PyTorch path instead,
after one line on stderr that says why.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path


def load_cpu_ops(sources: list[Path], prefix: str, what: str, switch: str, fallback: str,
                 supported: Callable[[], bool], requirement: str) -> bool:
    """Build and load the ops of `sources` (one library) unless the environment variable `switch` is 0, and check with
    `supported` (one of the loaded ops) that this processor has what they need; False, with one line on
    stderr saying why and that `fallback` runs instead, where any of that fails."""
    if os.environ.get(switch) == "0":
        print(f"kilotok: {switch}=0: {fallback}", file=sys.stderr)
        return False
    if not build_cpu_ops(sources, prefix, what):
        return False
    if not supported():
        print(f"kilotok: this processor lacks {requirement}; {fallback}", file=sys.stderr)
        return False
    return True


def build_cpu_ops(sources: list[Path], prefix: str, what: str) -> bool:
    """Compile and load `sources` as one library (they register its ops with torch.library on load);
    False, with one line on stderr naming `what` and the fallback, where that fails."""
    from torch.utils import cpp_extension

    # Headers beside the sources are part of the build too. The sources' paths name it as well as their
    # contents: ninja rebuilds a build whose sources moved, so two checkouts sharing one name would rebuild
    # each other's library in turn.
    inputs = sorted({*sources, *(header for source in sources for header in source.parent.glob("*.h"))})
    digest = hashlib.sha256(b"".join(str(path.resolve()).encode() + path.read_bytes() for path in inputs))
    name = f"{prefix}_{digest.hexdigest()[:12]}"
    try:
        _find_ninja()
        if not any(Path(cpp_extension.get_default_build_root()).glob(f"*/{name}/{name}.so")):
            print(f"kilotok: compiling the {what} (once; cached on disk)", file=sys.stderr)
        cpp_extension.load(name=name, sources=[str(source) for source in sources], extra_cflags=["-O3", "-fopenmp"],
                           extra_ldflags=["-fopenmp"], is_python_module=False)
    except Exception as error:  # noqa: BLE001 - any build failure means the PyTorch path runs instead
        print(f"kilotok: the {what} could not be built ({type(error).__name__}: {error}); using the PyTorch "
              "path instead", file=sys.stderr)
        return False
    return True


def _find_ninja() -> None:
    """torch's extension builder runs `ninja` from PATH; the pip package installs it beside the interpreter,
    which is not on PATH when a virtual environment is used without activating it."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
