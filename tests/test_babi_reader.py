"""The bAbI reader against the original files and against malformed input."""

import tarfile

import pytest

from babilong_tfds import babi


def test_reads_v11_qa1_story_by_story(babi_root):
    samples = babi.load_babi("qa1", "train", babi_root / "v1.1")
    assert len(samples) == 1000  # 1k questions per v1.1 file
    first = samples[0]
    assert first.facts == ("Mary moved to the bathroom.", "John went to the hallway.")
    assert (first.question, first.answer, first.supporting) == ("Where is Mary?", "bathroom", (0,))
    # The second question of the story sees all earlier statements, not the first question.
    second = samples[1]
    assert second.facts[:2] == first.facts and len(second.facts) == 4
    assert second.facts[second.supporting[0]] == "Daniel went back to the hallway."
    assert samples[5].story == 1  # IDs restart at 1: a new story


@pytest.mark.parametrize("task", ["qa2", "qa8", "qa19"])
def test_prefers_en10k_from_archive(babi_root, task):
    samples = babi.load_babi(task, "test", babi_root)
    assert "en-10k" in samples[0].origin and len(samples) == 1000


def test_a_folder_of_one_tasks_en10k_files_is_preferred_to_v11(tmp_path):
    """A copy of one task's v1.2 files named after the variant and the task (as
    ../shared/data/babi/v1.2-en-10k-qa1) ranks as the variant, above v1.1; a folder whose
    name only starts like a variant does not."""
    name = babi.file_name("qa1", "test")
    for folder, fact in (("v1.1/en", "Mary moved to the bathroom."),
                         ("v1.2-en-10k-qa1", "John went to the hallway."),
                         ("en-valid-10k", "Sandra journeyed to the garden.")):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / name).write_text(f"1 {fact}\n2 Where is X?\tplace\t1\n")
    assert [str(f.path.parent.relative_to(tmp_path)) for f in
            babi.find_babi_files(tmp_path, "qa1", "test")] == [
        "v1.2-en-10k-qa1", "v1.1/en", "en-valid-10k"]
    assert babi.load_babi("qa1", "test", tmp_path)[0].facts == ("John went to the hallway.",)


def test_supporting_facts_name_the_answer_for_qa1(babi_root):
    for s in babi.load_babi("qa1", "test", babi_root):
        fact = s.facts[s.supporting[0]]
        assert fact.split()[0] in s.question and fact.rstrip(".").endswith(s.answer)


def test_missing_en10k_file_falls_back_to_v11(babi_root):
    samples = babi.load_babi("qa3", "train", babi_root)  # the 10k qa3 train file is missing
    assert "v1.1" in samples[0].origin


@pytest.mark.parametrize(
    "lines, message",
    [
        (["1 Mary moved.", "x bad line"], ":2: expected 'ID text'"),
        (["1 Mary moved.", "3 John went."], ":2: line ID 3 does not follow 1"),
        (["1 Mary moved.", "2 Where is Mary?\tbathroom"], ":2: a question line needs"),
        (["1 Mary moved.", "2 Where?\tbathroom\t5"], ":2: supporting IDs [5]"),
        (["1 Mary moved.", "2 Where?\tbathroom\tone"], ":2: supporting IDs must be integers"),
    ],
)
def test_malformed_lines_name_file_and_line(lines, message):
    with pytest.raises(babi.BabiFormatError, match=r"f\.txt" + message.replace("[", r"\[")):
        babi.parse_babi(lines, "qa1", "f.txt")


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(babi.BabiFileNotFound, match="qa1_single-supporting-fact_test.txt under"):
        babi.load_babi("qa1", "test", tmp_path)
    with pytest.raises(babi.BabiFileNotFound, match="does not exist"):
        babi.load_babi("qa1", "test", tmp_path / "nope")


def test_unknown_task_and_split():
    with pytest.raises(ValueError, match="unknown task 'qa21': expected one of qa1..qa20"):
        babi.load_babi("qa21", "test", ".")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        babi.file_name("qa1", "dev")


def test_reads_member_of_a_tar_archive(tmp_path):
    src = tmp_path / "qa1_single-supporting-fact_test.txt"
    src.write_text("1 Mary moved to the office.\n2 Where is Mary? \toffice\t1\n")
    with tarfile.open(tmp_path / "tasks.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="tasks_1-20_v1-2/en-10k/" + src.name)
    src.unlink()
    (sample,) = babi.load_babi("qa1", "test", tmp_path)
    assert sample.answer == "office" and "tasks.tar.gz!" in sample.origin


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_damaged_archive_beside_a_plain_file_is_named(babi_root, tmp_path, keep):
    """A truncated tar.gz in the bAbI folder broke every read with a bare EOFError or
    ReadError; the error names the archive and what to do."""
    plain = tmp_path / "en-10k" / babi.file_name("qa1", "test")
    plain.parent.mkdir()
    plain.write_text((babi_root / "v1.1" / "en" / babi.file_name("qa1", "test")).read_text())
    archive = (babi_root / "tasks_1-20_v1-2-en-10k.tar.gz").read_bytes()
    (tmp_path / "tasks.tar.gz").write_bytes(archive[: int(len(archive) * keep)])
    with pytest.raises(ValueError, match=r"tasks\.tar\.gz is damaged .*replace it .* or remove"):
        babi.load_babi("qa1", "test", tmp_path)
