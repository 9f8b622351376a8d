"""The standard TFDS builder test; it needs TensorFlow (the `[tf]` extra)."""

import importlib.util

import pytest

if importlib.util.find_spec("tensorflow") is None:
    pytest.skip(
        "TensorFlow is not installed: `pip install -e .[tf]` to run the standard TFDS test",
        allow_module_level=True,
    )

import tensorflow_datasets as tfds  # noqa: E402

from babilong_tfds.babilong import babilong_dataset_builder  # noqa: E402


class BabilongBuilderTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = babilong_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["qa1_0k", "qa1_1k"]
    SPLITS = {"test": 100}  # a registered config holds the published test split alone
    SKIP_CHECKSUMS = True


if __name__ == "__main__":
    tfds.testing.test_main()
