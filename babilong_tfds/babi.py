"""Reader of the original bAbI files (v1.1 and v1.2 layouts).

A bAbI file holds stories. Every line is `ID text`; IDs restart at 1 with each new
story. A question line is `ID question<TAB>answer<TAB>supporting IDs`. The reader makes
one `BabiSample` per question: the story's statements before it (earlier questions are
not facts), the question, the answer and the supporting facts as indices into `facts`.

Files are found under a root folder, searched recursively, as plain `.txt` files or
inside `.tar.gz` archives laid out like the official one (`tasks_1-20_v1-2/en-10k/...`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path

from absl import logging

from babilong_tfds.tasks import TASK_NAMES, check_task

SPLITS = ("train", "test")

# Where the reference takes its facts from first: the 10k-question English v1.2 set.
# v1.1 (1k questions) is the fallback, e.g. for the missing qa3 10k train file.
PREFERRED_VARIANTS = ("en-10k", "v1.2-en-10k", "en", "v1.1")


@dataclasses.dataclass(frozen=True)
class BabiSample:
    """One bAbI question with its story so far.

    Attributes:
      task: 'qa1'..'qa20'.
      facts: the story's statements before the question, in order, without IDs.
      question: the question text, stripped ('Where is Mary?').
      answer: the answer ('bathroom'; comma-separated lists for qa8, e.g. 'apple,milk').
      supporting: indices into `facts` of the supporting facts, as given by the file.
      story: index of the story in its file (0-based).
      origin: where the sample comes from ('file.txt:LINE' or 'generated:seed:index').
      file_question: the question as the file writes it before the tab, trailing space
        included ('Where is Mary? ' in most tasks), as the official generator and the
        published sets keep it; '' for generated stories.
    """

    task: str
    facts: tuple[str, ...]
    question: str
    answer: str
    supporting: tuple[int, ...]
    story: int = 0
    origin: str = ""
    file_question: str = ""


class BabiFormatError(ValueError):
    """A bAbI line that does not follow the format; names the file and line number."""


class BabiFileNotFound(FileNotFoundError):
    """No bAbI file for the task and split under the given root."""


_LINE = re.compile(r"^(\d+) (.*)$")


def parse_babi(lines: Iterable[str], task: str, name: str = "<babi>") -> list[BabiSample]:
    """Parses the lines of one bAbI file into samples, one per question.

    Raises BabiFormatError with `name:line` for a line that is not `ID text`, an ID that
    does not follow the previous one (or restart at 1), a question line without exactly
    three tab-separated fields, or a supporting ID that is not an earlier statement.
    """
    check_task(task)
    samples: list[BabiSample] = []
    facts: list[str] = []
    id_to_fact: dict[int, int] = {}
    last_id = 0
    story = -1
    for lineno, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        m = _LINE.match(line)
        if m is None:
            raise BabiFormatError(f"{where}: expected 'ID text', got {line[:80]!r}")
        line_id, text = int(m.group(1)), m.group(2)
        if line_id == 1:
            facts, id_to_fact, story = [], {}, story + 1
        elif line_id != last_id + 1:
            raise BabiFormatError(
                f"{where}: line ID {line_id} does not follow {last_id} (IDs go up by one and "
                "restart at 1 for each story)"
            )
        last_id = line_id
        if "\t" not in text:
            facts.append(text.strip())
            id_to_fact[line_id] = len(facts) - 1
            continue
        fields = text.split("\t")
        if len(fields) != 3:
            raise BabiFormatError(
                f"{where}: a question line needs 'question<TAB>answer<TAB>supporting IDs', "
                f"got {len(fields)} tab-separated fields"
            )
        question, answer, support = (f.strip() for f in fields)
        if not question or not answer:
            raise BabiFormatError(f"{where}: empty question or answer")
        try:
            support_ids = [int(s) for s in support.split()]
        except ValueError:
            raise BabiFormatError(
                f"{where}: supporting IDs must be integers, got {support!r}"
            ) from None
        missing = [s for s in support_ids if s not in id_to_fact]
        if missing:
            raise BabiFormatError(
                f"{where}: supporting IDs {missing} are not earlier statements of this story"
            )
        samples.append(
            BabiSample(
                task=task,
                facts=tuple(facts),
                question=question,
                file_question=fields[0],
                answer=answer,
                supporting=tuple(id_to_fact[s] for s in support_ids),
                story=story,
                origin=where,
            )
        )
    return samples


def file_name(task: str, split: str) -> str:
    """'qa1', 'train' -> 'qa1_single-supporting-fact_train.txt'."""
    check_task(task)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    return f"{task}_{TASK_NAMES[task]}_{split}.txt"


def _variant_rank(path: str) -> int:
    """The rank of the first PREFERRED_VARIANTS entry naming a folder of `path`: the folder
    itself (`en-10k`) or a copy of one task's files (`v1.2-en-10k-qa1`); unknown last."""
    parts = Path(path).parts
    for rank, variant in enumerate(PREFERRED_VARIANTS):
        for part in parts:
            task = part.removeprefix(f"{variant}-qa")
            if part == variant or (task != part and task.isdigit()):
                return rank
    return len(PREFERRED_VARIANTS)


