"""CurriculumSampler throughput: indices per second for N = 1M and 10M, every strategy.

    python benchmarks/sampler.py [--sizes 1000000 10000000] [--out bench-results]

``epoch_indices`` is the vectorised draw of a whole epoch; ``iter`` is the Python iterator a
DataLoader consumes (measured on the first 1M indices).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, print_table, write_json  # noqa: E402

from curriculum import pacing  # noqa: E402
from curriculum.sampling import STRATEGIES, CurriculumBatchSampler, CurriculumSampler  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args()
    rows = []
    for n in a.sizes:
        scores = np.random.default_rng(0).random(n)
        labels = np.random.default_rng(1).integers(0, 100, n)
        steps = n // a.batch_size
        configs = [(s, None) for s in STRATEGIES] + [("threshold", "class")]
        for strategy, balance in configs:
            t = time.perf_counter()
            s = CurriculumSampler(scores, pacing.Root(0.1, steps), strategy=strategy, batch_size=a.batch_size,
                                  balance=balance, groups=labels if balance else None)
            t_init = time.perf_counter() - t
            t = time.perf_counter()
            idx = s.epoch_indices(0)
            t_epoch = time.perf_counter() - t
            m = min(n, 1_000_000)
            t = time.perf_counter()
            for _ in itertools.islice(iter(s), m):
                pass
            t_iter = time.perf_counter() - t
            bs = CurriculumBatchSampler(scores, pacing.Root(0.1, steps), batch_size=a.batch_size, strategy=strategy,
                                        balance=balance, groups=labels if balance else None)
            t = time.perf_counter()
            nb = 0
            for _ in itertools.islice(iter(bs), m // a.batch_size):
                nb += 1
            t_batch = time.perf_counter() - t
            rows.append({"N": n, "strategy": strategy + (f"+{balance}" if balance else ""), "setup_s": t_init,
                         "epoch_indices_per_s": len(idx) / t_epoch, "iter_indices_per_s": m / t_iter,
                         "batch_sampler_indices_per_s": nb * a.batch_size / t_batch})
            print_table(rows[-1:], list(rows[-1]))
    text = print_table(rows, ["N", "strategy", "setup_s", "epoch_indices_per_s", "iter_indices_per_s",
                              "batch_sampler_indices_per_s"], f"CurriculumSampler, batch {a.batch_size}")
    write_json(os.path.join(a.out, "sampler.json"), {"machine": machine(), "rows": rows, "table": text})


if __name__ == "__main__":
    main()
