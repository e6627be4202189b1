"""The wheel and the version: what `pip install` puts on a user's machine."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import xlstm

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_one_number_everywhere():
    from importlib.metadata import version

    shown = subprocess.run([sys.executable, "-m", "xlstm", "--version"], capture_output=True, text=True, check=True)
    assert shown.stdout.split() == ["xlstm-array", xlstm.__version__]
    assert version("xlstm-array") == xlstm.__version__


def test_wheel_installs_only_our_own_top_level_names(tmp_path):
    """No generic top-level name such as `backends`; the build (a few seconds) works offline."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.startswith(f"xlstm_array-{xlstm.__version__}-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"xlstm", "xlstm_backends"}
    assert "xlstm_backends/cuda_sources.py" in names and "xlstm/convert/__init__.py" in names
