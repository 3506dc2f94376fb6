"""Place new images (the user's own) in a run's per-layer maps, with the embedding the maps were
made with.

One forward pass per image serves every layer (``forward_images``): the run's preprocessing (the
adapter's, or the model file's own ``preprocess`` hook), the forward stage's pooling and float16
rounding and the run's precision, so a sample of the run gives back its stored features. Then,
per layer (``Placer.place``):

- **PCA**: the pooled features projected on the layer's stored basis (``projection``: mean and
  sign-fixed components, ``reduce.PCAFit``) give its PCA scores; the PCA map is their first two
  columns, so a sample of the run lands on its own point, to float rounding.
- **t-SNE**: openTSNE's ``TSNEEmbedding.transform`` (Poličar, Stražar & Zupan, "Embedding to
  reference t-SNE space addresses batch effects in single-cell classification", Machine
  Learning 2021): each new point is optimised against the stored map, which stays fixed, with
  affinities to its nearest neighbours among the subset's stored PCA scores (``pca_scores``),
  at openTSNE's transform settings (perplexity 5: a new point follows its closest neighbours).
  Measured on digits (1,797 points, map at perplexity 30, 60 of its samples placed again), the
  median distance to the sample's own point was 0.03 with perplexity 5 against 0.12 with the
  map's 30, on a map 126 wide.
  The ``TSNEEmbedding`` is rebuilt from the stored coordinates and a ``PerplexityBasedNN`` on
  the subset's scores built as the fit built its own (``tsne_opentsne.shared_affinities``: same
  rows, kNN method and seed). ``transform`` reads nothing of that object but its kNN index (the
  reference points' P is never used), so its own perplexity is immaterial: placements from
  objects built at perplexity 90, 30, 10, 5 or re-weighted from 30 to 10 were identical (to the
  bit, digits and 13k synthetic points). It is built at the transform's perplexity, the
  smallest graph: on 13k points 0.6 s and 4 MB of graph instead of 3.2 s and 60 MB at
  perplexity 90. One object per (run, layer, subset) then serves every perplexity of the
  subset; the last few are kept in a small LRU.
  Maps made on a GPU (the torch backend) are placed the same way, with openTSNE on the CPU
  against their stored coordinates: the equivalent for the GPU path, since both backends
  optimise the same objective from the same affinities (``pipelines/tsne.py``) and a placed
  point only sees the finished map.

Runs computed before image placement existed have no ``projection``: placing in them is a
``UserError`` that gives the precompute command which adds it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from pipelines import reduce
from pipelines.errors import UserError
from pipelines.features import autocast_to, capturing, first_tensor, pooled_features
from pipelines.run_config import precompute_command
from pipelines.store import RunStore, embedding_key, perplexity_key
from pipelines.types import FloatArray, LayerId

if TYPE_CHECKING:
    from openTSNE.affinity import PerplexityBasedNN

    from pipelines.models import RunModel

METHODS = ("pca", "tsne")
# openTSNE's ``transform`` default, kept explicit: the perplexity of a new point's affinities to
# the map's points (see the module docstring for the measurement).
TRANSFORM_PERPLEXITY = 5.0
# Affinity objects kept per process: one per (run, layer, subset) placed into, each holding the
# subset's kNN index (its PCA scores in float64) and a 15-neighbour graph: ~1 MB for digits
# (1,797 x 20), ~37 MB for 13k samples x 300 components.
MAX_CACHED_AFFINITIES = 8


@dataclass(frozen=True)
class ImagePass:
    """One forward pass of M new images through a run's model.

    logits: (M, K) float32; probabilities: (M, K) float32, the model's ``decode`` (its own
    hook, else softmax); features: {layer id: (M, D) float32} pooled as the forward stage
    stores them, for every layer the run reduced (a reshape-only layer reads its parent's, see
    ``features_of``); activations: {layer id: (M, ...) float32} every layer's raw output, for
    the activation grid, or empty unless asked for.
    """

    logits: FloatArray
    probabilities: FloatArray
    features: dict[LayerId, FloatArray]
    activations: dict[LayerId, FloatArray]
    same_as: dict[LayerId, LayerId]

    def features_of(self, layer_id: LayerId) -> FloatArray:
        """(M, D) float32 pooled features of ``layer_id`` (a reshape-only layer's parent's)."""
        source = self.same_as.get(layer_id, layer_id)
        if source not in self.features:
            raise UserError(f"unknown layer '{layer_id}'; run `python main.py runs` to list layers")
        return self.features[source]


def forward_images(
    store: RunStore, model: RunModel, images: Sequence[Image.Image], keep_activations: bool = False
) -> ImagePass:
    """One forward pass of ``images`` (PIL, any mode and size) through the run's model, every
    layer captured. The caller holds the model's lock where models are shared (the dashboard's
    ``ModelService``): hooks on one module are not thread-safe."""
    from pipelines.precision import AUTOCAST_DTYPES

    record = store.read_record()
    same_as = {layer.id: layer.same_as for layer in record.layers if layer.same_as}
    wanted = [layer.id for layer in record.layers if keep_activations or not layer.same_as]
    precision = record.forward_precision.dtype if record.forward_precision else "float32"
    adapter = model.adapter
    inputs = adapter.preprocess(list(images))

    def capture(tensor: torch.Tensor) -> torch.Tensor:
        # Cloned: a following in-place ReLU would overwrite the stored output.
        return tensor.detach().clone() if keep_activations else stored_features(tensor)

    with (
        torch.no_grad(),
        capturing(adapter.module, inputs, wanted, capture) as captured,
        autocast_to(inputs.device, AUTOCAST_DTYPES[precision]),
    ):
        output = first_tensor(adapter.module(inputs))
    if output is None or output.ndim != 2:
        raise UserError(f"model {adapter.spec} did not return (batch, classes) logits")
    features = {
        layer_id: (stored_features(tensor) if keep_activations else tensor)
        .cpu()
        .numpy()
        .astype(np.float32)
        for layer_id, tensor in captured.items()
        if layer_id not in same_as
    }
    activations = (
        {layer_id: tensor.to("cpu", torch.float32).numpy() for layer_id, tensor in captured.items()}
        if keep_activations
        else {}
    )
    return ImagePass(
        logits=output.detach().to("cpu", torch.float32).numpy(),
        probabilities=adapter.decode(output.detach()).cpu().numpy(),
        features=features,
        activations=activations,
        same_as=same_as,
    )


def stored_features(tensor: torch.Tensor) -> torch.Tensor:
    """A layer output (M, ...) -> (M, D) pooled and rounded to float16 exactly as the forward
    stage stores it (``forward.forward_chunk``), so a run's sample reproduces its features."""
    return pooled_features(tensor).to(torch.float16)


