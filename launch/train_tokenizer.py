r"""Trains the project's own sentencepiece model on the haystack books and the bAbI text.

The shipped model (babilong_tfds/assets/babilong_sp.model) was made with:

  .venv/bin/python -m launch.train_tokenizer \
      --haystack_dir=../shared/data/haystack --babi_dir=../shared/data/babi

Contract: the same input files and flags give a byte-identical .model file. To get
that, the text is gathered in sorted file order, the Project Gutenberg header and footer
are cut off, book lines are sampled with a seeded numpy Generator, and the trainer runs
on one thread with a fixed random seed. Every distinct bAbI line (statements, questions
and answers of all files, v1.1 and the v1.2 archive) is given `--babi_repeat` times, so
the bAbI answer words become single pieces. The model is written to a temporary file
beside `--out`, then renamed, so a reader never sees half a model.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import sentencepiece as spm
from absl import app, flags, logging

from babilong_tfds.haystack import strip_gutenberg
from rmt_jax.files import atomic_write

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "babilong_tfds" / "assets" / "babilong_sp.model"

_HAYSTACK_DIR = flags.DEFINE_string("haystack_dir", None, "Folder of pg*.txt Gutenberg books.")
_BABI_DIR = flags.DEFINE_string("babi_dir", None, "Folder of bAbI files (.txt and .tar.gz).")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 8192, "Number of pieces.")
_MODEL_TYPE = flags.DEFINE_enum("model_type", "unigram", ["unigram", "bpe"], "Model type.")
_OUT = flags.DEFINE_string("out", str(DEFAULT_OUT), "Where to write the .model file.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the line sampling and of the trainer.")
_MAX_SENTENCES = flags.DEFINE_integer(
    "max_sentences", 300_000, "At most this many book lines (bAbI lines come on top)."
)
_BABI_REPEAT = flags.DEFINE_integer(
    "babi_repeat", 20, "Times each distinct bAbI line is given to the trainer."
)

# Fixed special ids: pad 0 so that zero-padded arrays need no mapping, eos 1 as the RMT
# training uses it; bos is kept for decoders that want it.
SPECIAL_IDS = {"pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3}


def book_lines(haystack_dir: str | Path) -> list[str]:
    """Non-empty stripped lines of every pg*.txt book, in sorted file order."""
    files = sorted(Path(haystack_dir).glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no .txt books in {haystack_dir}: pass --haystack_dir")
    out: list[str] = []
    for path in files:
        body = strip_gutenberg(path.read_text(encoding="utf-8"))
        out.extend(s for s in (line.strip() for line in body.split("\n")) if s)
    return out


def _babi_texts(babi_dir: Path) -> Iterator[str]:
    for path in sorted(babi_dir.rglob("*")):
        if not path.is_file():
            continue
        if path.name.startswith("qa") and path.suffix == ".txt":
            yield path.read_text(encoding="utf-8")
        elif path.name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(path, "r:*") as tar:
                for member in sorted(tar.getnames()):
                    if Path(member).name.startswith("qa") and member.endswith(".txt"):
                        f = tar.extractfile(member)
                        if f is not None:
                            yield io.TextIOWrapper(f, encoding="utf-8").read()


def babi_lines(babi_dir: str | Path) -> list[str]:
    """Every distinct statement, question and answer of the bAbI files, sorted.

    Plain reading rather than babi.load_babi: every copy of every task is wanted, and
    answers are taken as text ('apple,milk' also gives 'apple' and 'milk').
    """
    babi_dir = Path(babi_dir)
    if not babi_dir.exists():
        raise FileNotFoundError(f"bAbI folder {babi_dir} does not exist: pass --babi_dir")
    seen: set[str] = set()
    for text in _babi_texts(babi_dir):
        for line in text.splitlines():
            _, _, rest = line.strip().partition(" ")
            fields = rest.split("\t")
            seen.add(fields[0].strip())
            if len(fields) >= 2:
                seen.add(fields[1].strip())
                seen.update(a.strip() for a in fields[1].split(","))
    seen.discard("")
    if not seen:
        raise FileNotFoundError(f"no bAbI qa*.txt files under {babi_dir}")
    return sorted(seen)


def gather_sentences(
    haystack_dir: str | Path,
    babi_dir: str | Path,
    max_sentences: int,
    seed: int,
    babi_repeat: int = 1,
) -> list[str]:
    """Sampled book lines (in book order), then the distinct bAbI lines `babi_repeat` times.

    The bAbI text has only a few thousand distinct lines; given once, the unigram trainer
    splits words such as 'bored' or 'cats'. Repeating them (20 times for the shipped
    model) makes every answer label a single piece; a few names (Emily, Jessica, Yann)
    and 'journeyed' stay two pieces.
    """
    books = book_lines(haystack_dir)
    if max_sentences and len(books) > max_sentences:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(books), size=max_sentences, replace=False))
        books = [books[i] for i in keep]
    return books + babi_lines(babi_dir) * babi_repeat


def train_model(
    sentences: Iterable[str], out: str | Path, vocab_size: int, model_type: str, seed: int
) -> Path:
    """Trains on `sentences` and writes the model atomically to `out`; returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        # Rare characters fall back to bytes, so no text ever encodes to <unk> and the
        # token counts of the haystack stay honest.
        character_coverage=0.9999,
        byte_fallback=True,
        num_threads=1,
        # All given sentences are used as given: sampling happened above, with our seed.
        input_sentence_size=0,
        shuffle_input_sentence=False,
        max_sentence_length=1 << 14,
        minloglevel=2,
        **SPECIAL_IDS,
    )
    # A new file's permissions (0644 under umask 022): the model is shipped, read by everyone.
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(model.getvalue()))
    return out


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _HAYSTACK_DIR.value or not _BABI_DIR.value:
        raise app.UsageError("--haystack_dir and --babi_dir are required")
    t0 = time.perf_counter()
    sentences = gather_sentences(
        _HAYSTACK_DIR.value,
        _BABI_DIR.value,
        _MAX_SENTENCES.value,
        _SEED.value,
        _BABI_REPEAT.value,
    )
    logging.info("gathered %d sentences in %.1fs", len(sentences), time.perf_counter() - t0)
    out = train_model(sentences, _OUT.value, _VOCAB_SIZE.value, _MODEL_TYPE.value, _SEED.value)
    logging.info("wrote %s in %.1fs", out, time.perf_counter() - t0)


if __name__ == "__main__":
    app.run(main)
