"""Thin entry point: `mpiexec -n 2 python scripts/bench_allreduce.py [REPEATS]` (see xlstm/parallel_bench.py)."""
import sys

from xlstm_backends import get_communicator
from xlstm.parallel_bench import bench_allreduce, format_rows

if __name__ == "__main__":
    communicator = get_communicator()
    if communicator.size == 1:
        sys.exit("run it under mpiexec with 2 or more ranks: mpiexec -n 2 python scripts/bench_allreduce.py")
    rows = bench_allreduce(communicator, repeats=int(sys.argv[1]) if len(sys.argv) > 1 else 30)
    if communicator.rank == 0:
        print(format_rows(rows, communicator))
