"""BABILong: bAbI reasoning tasks hidden in long book text, as a TFDS builder and a library."""

from babilong_tfds.tasks import LABELS, LENGTHS, PROMPT_MARGIN, TASK_NAMES, TASKS

__all__ = ["LABELS", "LENGTHS", "PROMPT_MARGIN", "TASK_NAMES", "TASKS"]
