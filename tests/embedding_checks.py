"""Data and a neighbourhood-quality measure shared by the t-SNE and reduction tests."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import KNeighborsClassifier

from pipelines.reduce import nested_subset_order


def blobs(per_class: int = 60, classes: int = 5, dims: int = 10, seed: int = 0):
    """Well-separated Gaussian blobs in nested-subset order. (N, dims) float32, (N,) int64."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dims)) * 10
    labels = np.repeat(np.arange(classes), per_class)
    x = centres[labels] + rng.standard_normal((labels.shape[0], dims))
    order = nested_subset_order(labels, seed)
    return x[order].astype(np.float32), labels[order]


def knn_accuracy(y: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out accuracy of a k-nearest-neighbour majority vote in the map."""
    classifier = KNeighborsClassifier(n_neighbors=k + 1).fit(y, labels)
    votes = labels[classifier.kneighbors(y, return_distance=False)[:, 1:]]
    return float((np.array([np.bincount(row).argmax() for row in votes]) == labels).mean())
