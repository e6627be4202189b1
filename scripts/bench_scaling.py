"""Thin entry point: `OMP_NUM_THREADS=1 python scripts/bench_scaling.py [GLOBAL_BATCH]`: data-parallel
tokens/s predicted from one rank's measured compute on its rows and a model of the allreduce
(xlstm/parallel_bench.py). One thread: one core per rank.
"""
import sys

from xlstm.parallel_bench import format_scaling, predict_scaling

RANKS = (1, 2, 8, 64)
# name: (GB/s each rank sends at, latency in s): this machine's shared memory as scripts/bench_allreduce.py
# measured it (51 MB in 130 ms, loaded); the networks' are typical figures, assumed.
NETWORKS = {"this machine": (0.4, 50e-6), "10 GbE": (1.1, 50e-6), "100 Gb/s InfiniBand": (11.0, 3e-6)}

if __name__ == "__main__":
    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    print(f"global batch {batch}, window 64, float32; compute measured here, allreduce modelled")
    print(format_scaling(predict_scaling(batch, RANKS, NETWORKS)))