# ---- per layer: the stored data and the two placements ------------------------------------------


def require_placement_data(store: RunStore, layer_id: LayerId) -> None:
    """A UserError unless the layer has its placement data (a finished layer of a run computed
    since image placement exists)."""
    if store.has("projection", layer=layer_id):
        return
    if not store.has("reduction", layer=layer_id):
        known = {layer.id for layer in store.read_record().layers}
        if layer_id not in known:
            raise UserError(
                f"unknown layer '{layer_id}' in run '{store.run_id}'; run `python main.py runs` "
                "to list layers"
            )
        raise UserError(
            f"layer '{layer_id}' of run '{store.run_id}' has no maps yet; wait for its "
            "precompute to finish the embeddings stage"
        )
    identity = store.read_record().require_config().identity
    command = precompute_command(identity, store.run_id, store.run_dir.parent.parent)
    raise UserError(
        f"run '{store.run_id}' was computed before image placement existed; re-run its "
        f"precompute with `{command}` to add it (the maps are kept; the samples go through "
        "the model once more)"
    )


def pca_scores(store: RunStore, layer_id: LayerId, features: np.ndarray) -> FloatArray:
    """features: (M, D) pooled features of ``layer_id`` -> (M, k) float32 scores on the
    layer's stored PCA basis, the space its maps were made from."""
    require_placement_data(store, layer_id)
    basis = store.load_arrays("projection", layer=layer_id)
    return reduce.project(features, basis["mean"], basis["components"])


def stored_map(
    store: RunStore, layer_id: LayerId, subset_size: int, method: str, perplexity: float | None
) -> FloatArray:
    """(n, 2) float32 coordinates of one stored map, or a UserError naming the maps there are."""
    if method not in METHODS:
        raise ValueError(f"unknown map method {method!r}; pass one of {', '.join(METHODS)}")
    if method == "pca":
        perplexity = None
    elif perplexity is None:
        raise ValueError("a t-SNE map needs its perplexity")
    key = embedding_key(layer_id, subset_size, method, perplexity)
    if not store.has("embedding", **key):
        record = store.read_record()
        at = f" at perplexity {perplexity_key(perplexity)}" if perplexity is not None else ""
        offered = ", ".join(perplexity_key(p) for p in record.perplexities_of(subset_size))
        raise UserError(
            f"run '{store.run_id}' has no {method} map of layer '{layer_id}' for subset "
            f"{subset_size}{at}; its subsets are {list(record.subsets)}, with perplexities "
            f"{offered or 'none'} for subset {subset_size}"
        )
    return store.load_array("embedding", mmap=False, **key)


def place_pca(scores: np.ndarray) -> FloatArray:
    """(M, k) PCA scores -> (M, 2) float32 position in the layer's PCA map (first two scores,
    as ``reduce.embed_layer`` draws the map)."""
    return np.ascontiguousarray(scores[:, :2], dtype=np.float32)


