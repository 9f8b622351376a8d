"""The official prompts read as data: byte-equal to the official function, pinned, never run."""

import hashlib
import importlib.util
import itertools
import logging

import pytest

from babilong_tfds import prompts as prompts_lib
from babilong_tfds.tasks import TASK_NAMES

from .conftest import SHARED_DATA

OFFICIAL_FILE = SHARED_DATA / "babilong_official" / "prompts.py"

CONTEXTS = [
    "Mary went to the kitchen. John moved to the garden.",
    "  \nThe book says {so} much.\n\nMary went to the kitchen.  \n",
    "",
]
QUESTIONS = ["Where is Mary? ", "How many objects is {x} carrying?"]


@pytest.fixture(scope="module")
def official_file():
    if not OFFICIAL_FILE.is_file():
        pytest.skip(f"the official prompts file {OFFICIAL_FILE} is absent")
    return OFFICIAL_FILE


@pytest.fixture(scope="module")
def official_module(official_file):
    """The official file imported (the test's reference, never the product's)."""
    spec = importlib.util.spec_from_file_location("babilong_official_prompts", official_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def official(official_file):
    return prompts_lib.load_prompts(manual_dir=official_file.parents[1])


def test_parsed_values_equal_the_official_module(official, official_module):
    assert official.template == official_module.DEFAULT_TEMPLATE
    assert dict(official.prompts) == {
        t: {p: official_module.DEFAULT_PROMPTS[t][p] for p in prompts_lib.PROMPT_PARTS}
        for t in TASK_NAMES
    }
    assert official.sha256 == prompts_lib.PINNED_SHA256


def test_prompts_equal_the_official_function_byte_for_byte(official, official_module):
    switches = list(itertools.product([True, False], repeat=3))
    checked = 0
    for task in TASK_NAMES:
        for use_i, use_e, use_p in switches:
            config = prompts_lib.PromptConfig(use_i, use_e, use_p)
            part = official_module.DEFAULT_PROMPTS[task]
            for context, question in itertools.product(CONTEXTS, QUESTIONS):
                ours = config.build(official, task, context, question)
                theirs = official_module.get_formatted_input(
                    context, question,
                    part["examples"] if use_e else "",
                    part["instruction"] if use_i else "",
                    part["post_prompt"] if use_p else "",
                    template=official_module.DEFAULT_TEMPLATE)
                assert ours.encode("utf-8") == theirs.encode("utf-8"), (task, use_i, use_e)
                checked += 1
    assert checked == 20 * 8 * len(CONTEXTS) * len(QUESTIONS)


def test_run_names_follow_the_official_runner(official):
    assert prompts_lib.PromptConfig().name(official, "qa1") == (
        "instruction_yes_examples_yes_post_prompt_yes_chat_template_no_system_prompt_no")
    config = prompts_lib.PromptConfig(use_examples=False, chat_template=True,
                                      system_prompt="You are terse.")
    assert config.name(official, "qa7") == (
        "instruction_yes_examples_no_post_prompt_yes_chat_template_yes_system_prompt_yes")
    saved = config.official_config(official, "qa7")
    assert list(saved) == ["instruction", "examples", "post_prompt", "template",
                           "chat_template", "system_prompt"]
    assert saved["examples"] == "" and saved["template"] == official.template


def test_fstring_of_earlier_constants_is_resolved_without_running_anything(tmp_path):
    flag = tmp_path / "ran"
    source = (
        "import os\n"
        "A = 'x{instruction}'\n"
        "B = '{context}|{question}' '!'\n"
        f"SIDE = open({str(flag)!r}, 'w')\n"
        "DEFAULT_TEMPLATE = f'{A}\\n{B}'\n"
        "def get_formatted_input():\n    os.remove('/')\n"
        "DEFAULT_PROMPTS = {" + ", ".join(
            f"'qa{i}': {{'instruction': 'i{i}', 'examples': 'e', 'post_prompt': 'p'}}"
            for i in range(1, 21)) + "}\n"
    )
    parsed = prompts_lib.prompts_from_source(source)
    assert parsed.template == "x{instruction}\n{context}|{question}!"
    assert parsed.parts("qa3")["instruction"] == "i3"
    assert not flag.exists()
    built = prompts_lib.PromptConfig().build(parsed, "qa2", " c ", "q")
    assert built == "xi2\nc|q!"


@pytest.mark.parametrize("source, message", [
    ("DEFAULT_PROMPTS = {}\n", "DEFAULT_TEMPLATE"),
    ("DEFAULT_TEMPLATE = '{context}'\n", "DEFAULT_PROMPTS"),
    ("DEFAULT_TEMPLATE = f'{UNKNOWN}'\nDEFAULT_PROMPTS = {}\n", "DEFAULT_TEMPLATE"),
    ("DEFAULT_TEMPLATE = 't'\nDEFAULT_PROMPTS = {'qa1': {}}\n", "lacks qa2"),
    ("DEFAULT_TEMPLATE = 't'\nDEFAULT_PROMPTS = {" + ", ".join(
        f"'qa{i}': {{'instruction': 1, 'examples': '', 'post_prompt': ''}}"
        for i in range(1, 21)) + "}\n", "string values"),
    ("def (:\n", "not valid Python"),
])
def test_bad_prompts_files_name_the_problem(source, message):
    with pytest.raises(ValueError, match=message):
        prompts_lib.prompts_from_source(source)


def test_manual_dir_file_must_match_the_pin(tmp_path, official_file):
    bad = tmp_path / "manual" / prompts_lib.MANUAL_DIR_PATH
    bad.parent.mkdir(parents=True)
    bad.write_bytes(official_file.read_bytes() + b"\n# edited\n")
    with pytest.raises(ValueError, match="sha256"):
        prompts_lib.load_prompts(manual_dir=tmp_path / "manual")
    with pytest.raises(ValueError, match="does not exist"):
        prompts_lib.load_prompts(manual_dir=tmp_path)


def test_an_explicit_file_is_used_with_a_warning(tmp_path, official_file, caplog):
    edited = tmp_path / "prompts.py"
    edited.write_bytes(official_file.read_bytes() + b"\n# edited\n")
    with caplog.at_level(logging.WARNING, logger=prompts_lib.__name__):
        loaded = prompts_lib.load_prompts(edited)
    assert "not the pinned" in caplog.text
    assert loaded.sha256 != prompts_lib.PINNED_SHA256
    with pytest.raises(ValueError, match="does not exist"):
        prompts_lib.load_prompts(tmp_path / "absent.py")


def test_download_is_checked_and_cached(tmp_path, official_file):
    good = official_file.read_bytes()
    urls = []

    def fetch(url):
        urls.append(url)
        return good

    loaded = prompts_lib.load_prompts(cache_dir=tmp_path, fetch=fetch)
    assert urls == [prompts_lib.PINNED_URL]
    assert prompts_lib.PINNED_COMMIT in urls[0]
    cached = tmp_path / prompts_lib.PINNED_COMMIT / "prompts.py"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == prompts_lib.PINNED_SHA256
    assert loaded.sha256 == prompts_lib.PINNED_SHA256
    # The second load reads the cache.
    prompts_lib.load_prompts(cache_dir=tmp_path, fetch=fetch)
    assert len(urls) == 1


def test_a_bad_or_failed_download_keeps_nothing(tmp_path, official_file):
    with pytest.raises(ValueError, match="sha256"):
        prompts_lib.load_prompts(cache_dir=tmp_path,
                                 fetch=lambda url: official_file.read_bytes() + b" ")
    assert not any(tmp_path.rglob("*.py"))

    def offline(url):
        raise OSError("network is unreachable")

    with pytest.raises(ValueError, match="could not download"):
        prompts_lib.load_prompts(cache_dir=tmp_path, fetch=offline)
    with pytest.raises(ValueError, match="no prompts file"):
        prompts_lib.load_prompts(cache_dir=tmp_path, download=False)
