"""The `babilong` TFDS dataset (registered on import)."""

from babilong_tfds.babilong.babilong_dataset_builder import BabilongConfig, Builder

__all__ = ["BabilongConfig", "Builder"]
