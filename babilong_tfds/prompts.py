"""The official BABILong LLM prompts, read as data from the official repository's file.

Every published LLM number on BABILong uses the prompts of `babilong/prompts.py` in
github.com/booydar/babilong (Apache-2.0): per task an instruction, in-context examples and a
post-prompt, joined with the question and context by one template. The project does not
copy that text: it reads the file, found in this order,

  1. `path`: a file the user names; accepted with a warning when its sha256 is not the pin
     (someone who points at a file means that file, e.g. an edited prompt set);
  2. `manual_dir/babilong_official/prompts.py` (the layout of ../shared/data); its sha256
     must be the pin, else a ValueError;
  3. downloaded from the official repository at the pinned commit into `cache_dir`, its
     sha256 checked before it is used or kept.

The file is parsed, never executed: its module-level assignments are read with `ast`, each
value by `ast.literal_eval`, and an f-string of earlier string constants
(`DEFAULT_TEMPLATE = f'{TASK_TEMPLATE}\\n\\n{USER_TEMPLATE}'`) is resolved from those constants;
anything else in it (functions, imports) is ignored.

`format_prompt` joins the parts exactly as the official `get_formatted_input` does, byte for
byte, and `PromptConfig` carries the official runner's switches (instruction, examples,
post-prompt, chat template, system prompt) and its run name
(`instruction_yes_examples_yes_post_prompt_yes_chat_template_no_system_prompt_no`).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import logging
import os
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from babilong_tfds.files import atomic_write
from babilong_tfds.tasks import TASK_NAMES, check_task

# The official file this project's prompts are checked against.
PINNED_COMMIT = "7a6efee29f5cac03c3c410e6799c80fd2ffe3610"
PINNED_SHA256 = "be08d7e466170177e38fddb997e3dd9ffb281d5a830edd240933e069a9c5c2ee"
PINNED_URL = (
    f"https://raw.githubusercontent.com/booydar/babilong/{PINNED_COMMIT}/babilong/prompts.py"
)
# Where the file lies under a TFDS-style manual dir (as in ../shared/data).
MANUAL_DIR_PATH = "babilong_official/prompts.py"
DEFAULT_CACHE_DIR = Path("~/.cache/babilong_tfds/prompts")

# The parts of one task's prompt, in the order of the official run name.
PROMPT_PARTS = ("instruction", "examples", "post_prompt")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OfficialPrompts:
    """What the official prompts file defines: per-task parts and the template."""

    prompts: Mapping[str, Mapping[str, str]]  # {'qa1': {'instruction', 'examples', 'post_prompt'}}
    # DEFAULT_TEMPLATE: {instruction} {examples} {post_prompt} {context} {question}
    template: str
    source: str  # where the file was read from
    sha256: str  # of the file's bytes

    def parts(self, task: str) -> Mapping[str, str]:
        return self.prompts[check_task(task)]


# -- parsing without executing -----------------------------------------------------------
def _resolve(node: ast.expr, names: Mapping[str, object]) -> object:
    """The value of a literal, of a name bound earlier to one, or of an f-string of such."""
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise ValueError(f"name {node.id!r} is not a constant defined earlier in the file")
        return names[node.id]
    if isinstance(node, ast.JoinedStr):
        pieces = []
        for value in node.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                pieces.append(value.value)
            elif (isinstance(value, ast.FormattedValue) and value.conversion == -1
                  and value.format_spec is None):
                resolved = _resolve(value.value, names)
                if not isinstance(resolved, str):
                    raise ValueError("an f-string may only join string constants")
                pieces.append(resolved)
            else:
                raise ValueError("an f-string may only join string constants, unformatted")
        return "".join(pieces)
    return ast.literal_eval(node)


def parse_prompts_source(text: str) -> dict[str, object]:
    """{name: value} of the module-level constant assignments of a prompts file.

    Assignments whose value is not a literal (or an f-string of earlier string constants)
    are left out; nothing in the file runs.
    """
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise ValueError(f"the prompts file is not valid Python: {e}") from None
    names: dict[str, object] = {}
    for statement in tree.body:
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)):
            continue
        try:
            names[statement.targets[0].id] = _resolve(statement.value, names)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            continue
    return names


def prompts_from_source(text: str, *, source: str = "<text>") -> OfficialPrompts:
    """Parses and checks a prompts file: DEFAULT_PROMPTS for qa1..qa20 and DEFAULT_TEMPLATE."""
    names = parse_prompts_source(text)
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    template = names.get("DEFAULT_TEMPLATE")
    if not isinstance(template, str):
        raise ValueError(f"{source}: no string constant DEFAULT_TEMPLATE (is it the official "
                         "babilong/prompts.py?)")
    prompts = names.get("DEFAULT_PROMPTS")
    if not isinstance(prompts, dict):
        raise ValueError(f"{source}: no dict constant DEFAULT_PROMPTS (is it the official "
                         "babilong/prompts.py?)")
    missing = [t for t in TASK_NAMES if t not in prompts]
    if missing:
        raise ValueError(f"{source}: DEFAULT_PROMPTS lacks {', '.join(missing)}")
    checked = {}
    for task in TASK_NAMES:
        parts = prompts[task]
        if not isinstance(parts, dict) or not all(
                isinstance(parts.get(p), str) for p in PROMPT_PARTS):
            raise ValueError(f"{source}: DEFAULT_PROMPTS[{task!r}] needs string values for "
                             f"{', '.join(PROMPT_PARTS)}")
        checked[task] = {p: parts[p] for p in PROMPT_PARTS}
    return OfficialPrompts(prompts=checked, template=template, source=source, sha256=sha)


# -- finding the file ---------------------------------------------------------------------
def _download(url: str, timeout_s: float = 30.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read()


def _read_checked(path: Path, *, strict: bool) -> OfficialPrompts:
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha != PINNED_SHA256:
        message = (f"prompts file {path} has sha256 {sha}, not the pinned official file's "
                   f"{PINNED_SHA256} (booydar/babilong@{PINNED_COMMIT[:7]})")
        if strict:
            raise ValueError(f"{message}: replace it with the official file, or name it "
                             "explicitly (--prompts) to use it anyway")
        log.warning("%s; using it as given", message)
    return prompts_from_source(data.decode("utf-8"), source=os.fspath(path))


def load_prompts(
    path: str | os.PathLike | None = None,
    *,
    manual_dir: str | os.PathLike | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
    fetch: Callable[[str], bytes] = _download,
) -> OfficialPrompts:
    """The official prompts, from `path`, `manual_dir` or the pinned download (module doc).

    fetch: url -> bytes (the download; replaceable for tests and mirrors).
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ValueError(f"prompts file {path} does not exist")
        return _read_checked(path, strict=False)
    if manual_dir is not None:
        candidate = Path(manual_dir).expanduser() / MANUAL_DIR_PATH
        if not candidate.is_file():
            raise ValueError(f"{candidate} does not exist: put the official babilong/prompts.py "
                             f"(commit {PINNED_COMMIT}) there, or pass a prompts file")
        return _read_checked(candidate, strict=True)
    cache = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    cached = cache / PINNED_COMMIT / "prompts.py"
    if cached.is_file():
        return _read_checked(cached, strict=True)
    if not download:
        raise ValueError("no prompts file: pass one, or a manual dir holding "
                         f"{MANUAL_DIR_PATH}, or allow the download")
    try:
        data = fetch(PINNED_URL)
    except OSError as e:
        raise ValueError(f"could not download the official prompts from {PINNED_URL} ({e}): "
                         f"pass a manual dir holding {MANUAL_DIR_PATH} or a prompts file"
                         ) from None
    sha = hashlib.sha256(data).hexdigest()
    if sha != PINNED_SHA256:
        raise ValueError(f"downloaded {PINNED_URL} has sha256 {sha}, not the pinned "
                         f"{PINNED_SHA256}: nothing was kept")
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cached, lambda tmp: Path(tmp).write_bytes(data))
    return prompts_from_source(data.decode("utf-8"), source=PINNED_URL)


