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

# Length name -> length in tokens, as the official generator and the published sets count
# them: "1k" is 1,000 GPT-2 tokens, "1M" 1,000,000; "0k" is the facts alone, with no
# background text. A sample's context holds `length - PROMPT_MARGIN` tokens.
LENGTHS: dict[str, int] = {
    "0k": 0,
    "1k": 1_000,
    "2k": 2_000,
    "4k": 4_000,
    "8k": 8_000,
    "16k": 16_000,
    "32k": 32_000,
    "64k": 64_000,
    "128k": 128_000,
    "256k": 256_000,
    "512k": 512_000,
    "1M": 1_000_000,
    "2M": 2_000_000,
    "10M": 10_000_000,
}
# The project's earlier table (dataset versions before 2.0.0): powers of two of 1024 tokens.
LENGTHS_POW2: dict[str, int] = {
    name: 0 if not n else (n // 1_000_000) << 20 if n >= 1_000_000 else (n // 1_000) << 10
    for name, n in LENGTHS.items()
}
# The length tables by option name (`Recipe.lengths`).
LENGTH_TABLES: dict[str, dict[str, int]] = {"official": LENGTHS, "pow2": LENGTHS_POW2}

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


def check_length(length: str, table: str = "official") -> int:
    """Length name ('4k', '1M') -> tokens in `table` ('official': 1k = 1,000; 'pow2':
    1k = 1,024), else a ValueError listing the valid names."""
    if length not in LENGTHS:
        raise ValueError(f"unknown length {length!r}: expected one of {', '.join(LENGTHS)}")
    if table not in LENGTH_TABLES:
        raise ValueError(
            f"unknown length table {table!r}: expected one of {', '.join(LENGTH_TABLES)}"
        )
    return LENGTH_TABLES[table][length]


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
