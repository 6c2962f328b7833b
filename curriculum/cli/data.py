"""Real data that loads offline, and the standard realistic variants built from it.

* :func:`load_fashion_mnist` - Fashion-MNIST from a torchvision-style root, a folder holding the
  four IDX files (gzipped or not), ``$CURRICULUM_FMNIST`` or the Debian package path.
* :func:`load_digits` - scikit-learn's 8x8 digits, shipped inside its wheel (always available).
* :func:`long_tailed` (CIFAR-LT protocol, Cao et al. 2019), :func:`symmetric_noise`,
  :func:`pixel_pca` (embeddings with no pretrained model).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._util import checks as C

DEBIAN_FMNIST = "/usr/share/datasets/fashion-mnist"
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")


@dataclass(frozen=True)
class ImageSet:
    """Images (uint8, ``(n, h, w)``), integer labels, class names and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    source: str


def _fmnist_candidates(path: str | os.PathLike | None) -> list[Path]:
    if path is not None:  # an explicit folder is the only place looked at (no silent fallback)
        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"data: {str(p)!r} is not a folder (expected one holding the Fashion-MNIST IDX files)")
        return [p, p / "FashionMNIST" / "raw", p / "raw", p / "fashion-mnist"]
    roots = []
    env = os.environ.get("CURRICULUM_FMNIST")
    if env:
        roots += [Path(env), Path(env) / "FashionMNIST" / "raw"]
    roots.append(Path(DEBIAN_FMNIST))
    return roots


def _read_idx(folder: Path, stem: str, offset: int) -> np.ndarray | None:
    for name, opener in ((stem + ".gz", gzip.open), (stem, open)):
        f = folder / name
        if f.is_file():
            with opener(f, "rb") as fh:
                return np.frombuffer(fh.read(), np.uint8, offset=offset)
    return None


def load_fashion_mnist(path: str | os.PathLike | None = None, train: bool = True) -> ImageSet:
    """Load Fashion-MNIST offline; raises ``FileNotFoundError`` listing every place looked at.

    Example:
        >>> ds = load_fashion_mnist()            # doctest: +SKIP
        >>> ds.images.shape                      # doctest: +SKIP
        (60000, 28, 28)
    """
    split = "train" if train else "t10k"
    looked = []
    for folder in _fmnist_candidates(path):
        looked.append(str(folder))
        imgs = _read_idx(folder, f"{split}-images-idx3-ubyte", 16)
        labs = _read_idx(folder, f"{split}-labels-idx1-ubyte", 8)
        if imgs is not None and labs is not None:
            images = imgs.reshape(-1, 28, 28).copy()  # writable: torch.from_numpy warns on read-only buffers
            if images.shape[0] != labs.shape[0]:
                raise ValueError(f"path: {folder} holds {images.shape[0]} images but {labs.shape[0]} labels")
            return ImageSet(images, labs.astype(np.int64), FMNIST_CLASSES, f"Fashion-MNIST ({split}) from {folder}")
    raise FileNotFoundError(
        f"Fashion-MNIST {split} files ({split}-images-idx3-ubyte[.gz], {split}-labels-idx1-ubyte[.gz]) not found; "
        f"looked in: {', '.join(looked)}. Install the Debian package dataset-fashion-mnist (as root), "
        "or pass a folder holding the IDX files, or set CURRICULUM_FMNIST.")


def load_digits() -> ImageSet:
    """scikit-learn's 1,797 8x8 digits (pixel values rescaled to 0..255 uint8)."""
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return ImageSet(images, d.target.astype(np.int64), tuple(str(i) for i in range(10)), "scikit-learn digits")


def load_real(path: str | os.PathLike | None = None, train: bool = True) -> ImageSet:
    """Fashion-MNIST when found, else the scikit-learn digits."""
    try:
        return load_fashion_mnist(path, train)
    except FileNotFoundError:
        if path is not None:
            raise
        return load_digits()


