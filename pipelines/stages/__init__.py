"""The precompute's stages, one module each, in the order they run (``STAGES``):

1. **model** (``model.py``): build (or train) the model, discover its layers, map its classes.
2. **index** (``index.py``): nested class-balanced sample order, the sample table (each sample's
   class in the model's terms, from the model stage's class mapping), subsets and perplexities.
3. **forward** (``forward.py``): per chunk of samples — thumbnails, one forward pass capturing
   every layer (pooled on the device), top-10 predictions, and Grad-CAM / guided backprop /
   guided Grad-CAM. A chunk's file is written last, so its presence means the chunk is on disk.
4. **embeddings** (``embeddings.py``): per layer — PCA to 90% variance, then 2D PCA and t-SNE
   per subset/perplexity.
5. **explanations** (``explanations.py``): the stored explanations, when the forward pass left
   them for after the maps (``--maps-first``: computed while the workers make the t-SNE maps);
   otherwise only the record that the forward pass stored them.
6. **quality** (``quality.py``): label issues (cleanlab on out-of-sample probabilities: k-fold
   training for the smallcnn, a pretrained model's own), each sample's nearest neighbours in one
   layer's features (near-duplicates) and its outlier score.

Each stage reads what the stages before it stored and writes its own artifacts and manifest
fields; ``pipelines/precompute.py`` asks the store which stages are missing and runs those. The
forward stage's chunks and the embeddings stage's layer phases are units that other machines can
do (``pipelines/units.py``, ``pipelines/precompute_celery.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipelines.cores import idle_cores
from pipelines.models import resolve_device

STAGES = ("model", "index", "forward", "embeddings", "explanations", "quality")
# Long enough to average over a few scheduler ticks; paid once per run, before training.
FREE_CORES_SAMPLE_SECONDS = 0.2
# Before each later epoch: enough to tell idle from busy (``cores.idle_cores``), 0.3 s over the
# embedded default's 8 epochs.
EPOCH_CORES_SAMPLE_SECONDS = 0.04


def sets_threads(model: str, device: str) -> bool:
    """Whether the precompute chooses torch's threads itself: for the small built-in CNN
    (``model``, a ``--model`` spec) on a CPU (``device``, the ``--device`` choice); other models
    keep torch's default."""
    return model == "smallcnn" and resolve_device(device).type == "cpu"


def use_threads_for(model: str, device: str, stage: str) -> None:
    """Torch threads for the small built-in CNN (``model``, a ``--model`` spec) on a CPU (other
    models keep torch's default); ``device``: the ``--device`` choice.

    Training ("model") uses the cores that are free now: 5.0 s on two idle cores against 7.8 s
    on one, but on a busy machine a second OpenMP thread spin-waits for a core and made it 3x
    slower. The forward pass ("forward") always uses one thread: its layers are too small to
    split, and a fixed thread count keeps the features identical from run to run, so a resumed
    run equals an uninterrupted one.
    """
    if not sets_threads(model, device):
        return
    torch.set_num_threads(idle_cores(FREE_CORES_SAMPLE_SECONDS) if stage == "model" else 1)


def follow_free_cores(model: str, device: str) -> Callable[[], None] | None:
    """For the small built-in CNN on a CPU (as ``use_threads_for``): what to call before each
    training epoch so that it uses the cores free then. A process that was busy as training
    began ends soon after: `python main.py`'s server imports for the first 1-2 s of the default
    run's training, which then ran its 8 epochs on one thread (8 s instead of 2.5 s)."""
    if not sets_threads(model, device):
        return None

    def adapt() -> None:
        torch.set_num_threads(idle_cores(EPOCH_CORES_SAMPLE_SECONDS))

    return adapt
