"""Published BABILong accuracies (%), for reference rows beside this project's models.

From the BABILong leaderboard, equal to arXiv 2406.10149 Table 4 (../shared/BABILONG_SPEC.md,
"Headline numbers to beat"). `QA1` is qa1 alone by context length; `MEAN_QA1_QA5` the mean of
qa1..qa5. A length a model was not evaluated at is absent.
"""

from __future__ import annotations

QA1: dict[str, dict[str, float]] = {
    "RMT (GPT-2, fine-tuned)": {"0k": 100, "4k": 100, "16k": 100, "64k": 96, "128k": 94,
                                "1M": 84, "10M": 66},
    "ARMT (GPT-2, fine-tuned)": {"0k": 100, "4k": 100, "16k": 100, "64k": 100, "128k": 100,
                                 "1M": 99, "10M": 89},
    "GPT-4-0125": {"0k": 99, "4k": 95, "16k": 84, "64k": 58, "128k": 39},
    "Llama3-ChatQA-1.5-8B + RAG": {"0k": 60, "4k": 58, "16k": 60, "64k": 56, "128k": 64,
                                   "1M": 55, "10M": 50},
}

MEAN_QA1_QA5: dict[str, dict[str, float]] = {
    "RMT (GPT-2, fine-tuned)": {"0k": 99.4, "128k": 58.5, "1M": 42.8, "10M": 33.8},
    "ARMT (GPT-2, fine-tuned)": {"0k": 99.3, "128k": 96.9, "1M": 93.4, "10M": 76.6},
    "Mamba 130M fine-tuned": {"0k": 98.6, "128k": 92.8},
    "GPT-4-0125": {"0k": 87.4, "128k": 35.8},
    "Llama3-ChatQA-1.5-8B + RAG": {"0k": 47.6, "128k": 44.8, "1M": 39.4, "10M": 37.2},
}


def published(task: str) -> dict[str, dict[str, float]]:
    """The published rows of one task ('qa1') or of the qa1..qa5 mean ('qa1-5')."""
    tables = {"qa1": QA1, "qa1-5": MEAN_QA1_QA5}
    if task not in tables:
        raise ValueError(f"no published rows for {task!r}: expected one of {sorted(tables)}")
    return tables[task]