def long_tailed(labels: np.ndarray, rho: float = 100.0, seed: int = 0) -> np.ndarray:
    """Indices of a long-tailed subset: class c keeps ``n_max * (1/rho)**(c/(C-1))`` samples.

    The CIFAR-10-LT protocol (Cao et al. 2019); class 0 is the head. Returns sorted indices.
    """
    labels = C.as_labels(labels, "labels", len(labels))
    rho = C.finite_float(rho, "rho", 1.0)
    classes = np.unique(labels)
    n_max = min(int((labels == c).sum()) for c in classes)
    rng = np.random.default_rng(seed)
    keep = []
    for j, c in enumerate(classes):
        n_c = int(n_max * (1.0 / rho) ** (j / max(len(classes) - 1, 1)))
        idx = np.flatnonzero(labels == c)
        keep.append(rng.choice(idx, max(n_c, 1), replace=False))
    return np.sort(np.concatenate(keep))


def symmetric_noise(labels: np.ndarray, rate: float, num_classes: int | None = None,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Replace a ``rate`` share of labels by a *different* class drawn uniformly.

    Returns ``(noisy_labels, flipped_mask)``; exactly ``round(rate * n)`` labels change.
    """
    labels = C.as_labels(labels, "labels", len(labels))
    rate = C.finite_float(rate, "rate", 0.0, 1.0)
    k = int(num_classes or labels.max() + 1)
    rng = np.random.default_rng(seed)
    n = len(labels)
    flip = np.zeros(n, bool)
    flip[rng.choice(n, int(round(rate * n)), replace=False)] = True
    noisy = labels.copy()
    shift = rng.integers(1, k, n)
    noisy[flip] = (labels[flip] + shift[flip]) % k
    return noisy, flip


def pixel_pca(images: np.ndarray, dim: int = 64, seed: int = 0, fit_on: int | None = 20_000) -> np.ndarray:
    """Embed images by PCA of their pixels (faiss.PCAMatrix), centred; float32 ``(n, dim)``."""
    import faiss

    x = np.ascontiguousarray(images.reshape(len(images), -1), np.float32) / 255.0
    dim = C.positive_int(dim, "dim")
    if dim > x.shape[1]:
        raise ValueError(f"dim: expected at most the pixel count {x.shape[1]}, got {dim}")
    pca = faiss.PCAMatrix(x.shape[1], dim)
    sample = x
    if fit_on is not None and len(x) > fit_on:
        sample = x[np.random.default_rng(seed).choice(len(x), fit_on, replace=False)]
    pca.train(np.ascontiguousarray(sample))
    return pca.apply(x)


def clustered(n: int, dim: int = 128, n_clusters: int = 100, intrinsic_dim: int | None = 16, spread: float = 1.0,
              seed: int = 0, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic embeddings with realistic structure: Gaussian clusters whose within-cluster
    variation is low-rank (``intrinsic_dim`` directions per cluster; None = isotropic).

    Returns ``(vectors, cluster_labels)``. Generated in blocks so 1M x 128 needs no temporaries
    beyond the output.
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim)).astype(dtype) * 3.0
    labels = rng.integers(0, n_clusters, n)
    out = np.empty((n, dim), dtype)
    r = dim if intrinsic_dim is None else int(intrinsic_dim)
    bases = None
    if intrinsic_dim is not None:
        bases = rng.normal(size=(n_clusters, r, dim)).astype(dtype) / np.sqrt(r)
    for s in range(0, n, 65536):
        e = min(n, s + 65536)
        lab = labels[s:e]
        z = rng.normal(size=(e - s, r)).astype(dtype) * spread
        if bases is None:
            out[s:e] = centers[lab] + z
        else:
            out[s:e] = centers[lab] + np.einsum("nr,nrd->nd", z, bases[lab])
            out[s:e] += rng.normal(size=(e - s, dim)).astype(dtype) * (0.05 * spread)
    return out, labels


__all__ = ['DEBIAN_FMNIST', 'FMNIST_CLASSES', 'ImageSet', 'load_fashion_mnist', 'load_digits', 'load_real',
           'long_tailed', 'symmetric_noise', 'pixel_pca', 'clustered']
