"""The small classification task every framework script trains on, and how results are written.

512 samples, 8 features, 4 classes; fixed difficulty scores (their ranks are what the checks read);
batches of 16; a linear pacing over the first 40 steps. Every script records the dataset indices of
each batch its training step received, per rank, and the recorder's loss EMA at the end.
"""

import json
import os
import sys

import numpy as np
import torch

N, DIM, CLASSES, BATCH = 512, 8, 4, 16
rng = np.random.default_rng(0)
X = rng.normal(size=(N, DIM)).astype(np.float32)
Y = (X @ rng.normal(size=(DIM, CLASSES))).argmax(1).astype(np.int64)
SCORES = rng.random(N)


def pacing():
    import curriculum as cl

    return cl.pacing.Linear(0.2, 40)


def rank_world():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def close_group_and_exit():
    """Destroy the process group the framework left open, then leave without the interpreter's
    teardown: at exit native threads (gloo's, the framework's) were otherwise torn down unjoined
    now and then ("terminate called without an active exception", SIGABRT on a rank that had
    finished and written its results - one HF resume run in a make test; after the group was
    destroyed here, still one HF 2-rank run in five). Only after a run that finished: an error
    in the run raises before this and exits non-zero."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def write(out, tag, batches, recorder):
    r, _ = rank_world()
    ema = np.nan_to_num(recorder.loss_ema, nan=-1.0).tolist() if recorder is not None else None
    with open(os.path.join(out, f"{tag}-rank{r}.json"), "w") as f:
        json.dump({"batches": batches, "loss_ema": ema}, f)


def parse_args():
    """``OUT TAG --epochs E [--max-steps S] [--resume CHECKPOINT]``, the same for every script."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("tag")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=-1, help="stop (and checkpoint) after this many steps")
    ap.add_argument("--resume", default=None, help="the framework's checkpoint to resume from")
    return ap.parse_args()
