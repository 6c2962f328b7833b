"""The ``curriculum`` command.

    curriculum demo   [--data PATH] [--out DIR] [--quick]   the main job on real data
    curriculum report RUN_DIR                               redraw a demo run's figures
    curriculum bench  [--quick] [--sizes N ...] [--sections ...] [--world 4] [--out DIR] mining speed vs peers
    curriculum score  [--data PATH] [--k 10] [--noise 0.2]  score a real dataset and report
    curriculum inspect EMBEDDINGS [--labels L] [--items I] --out DIR   scores and report.html of your data
    curriculum info                                         versions, threads, data found
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence


def _info(_: argparse.Namespace) -> int:
    import faiss
    import numpy
    import torch

    import curriculum
    from curriculum.cli.data import load_fashion_mnist

    print(f"curriculum {curriculum.__version__}")
    print(f"torch {torch.__version__}, faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), "
          f"numpy {numpy.__version__}")
    print(f"CUDA available: {torch.cuda.is_available()}; faiss GPUs: {getattr(faiss, 'get_num_gpus', lambda: 0)()}")
    print(_faiss_blas_line())
    try:
        print(f"data: {load_fashion_mnist().source}")
    except FileNotFoundError as exc:
        print(f"data: {exc}")
    return 0


def _faiss_blas_line() -> str:
    from curriculum._util.blas import faiss_blas_core, faiss_blas_env

    core, env = faiss_blas_core(), faiss_blas_env()
    line = f"faiss BLAS: {'OpenBLAS kernels ' + core if core else 'not a bundled OpenBLAS'}"
    if env:
        line += (f" (generic: OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']} set before faiss loads gives it this "
                 f"CPU's kernels; curriculum's own heavy paths run on torch)")
    return line


def _score(a: argparse.Namespace) -> int:
    from curriculum.cli.demo import scoring_report

    scoring_report(data=a.data, k=a.k, noise=a.noise, dim=a.dim, limit=a.limit, seed=a.seed)
    return 0


def _inspect(a: argparse.Namespace) -> int:
    from curriculum.cli.inspect_cmd import run_inspect, summary_numbers

    res = run_inspect(a.embeddings, a.out, labels=a.labels, items=a.items, metric=a.metric, k=a.k)
    for key, v in summary_numbers(res).items():
        print(f"  {key}: {v}")
    print(f"wrote {os.path.join(a.out, 'scores.npz')}, flagged.csv ({len(res.flagged)} rows), report.html")
    return 0


def _bench(a: argparse.Namespace) -> int:
    import subprocess

    from curriculum._util.blas import faiss_blas_env
    from curriculum.cli.bench import check_bench_args, run_bench

    sizes = a.sizes or ([20_000] if a.quick else [100_000, 1_000_000])
    sections = tuple(x.strip() for x in a.sections.split(",") if x.strip())
    check_bench_args(sizes, sections)
    env = faiss_blas_env()
    if env is not None:  # faiss's peers at their best: its OpenBLAS reads the variable when it loads
        print(f"faiss's OpenBLAS runs generic kernels here: running the bench with "
              f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}", flush=True)
        return subprocess.run([sys.executable, "-m", "curriculum.cli", *a.argv], env=env).returncode
    run_bench(sizes, dim=a.dim, out=a.out, data=a.data, quick=a.quick, sections=sections, scores_n=a.scores_n,
              max_method_s=a.max_method_s, peers=not a.no_peers, only=a.datasets, world=a.world)
    return 0


def _report(a: argparse.Namespace) -> int:
    from curriculum.cli.report import draw

    for p in draw(a.run_dir):
        print(f"wrote {p}")
    return 0


def _demo(a: argparse.Namespace) -> int:
    from curriculum.cli.demo import run_demo

    run_demo(data=a.data, out=a.out, quick=a.quick, seeds=a.seeds, device=a.device)
    return 0


def _add_bench_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="mining speed: all-points kNN graph vs faiss flat/IVF/HNSW and the installed "
                                     "peers on real, clustered and isotropic data; geometry scores, global and "
                                     "in-batch mining (vs pytorch-metric-learning), sampler, loader; table, JSON, PNG")
    b.add_argument("--quick", action="store_true",
                   help="N = 20,000 and fewer settings (every section in about 3 minutes)")
    b.add_argument("--sizes", type=int, nargs="+", default=None, help="N values (default 100000 1000000)")
    b.add_argument("--dim", type=int, default=128, help="embedding dimension of the synthetic sets (default 128)")
    b.add_argument("--data", default=None, help="folder with the Fashion-MNIST IDX files (default: search)")
    b.add_argument("--out", default="bench-results", help="output folder (default: bench-results)")
    b.add_argument("--sections", default="knn,scores,mining,inbatch,sampler,loader,noise,curation,stream,distributed",
                   help="comma-separated subset of knn,scores,mining,inbatch,sampler,loader,noise,curation,stream,"
                        "distributed (default: all)")
    b.add_argument("--world", type=int, default=4,
                   help="distributed section: gloo ranks spawned on this machine (default 4; N = the largest size)")
    b.add_argument("--scores-n", type=int, nargs="+", default=None,
                   help="N values for the scores section (default: the smallest size)")
    b.add_argument("--max-method-s", type=float, default=600.0,
                   help="skip a peer whose run at the previous N predicts more seconds than this (default 600)")
    b.add_argument("--no-peers", action="store_true", help="knn section: ours and exact faiss only")
    b.add_argument("--datasets", default=None, metavar="TEXT",
                   help="knn section: only the data sets whose name contains TEXT (e.g. CNN, text, clustered)")
    b.set_defaults(func=_bench)


def build_parser() -> argparse.ArgumentParser:
    from curriculum import __version__

    p = argparse.ArgumentParser(prog="curriculum", description="Curriculum learning and global hard-sample mining "
                                "for PyTorch, on a faiss-indexed embedding store.")
    p.add_argument("--version", action="version", version=f"curriculum {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = sub.add_parser("demo", help="train a small CNN on real data: uniform vs curriculum vs anti vs online "
                                    "hard-sample selection, clean and noisy long-tailed; tables and figures")
    d.add_argument("--data", default=None, help="folder holding the Fashion-MNIST IDX files (default: search)")
    d.add_argument("--out", default="runs/demo", help="output folder for JSON and PNG (default: runs/demo)")
    d.add_argument("--quick", action="store_true", help="a small run (under two minutes), used by the tests")
    d.add_argument("--seeds", type=int, default=None, help="seeds per method (default: 3, or 1 with --quick)")
    d.add_argument("--device", default="cpu", help="torch device for the CNN, e.g. cuda (default: cpu)")
    d.set_defaults(func=_demo)

    s = sub.add_parser("score", help="embed a real dataset (pixel PCA), score every sample, report label-noise "
                                     "detection and what a curriculum would draw")
    s.add_argument("--data", default=None, help="folder holding the Fashion-MNIST IDX files (default: search)")
    s.add_argument("--k", type=int, default=10, help="neighbours per sample for the kNN scores (default 10)")
    s.add_argument("--noise", type=float, default=0.2, help="share of labels flipped (symmetric noise)")
    s.add_argument("--dim", type=int, default=64, help="pixel-PCA embedding dimension (default 64)")
    s.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    s.add_argument("--seed", type=int, default=0, help="seed of the label noise and the PCA (default 0)")
    s.set_defaults(func=_score)

    n = sub.add_parser("inspect", help="your own embeddings: label issues, near-duplicates, outliers, difficulty and "
                                       "cluster balance as arrays, a CSV of flagged samples and a static report.html")
    n.add_argument("embeddings", help=".npy / .npz / .pt, or a folder of such shards")
    n.add_argument("--labels", default=None, help=".npy / .txt (one per line) / .csv (a 'label' column)")
    n.add_argument("--items", default=None, help="what to show per row: .txt / .csv captions or paths, .npy images")
    n.add_argument("--out", required=True, help="output folder")
    n.add_argument("--metric", default="cosine", choices=("cosine", "l2", "ip"),
                   help="distance between embeddings (default cosine)")
    n.add_argument("--k", type=int, default=10, help="neighbours per sample (default 10)")
    n.set_defaults(func=_inspect)

    _add_bench_parser(sub)

    r = sub.add_parser("report", help="redraw the figures of a finished demo run from its results.json")
    r.add_argument("run_dir", help="the demo's --out folder")
    r.set_defaults(func=_report)

    i = sub.add_parser("info", help="versions, threads and which real data is found")
    i.set_defaults(func=_info)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; a user error (a missing folder, a bad value) prints one line and returns 2
    (``CURRICULUM_DEBUG=1`` shows the traceback instead)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, NotADirectoryError, ValueError, TypeError) as exc:
        if os.environ.get("CURRICULUM_DEBUG"):
            raise
        print(f"curriculum {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = ['build_parser', 'main']