@dataclasses.dataclass(frozen=True)
class BabiFile:
    """A located bAbI file: a plain path, or a member of a tar archive."""

    path: Path
    member: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path}!{self.member}" if self.member else str(self.path)

    def read_text(self) -> str:
        if self.member is None:
            return self.path.read_text(encoding="utf-8")
        with _reading_archive(self.path), tarfile.open(self.path, "r:*") as tar:
            f = tar.extractfile(self.member)
            if f is None:
                raise BabiFileNotFound(f"{self.name} is not a regular file")
            return io.TextIOWrapper(f, encoding="utf-8").read()


@contextlib.contextmanager
def _reading_archive(path: Path):
    """A truncated or corrupt archive (which every read under its folder opens) becomes an
    error that names it."""
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise BabiFormatError(
            f"bAbI archive {path} is damaged ({type(e).__name__}: {e}): replace it (the "
            "official tasks_1-20_v1-2.tar.gz) or remove it from the bAbI folder"
        ) from None


def find_babi_files(root: str | Path, task: str, split: str) -> list[BabiFile]:
    """All copies of the task's split under `root`, best variant (en-10k) first."""
    wanted = file_name(task, split)
    root = Path(root)
    if not root.exists():
        raise BabiFileNotFound(
            f"bAbI folder {root} does not exist: put the bAbI files (or the official "
            "tasks_1-20_v1-2.tar.gz) there, or pass another folder"
        )
    found: list[tuple[int, str, BabiFile]] = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name == wanted:
            found.append((_variant_rank(str(path.relative_to(root))), str(path), BabiFile(path)))
        elif path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
            with _reading_archive(path):
                with tarfile.open(path, "r:*") as tar:
                    names = tar.getnames()
            for member in names:
                if Path(member).name == wanted:
                    found.append((_variant_rank(member), member, BabiFile(path, member)))
    found.sort(key=lambda item: (item[0], item[1]))
    return [f for _, _, f in found]


def load_babi(task: str, split: str, root: str | Path) -> list[BabiSample]:
    """Reads the best available copy of a task's split under `root` (en-10k preferred).

    Raises BabiFileNotFound saying which file name to put where.
    """
    files = find_babi_files(root, task, split)
    if not files:
        raise BabiFileNotFound(
            f"no bAbI file {file_name(task, split)} under {root}: put the bAbI tasks there "
            "(plain files from the official archive, e.g. tasks_1-20_v1-2/en-10k/, or the "
            "archive itself), or let the TFDS builder download them"
        )
    chosen = files[0]
    if _variant_rank(chosen.member or str(chosen.path)) > 1:
        logging.warning("bAbI %s %s: no en-10k copy found, using %s", task, split, chosen.name)
    return parse_babi(chosen.read_text().splitlines(), task, chosen.name)
