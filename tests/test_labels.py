"""Class mapping between a dataset's classes and a model's outputs."""

import pytest
import torchvision

from pipelines.errors import UserError
from pipelines.labels import UNMAPPED, map_classes

IMAGENET = list(torchvision.models.VGG16_Weights.DEFAULT.meta["categories"])
IMAGENETTE_WNIDS = [
    "n01440764",
    "n02102040",
    "n02979186",
    "n03000684",
    "n03028079",
    "n03394916",
    "n03417042",
    "n03425413",
    "n03445777",
    "n03888257",
]
IMAGENETTE_NAMES = [
    "tench",
    "English springer",
    "cassette player",
    "chain saw",
    "church",
    "French horn",
    "garbage truck",
    "gas pump",
    "golf ball",
    "parachute",
]


def test_imagenette_maps_to_imagenet_by_wordnet_id_and_names_agree():
    mapping = map_classes(IMAGENETTE_NAMES, IMAGENETTE_WNIDS, IMAGENET, model_is_imagenet=True)
    assert mapping.method == "wnid"
    assert mapping.dataset_to_model == (0, 217, 482, 491, 497, 566, 569, 571, 574, 701)
    # The table agrees with torchvision's own category names at those indices.
    assert [IMAGENET[i] for i in mapping.dataset_to_model] == IMAGENETTE_NAMES


def test_folder_names_map_by_name_case_and_separator_insensitive():
    mapping = map_classes(["golf_ball", "Tench"], None, IMAGENET, model_is_imagenet=True)
    assert mapping.method == "name" and mapping.dataset_to_model == (574, 0)


def test_equal_counts_map_by_order():
    mapping = map_classes(["zero", "one"], None, ["class 0", "class 1"], model_is_imagenet=False)
    assert mapping.method == "order" and mapping.dataset_to_model == (0, 1)


def test_more_outputs_without_names_runs_unmapped_with_a_warning():
    mapping = map_classes(["cat", "dog"], None, IMAGENET, model_is_imagenet=True)
    assert mapping.dataset_to_model == (UNMAPPED, UNMAPPED) and mapping.method == "none"
    assert "correctness is unknown" in mapping.warning


def test_fewer_outputs_without_names_is_an_error():
    with pytest.raises(UserError, match="2 outputs but the dataset has 3 classes"):
        map_classes(["a", "b", "c"], None, ["x", "y"], model_is_imagenet=False)
