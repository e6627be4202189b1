"""NX-AI's reference xLSTM (the `xlstm` 2.0.6 wheel on the package registry), loaded under a private name.

Their package imports as `xlstm`, like ours, so the two cannot share an environment. It is installed
beside ours, never on the import path:

    pip install --no-deps --target .venv/nxai-reference xlstm==2.0.6 mlstm-kernels==2.0.6

and its modules are read from there as `_nxai_xlstm.*` (set XLSTM_NXAI_REFERENCE to use another
folder). Only its pure-PyTorch code paths are used: they are the oracle of the tests and the
baseline of `bench`. Nothing here is part of xlstm's own computations.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path
from typing import Any

PRIVATE_NAME = "_nxai_xlstm"
VERSION = "2.0.6"
INSTALL_COMMAND = (f"pip install --no-deps --target .venv/nxai-reference xlstm=={VERSION} "
                   f"mlstm-kernels=={VERSION}")


def reference_folder() -> Path:
    """Where the reference package is installed: $XLSTM_NXAI_REFERENCE, else <environment>/nxai-reference."""
    return Path(os.environ.get("XLSTM_NXAI_REFERENCE", Path(sys.prefix) / "nxai-reference"))


def unavailable_reason() -> str | None:
    """None when the reference can be loaded, else why not (the text tests skip with)."""
    try:
        import torch  # noqa: F401  (the reference is PyTorch code)
    except ImportError:
        return "the NX-AI reference needs torch, which is not installed"
    package = reference_folder() / "xlstm"
    if not (package / "blocks" / "mlstm" / "backends.py").is_file():
        return f"the NX-AI reference xlstm {VERSION} is not installed in {package.parent} ({INSTALL_COMMAND})"
    metadata = reference_folder() / f"xlstm-{VERSION}.dist-info"
    if not metadata.is_dir():
        return f"the package in {package.parent} is not NX-AI's xlstm {VERSION} ({INSTALL_COMMAND})"
    return None


def reference_module(name: str) -> Any:
    """The reference's module `name` (e.g. "blocks.mlstm.backends"), imported as `_nxai_xlstm.<name>`."""
    reason = unavailable_reason()
    if reason is not None:
        raise ImportError(reason)
    if PRIVATE_NAME not in sys.modules:  # the bare package: its __init__ (the whole model zoo) is not run
        package = types.ModuleType(PRIVATE_NAME)
        package.__path__ = [str(reference_folder() / "xlstm")]
        sys.modules[PRIVATE_NAME] = package
    return importlib.import_module(f"{PRIVATE_NAME}.{name}")
