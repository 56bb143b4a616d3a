"""scipy's side of the FID row: tr sqrt(S1 S2) by scipy.linalg.sqrtm(S1 @ S2), the way the ADM
evaluator, pytorch-fid and TTUR compute it, on random full-rank 2048-d covariances built like
metrics/examples/fid_timing.rs (A A^T / d + 0.01 I). Prints the median of `repeats` runs.

usage: python bench/fid_sqrtm.py [dim] [repeats]
"""
import sys
import time

import numpy as np
from scipy import linalg


def random_cov(d, seed):
    rng = np.random.default_rng(seed)
    a = rng.random((d, d)) - 0.5
    return a @ a.T / d + 0.01 * np.eye(d)


def main():
    d = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    s1, s2 = random_cov(d, 1), random_cov(d, 2)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        covmean = linalg.sqrtm(s1.dot(s2))
        if isinstance(covmean, tuple):  # scipy < 1.16 returns (sqrtm, errest) on some paths
            covmean = covmean[0]
        trace = np.trace(covmean).real
        times.append(time.perf_counter() - t)
    times.sort()
    print(f"scipy sqrtm dim {d}: median {times[len(times) // 2]:.3f} s over {repeats} (tr sqrt {trace:.9f})")


if __name__ == "__main__":
    main()
