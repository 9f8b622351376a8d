"""The facts of the BABILong benchmark that every other module imports.

One place for the task list, the length table, the official answer label sets and
the prompt margin. Nothing here reads files.
"""

from __future__ import annotations

# bAbI task id -> the name used in the original file names (qa1_single-supporting-fact_*.txt).
TASK_NAMES: dict[str, str] = {
    "qa1": "single-supporting-fact",
    "qa2": "two-supporting-facts",
    "qa3": "three-supporting-facts",
    "qa4": "two-arg-relations",
    "qa5": "three-arg-relations",
    "qa6": "yes-no-questions",
    "qa7": "counting",
    "qa8": "lists-sets",
    "qa9": "simple-negation",
    "qa10": "indefinite-knowledge",
    "qa11": "basic-coreference",
    "qa12": "conjunction",
    "qa13": "compound-coreference",
    "qa14": "time-reasoning",
    "qa15": "basic-deduction",
    "qa16": "basic-induction",
    "qa17": "positional-reasoning",
    "qa18": "size-reasoning",
    "qa19": "path-finding",
    "qa20": "agents-motivations",
}
TASKS: tuple[str, ...] = tuple(TASK_NAMES)

# Length name -> context length in tokens. Powers of two of 1024 tokens, as the
# configs are named; "0k" is the facts alone, with no background text.
LENGTHS: dict[str, int] = {
    "0k": 0,
    "1k": 1 << 10,
    "2k": 2 << 10,
    "4k": 4 << 10,
    "8k": 8 << 10,
    "16k": 16 << 10,
    "32k": 32 << 10,
    "64k": 64 << 10,
    "128k": 128 << 10,
    "256k": 256 << 10,
    "512k": 512 << 10,
    "1M": 1 << 20,
    "2M": 2 << 20,
    "10M": 10 << 20,
}

# Tokens left free for the prompt: the context gets `length - PROMPT_MARGIN` tokens.
PROMPT_MARGIN = 300

_ROOMS = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
_YES_NO = ("no", "yes")

# The official label sets of the metric, per task (lower-case as the metric compares).
LABELS: dict[str, tuple[str, ...]] = {
    "qa1": _ROOMS,
    "qa2": _ROOMS,
    "qa3": _ROOMS,
    "qa4": _ROOMS,
    "qa5": ("bill", "fred", "jeff", "mary", "apple", "football", "milk"),
    "qa6": _YES_NO,
    "qa7": ("none", "one", "two", "three"),
    "qa8": ("apple", "football", "milk", "nothing"),
    "qa9": _YES_NO,
    "qa10": ("maybe", "no", "yes"),
    "qa11": _ROOMS,
    "qa12": _ROOMS,
    "qa13": _ROOMS,
    "qa14": ("bedroom", "cinema", "kitchen", "office", "park", "school"),
    "qa15": ("cat", "mouse", "sheep", "wolf"),
    "qa16": ("gray", "green", "white", "yellow"),
    "qa17": _YES_NO,
    "qa18": _YES_NO,
    "qa19": ("e,e", "e,n", "e,s", "n,e", "n,n", "n,w", "s,e", "s,s", "s,w", "w,n", "w,s", "w,w"),
    "qa20": ("bedroom", "bored", "garden", "hungry", "kitchen", "thirsty", "tired"),
}


def check_task(task: str) -> str:
    """Returns `task` if it is one of qa1..qa20, else raises a ValueError naming them."""
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}: expected one of qa1..qa20")
    return task


def parse_tasks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """'qa1,qa2' or 'all' or a list -> validated task ids, in the order given."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [t.strip() for t in items if t.strip()]
    if items == ["all"]:
        return list(TASKS)
    if not items:
        raise ValueError("no task given: expected a comma-separated list of qa1..qa20 or 'all'")
    return [check_task(t) for t in items]


def check_length(length: str) -> int:
    """Length name ('4k', '1M') -> tokens, else a ValueError listing the valid names."""
    if length not in LENGTHS:
        raise ValueError(f"unknown length {length!r}: expected one of {', '.join(LENGTHS)}")
    return LENGTHS[length]


def parse_lengths(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """'0k,4k' or 'all' or a list -> validated length names, in the order given."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [s.strip() for s in items if s.strip()]
    if items == ["all"]:
        return list(LENGTHS)
    if not items:
        raise ValueError(f"no length given: expected some of {', '.join(LENGTHS)} or 'all'")
    for s in items:
        check_length(s)
    return items
