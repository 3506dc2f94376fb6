"""Map a dataset's classes onto a model's outputs, so "correct" means something.

Tried in order: WordNet ids (Imagenette/Imagewoof folders are ImageNet synsets), class names,
then position when the counts are equal. A model with more outputs than the dataset has classes
may run unmapped (predictions shown, correctness unknown); fewer outputs with no mapping is an
error because predictions could never be judged.
"""

from __future__ import annotations

import re

import numpy as np

from pipelines.errors import UserError
from pipelines.records import ClassMapping

# ImageNet-1k output index of every synset the built-in ImageNet subsets use.
IMAGENET_INDEX_BY_WNID: dict[str, int] = {
    # Imagenette
    "n01440764": 0,  # tench
    "n02102040": 217,  # English springer
    "n02979186": 482,  # cassette player
    "n03000684": 491,  # chain saw
    "n03028079": 497,  # church
    "n03394916": 566,  # French horn
    "n03417042": 569,  # garbage truck
    "n03425413": 571,  # gas pump
    "n03445777": 574,  # golf ball
    "n03888257": 701,  # parachute
    # Imagewoof
    "n02086240": 155,  # Shih-Tzu
    "n02087394": 159,  # Rhodesian ridgeback
    "n02088364": 162,  # beagle
    "n02089973": 167,  # English foxhound
    "n02093754": 182,  # Border terrier
    "n02096294": 193,  # Australian terrier
    "n02099601": 207,  # golden retriever
    "n02105641": 229,  # Old English sheepdog
    "n02111889": 258,  # Samoyed
    "n02115641": 273,  # dingo
}

# The model output of a dataset class that has none (``ClassMapping.dataset_to_model``).
UNMAPPED = -1


def normalise_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name).strip().lower()


def map_classes(
    dataset_names: list[str],
    dataset_wnids: list[str] | None,
    model_names: list[str],
    model_is_imagenet: bool,
) -> ClassMapping:
    """Decide which model output each dataset class corresponds to."""
    if dataset_wnids and model_is_imagenet:
        by_wnid = [IMAGENET_INDEX_BY_WNID.get(wnid, UNMAPPED) for wnid in dataset_wnids]
        if all(index != UNMAPPED for index in by_wnid):
            return ClassMapping("wnid", tuple(by_wnid))

    model_index = {normalise_name(name): i for i, name in enumerate(model_names)}
    by_name = [model_index.get(normalise_name(name), UNMAPPED) for name in dataset_names]
    if all(index != UNMAPPED for index in by_name):
        return ClassMapping("name", tuple(by_name))

    if len(dataset_names) == len(model_names):
        return ClassMapping("order", tuple(range(len(dataset_names))))

    if len(model_names) > len(dataset_names):
        missing = [
            name for name, index in zip(dataset_names, by_name, strict=True) if index == UNMAPPED
        ]
        warning = (
            f"{len(missing)} of {len(dataset_names)} dataset classes have no matching model "
            f"output (e.g. {missing[:3]}); predictions are shown but correctness is unknown for them"
        )
        method = "name" if len(missing) < len(by_name) else "none"
        return ClassMapping(method, tuple(by_name), warning)

    raise UserError(
        f"the model has {len(model_names)} outputs but the dataset has {len(dataset_names)} classes "
        "and their names do not match; use a model trained on this dataset (e.g. --model smallcnn) "
        "or give the model class_names that match the dataset's folder names"
    )


def class_probabilities(log_prob: np.ndarray, dataset_to_model: list[int]) -> np.ndarray:
    """log_prob: (N, K) float32 log probabilities over the model's outputs -> (N, C) float32,
    the model's probability of each of the C dataset classes (its mapped output's), NaN in the
    columns of classes no output maps to. Not renormalised: a model that favours an output which
    is no dataset class keeps a small sum here."""
    columns = np.array(dataset_to_model, dtype=np.int64)
    mapped = columns != UNMAPPED
    result = np.full((len(log_prob), len(columns)), np.nan, dtype=np.float32)
    result[:, mapped] = np.exp(np.asarray(log_prob, dtype=np.float32)[:, columns[mapped]])
    return result
