"""A multi-rank launch without mpi4py: `train` exits 2 and says what to install (needs no MPI)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# mpi4py made unimportable, as in an environment without the `mpi` extra.
WITHOUT_MPI4PY = "import sys; sys.modules['mpi4py'] = None; from xlstm.__main__ import main; sys.exit(main(sys.argv[1:]))"


def test_train_on_several_ranks_without_mpi4py_exits_2_and_names_the_extra(tmp_path: Path) -> None:
    environment = {**os.environ, "PMI_SIZE": "2", "PMI_RANK": "0"}  # what mpiexec -n 2 announces
    done = subprocess.run([sys.executable, "-c", WITHOUT_MPI4PY, "train", "--out", str(tmp_path / "run"),
                           "--steps", "1"], capture_output=True, text=True, timeout=60, env=environment)
    assert done.returncode == 2
    assert "launched on 2 ranks" in done.stderr and "pip install 'xlstm-array[mpi]'" in done.stderr
    assert not (tmp_path / "run").exists()
