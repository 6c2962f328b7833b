"""Selecting the informative part of a stream that is never seen twice.

    python examples/streaming_selection.py [--items 60000]

Fashion-MNIST images arrive as a stream in which 60% of the items are near-repeats of recent
ones (a camera that keeps filming the same objects). A ``StreamSelector`` keeps 20% of every
window of 500 by novelty (distance to its sliding-window store of emitted embeddings, here a
random projection of the pixels), picked farthest-point greedy, and is fed to a DataLoader -
in one process, and with 2 workers each reading its own shard of the stream.
Reports how many distinct objects the kept items cover, against a random 20%.
"""

import argparse

import numpy as np
from torch.utils.data import DataLoader

from curriculum.data import load_real
from curriculum.stream import StreamSelector

ap = argparse.ArgumentParser()
ap.add_argument("--items", type=int, default=60000)
args = ap.parse_args()
ds = load_real()
rng = np.random.default_rng(0)
side = ds.images.shape[-1]  # 28 for Fashion-MNIST, 8 for the scikit-learn digits fallback
basis = rng.normal(size=(side * side, 32)).astype(np.float32) / side


def stream():
    """(object id, image) pairs: 60% of items are lightly perturbed copies of one of the last 20
    objects seen, the rest are new objects."""
    recent = []
    r = np.random.default_rng(1)
    for i in range(args.items):
        if recent and r.random() < 0.6:
            obj, img = recent[r.integers(len(recent))]
            yield obj, np.clip(img + r.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)
        else:
            img = ds.images[i % len(ds.images)]
            recent = (recent + [(i, img)])[-20:]
            yield i, img


def embed(items):
    x = np.stack([im for _, im in items]).reshape(len(items), -1).astype(np.float32) / 255.0
    return x @ basis


all_objs = [obj for obj, _ in stream()]
print(f"stream of {args.items} items ({len(set(all_objs))} distinct objects, 60% near-repeats); keeping 20% of "
      "every window of 500")
for workers in (0, 2):
    sel = StreamSelector(stream, embed=embed, window=500, keep=0.2, store_size=20_000)
    kept = [int(obj) for obj, _ in DataLoader(sel, batch_size=None, num_workers=workers)]
    rand = np.random.default_rng(2).choice(len(all_objs), len(kept), replace=False)
    print(f"  {workers} DataLoader workers: kept {len(kept)} items covering {len(set(kept))} distinct objects "
          f"(a random {len(kept)} cover {len(set(all_objs[i] for i in rand))})")
print("with workers each shard keeps its own window store, so an object repeated in both shards can be kept twice")