# -- building prompts ---------------------------------------------------------------------
def format_prompt(context: str, question: str, *, instruction: str, examples: str,
                  post_prompt: str, template: str) -> str:
    """The prompt the official `get_formatted_input` makes: the template filled in, with the
    context stripped, and the whole stripped."""
    filled = template.format(instruction=instruction, examples=examples,
                             post_prompt=post_prompt, context=context.strip(),
                             question=question)
    return filled.strip()


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """The official runner's prompt switches; the defaults are the published setting."""

    use_instruction: bool = True
    use_examples: bool = True
    use_post_prompt: bool = True
    chat_template: bool = False  # the prompt goes out as a chat message
    system_prompt: str = ""  # for chat requests

    def parts(self, prompts: OfficialPrompts, task: str) -> dict[str, str]:
        """The task's instruction, examples and post-prompt, '' for those switched off."""
        parts = prompts.parts(task)
        used = (self.use_instruction, self.use_examples, self.use_post_prompt)
        return {p: parts[p] if use else "" for p, use in zip(PROMPT_PARTS, used, strict=True)}

    def official_config(self, prompts: OfficialPrompts, task: str) -> dict:
        """The `prompt` dict the official runner saves beside its predictions (same keys)."""
        return {**self.parts(prompts, task), "template": prompts.template,
                "chat_template": self.chat_template, "system_prompt": self.system_prompt}

    def name(self, prompts: OfficialPrompts, task: str) -> str:
        """The official run name: each key but the template, '_yes' when set, else '_no'."""
        config = self.official_config(prompts, task)
        return "_".join(f"{k}_{'yes' if v else 'no'}" for k, v in config.items()
                        if k != "template")

    def build(self, prompts: OfficialPrompts, task: str, context: str, question: str) -> str:
        """One sample's prompt (the user message when chatting)."""
        return format_prompt(context, question, template=prompts.template,
                             **self.parts(prompts, task))