def place_tsne(
    coords: np.ndarray,
    affinities: PerplexityBasedNN,
    scores: np.ndarray,
    seed: int = 0,
    threads: int = 1,
) -> FloatArray:
    """openTSNE's ``transform`` of new points into a fixed map.

    coords: (n, 2) the stored map; affinities: built on the map's n reference PCA scores
    (``reference_affinities``); scores: (M, k) float32 PCA scores of the new points. Returns
    (M, 2) float32 in the stored map's frame (``transform`` centres the map it places into;
    the centre is added back).
    """
    from openTSNE import TSNEEmbedding

    from pipelines.tsne import SCHEDULE
    from pipelines.tsne_opentsne import SIZE_METHODS

    reference = np.array(coords, dtype=np.float64)  # a copy: transform moves it in place
    centre = (reference.max(axis=0) + reference.min(axis=0)) / 2
    embedding = TSNEEmbedding(
        reference,
        affinities,
        negative_gradient_method=SIZE_METHODS.gradient(reference.shape[0]),
        theta=SCHEDULE.theta,
        n_jobs=threads,
        random_state=seed,
    )
    placed = embedding.transform(
        np.ascontiguousarray(scores, dtype=np.float32), perplexity=TRANSFORM_PERPLEXITY
    )
    return (np.asarray(placed, dtype=np.float64) + centre).astype(np.float32)


def reference_affinities(reference: np.ndarray, seed: int, threads: int = 1) -> PerplexityBasedNN:
    """The affinities to place new points into a map of a subset: reference (n, k) float32,
    the subset's PCA scores; built as the fit built its own (``tsne_opentsne.shared_affinities``:
    kNN method, seed), at the transform's perplexity (module docstring: only the kNN index is
    read)."""
    from pipelines.tsne_opentsne import shared_affinities

    return shared_affinities(
        np.ascontiguousarray(reference, dtype=np.float32), TRANSFORM_PERPLEXITY, seed, threads
    )


# ---- the service: cached affinities, one pass for every layer ----------------------------------


class Placer:
    """Places images in a run's maps, keeping the last ``max_affinities`` t-SNE affinity objects
    (one per run, layer and subset; thread-safe, each built once however many ask at once)."""

    def __init__(self, max_affinities: int = MAX_CACHED_AFFINITIES, threads: int = 1):
        self.max_affinities = max_affinities
        self.threads = threads
        self._affinities: OrderedDict[tuple, PerplexityBasedNN] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[tuple, threading.Lock] = {}

    def place(
        self,
        store: RunStore,
        image_pass: ImagePass,
        layer_id: LayerId,
        subset_size: int,
        method: str,
        perplexity: float | None = None,
    ) -> FloatArray:
        """(M, 2) float32 positions of the pass's M images in the stored map of ``layer_id``
        for (subset, method, perplexity), in that map's coordinates."""
        scores = pca_scores(store, layer_id, image_pass.features_of(layer_id))
        coords = stored_map(store, layer_id, subset_size, method, perplexity)
        if method == "pca":
            return place_pca(scores)
        affinities = self.affinities(store, layer_id, subset_size)
        seed = store.read_record().require_config().seed
        return place_tsne(coords, affinities, scores, seed, self.threads)

    def place_every_layer(
        self,
        store: RunStore,
        image_pass: ImagePass,
        subset_size: int,
        method: str,
        perplexity: float | None = None,
    ) -> dict[LayerId, FloatArray]:
        """{layer id: (M, 2) float32} for every layer of the run, from one forward pass."""
        return {
            layer.id: self.place(store, image_pass, layer.id, subset_size, method, perplexity)
            for layer in store.read_record().layers
        }

    def affinities(self, store: RunStore, layer_id: LayerId, subset_size: int) -> PerplexityBasedNN:
        """The subset's reference affinities, from the cache or built (0.2 s for digits' 1,797
        points, about a second for 13k).
        Keyed by the scores file and its modification time, so a recomputed layer is rebuilt."""
        # A reshape-only layer shares its parent's scores, and so its affinities.
        layer_id = store.load_json("reduction", layer=layer_id).get("same_as") or layer_id
        path = store.artifact_path("pca_scores", layer=layer_id)
        key = (str(path.resolve()), path.stat().st_mtime_ns, int(subset_size))
        with self._lock:
            if key in self._affinities:
                self._affinities.move_to_end(key)
                return self._affinities[key]
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                if key in self._affinities:
                    return self._affinities[key]
            reference = store.load_array("pca_scores", layer=layer_id)[:subset_size]
            seed = store.read_record().require_config().seed
            built = reference_affinities(reference, seed, self.threads)
            with self._lock:
                self._affinities[key] = built
                self._building.pop(key, None)
                while len(self._affinities) > self.max_affinities:
                    self._affinities.popitem(last=False)
            return built


_DEFAULT_PLACER = Placer()


def place(
    store: RunStore,
    model: RunModel,
    images: Sequence[Image.Image],
    layer_id: LayerId,
    subset_size: int,
    method: str,
    perplexity: float | None = None,
) -> FloatArray:
    """(M, 2) float32 positions of ``images`` in the stored map of ``layer_id`` for (subset,
    method, perplexity): one forward pass and one placement, with this process's shared
    affinity cache. To place in several layers or maps, run ``forward_images`` once and call a
    ``Placer``'s ``place`` per map."""
    require_placement_data(store, layer_id)
    image_pass = forward_images(store, model, images)
    return _DEFAULT_PLACER.place(store, image_pass, layer_id, subset_size, method, perplexity)
