"""The sampler API with your own DataLoader: scores, pacing, resume mid-epoch.

    python examples/sampler_api.py [--steps 200]

Difficulty comes from the store (kNN label disagreement on pixel-PCA embeddings of
Fashion-MNIST), a Root pacing admits more of the hard end as steps go by, and the DataLoader is
built by the user with ``batch_sampler=CurriculumBatchSampler(...)``. Half-way, the run is
"crashed": its state is saved, a fresh sampler and DataLoader are built, the state loaded, and
the remaining batches are checked to be exactly those of the uninterrupted run.
"""

import argparse

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import curriculum as cl
from curriculum.data import load_real, pixel_pca

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=200)
args = ap.parse_args()
ds = load_real()
images, labels = ds.images[:20000], ds.labels[:20000]
store = cl.EmbeddingStore(32, metric="cosine")
store.add(pixel_pca(images, 32), labels=labels)
scores = cl.difficulty.label_disagreement(store, k=10)
dataset = TensorDataset(torch.tensor(images, dtype=torch.float32).div(255), torch.from_numpy(labels))


def make_loader():
    bs = cl.CurriculumBatchSampler(scores, cl.pacing.Root(start=0.1, steps=args.steps), batch_size=128, seed=0,
                                   num_samples=128 * args.steps)
    return bs, DataLoader(dataset, batch_sampler=bs, num_workers=2)


ranks = scores.rank()
bs, loader = make_loader()
reference = [batch[1].numpy() for batch in loader]  # the uninterrupted run (labels as a fingerprint)
bs, loader = make_loader()
half, seen = args.steps // 2, []
for i, (x, y) in enumerate(loader):
    seen.append(y.numpy())
    if i + 1 == half:
        state = bs.state_dict(batches_consumed=half)  # workers prefetched ahead: say what was used
        break
bs2, loader2 = make_loader()
bs2.load_state_dict(state)
seen += [y.numpy() for _, y in loader2]
same = all(np.array_equal(a, b) for a, b in zip(seen, reference)) and len(seen) == len(reference)
drawn = bs2.sampler.epoch_indices(0).reshape(args.steps, 128)
print(f"{ds.source}: {len(reference)} batches; resumed run identical to uninterrupted: {same}")
for q in range(4):
    a, b = q * args.steps // 4, (q + 1) * args.steps // 4
    print(f"steps {a:4d}-{b:4d}: competence {bs.sampler.pacing(a):.2f}, mean difficulty rank drawn "
          f"{ranks[drawn[a:b]].mean():.3f}")
