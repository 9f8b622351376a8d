"""Tokenizers: GPT-2 ids, the shipped model, additivity over sentences, and the trainer."""

import hashlib
import pickle
import re
import time

import numpy as np
import pytest

from babilong_tfds import tokenizer as tok
from babilong_tfds.tasks import LABELS
from launch import train_tokenizer


@pytest.fixture(scope="module")
def sp():
    return tok.get_tokenizer("sentencepiece")


@pytest.fixture(scope="module")
def gpt2(gpt2_dir):
    return tok.get_tokenizer(f"gpt2:{gpt2_dir}")


@pytest.fixture(scope="module")
def book_sentences(haystack_dir):
    """The first 3000 sentences of Pride and Prejudice, split naively on end punctuation."""
    body = train_tokenizer.strip_gutenberg((haystack_dir / "pg1342.txt").read_text("utf-8"))
    text = " ".join(body.split())
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s][:3000]


def test_gpt2_reproduces_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" Hello") == [18435]
    assert gpt2.encode("The quick brown fox") == [464, 2068, 7586, 21831]
    assert gpt2.encode("\n\n") == [628]
    assert gpt2.vocab_size == 50257
    assert gpt2.eos_id == gpt2.bos_id == 50256
    assert gpt2.pad_id == -1
    assert gpt2.name == "gpt2_bpe"


@pytest.mark.parametrize(
    "text", [" Mary moved to the bathroom.", "Où est-il? «Là» — 1234 ☃ 😀", "  two  spaces\n"]
)
def test_gpt2_round_trips(gpt2, text):
    assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_encode_piece_is_encoding_after_a_space(gpt2):
    assert gpt2.encode_piece("Mary moved.") == gpt2.encode(" Mary moved.")
    assert gpt2.encode_piece("Mary") != gpt2.encode("Mary")
    [ids] = gpt2.encode_sentences(["Mary moved."])
    assert ids.dtype == np.int32
    assert ids.tolist() == gpt2.encode(" Mary moved.")


def test_shipped_model_loads_with_fixed_special_ids(sp):
    assert sp.name == "sentencepiece:babilong_sp"
    assert sp.vocab_size == 8192
    assert (sp.pad_id, sp.eos_id, sp.bos_id, sp.unk_id) == (0, 1, 2, 3)
    assert sp.fingerprint == hashlib.sha256(tok.DEFAULT_SP_MODEL.read_bytes()).hexdigest()
    text = "Mary moved to the bathroom. John went to the hallway."
    assert sp.decode(sp.encode(text)) == text


# Names as the bAbI text writes them (the label sets are lower-case).
NAMES = {"Mary", "John", "Sandra", "Daniel", "Bill", "Fred", "Jeff", "Julie", "Bernhard"}


def test_babi_answer_labels_are_single_pieces_without_unk(sp):
    words = {w for labels in LABELS.values() for label in labels for w in label.split(",")}
    words = {w.capitalize() if w.capitalize() in NAMES else w for w in words} | NAMES
    for word in sorted(words):
        ids = sp.encode(word)
        assert sp.unk_id not in ids and sp.unk_id not in sp.encode(word.lower()), word
        if len(word) > 1:
            assert len(ids) == 1, (word, [sp.id_to_piece(i) for i in ids])


def test_babi_text_has_no_unknown_pieces(sp, babi_root):
    lines = train_tokenizer.babi_lines(babi_root)
    assert len(lines) > 1000
    for ids in sp.encode_sentences(lines):
        assert sp.unk_id not in ids


def test_byte_fallback_means_no_unk_on_rare_characters(sp):
    text = "ʘ 漢字 😀"
    ids = sp.encode(text)
    assert sp.unk_id not in ids
    assert sp.decode(ids) == text


@pytest.mark.parametrize("name", ["sp", "gpt2"])
def test_sentence_counts_add_up_to_the_joined_text(name, request, book_sentences):
    t = request.getfixturevalue(name)
    summed = sum(len(ids) for ids in t.encode_sentences(book_sentences))
    joined = t.count_tokens(" ".join(book_sentences))
    assert summed > 50_000
    assert abs(summed - joined) <= 0.005 * joined, (summed, joined)


def test_encode_batch_equals_encode(sp, gpt2):
    texts = ["Mary moved to the bathroom.", "", "Where is Mary?"]
    for t in (sp, gpt2):
        assert t.encode_batch(texts) == [t.encode(x) for x in texts]


def test_tokenizers_survive_pickling(sp, gpt2):
    for t in (sp, gpt2):
        clone = pickle.loads(pickle.dumps(t))
        assert clone.fingerprint == t.fingerprint
        assert clone.encode("Where is Mary?") == t.encode("Where is Mary?")


def test_protocol_and_distinct_fingerprints(sp, gpt2):
    assert isinstance(sp, tok.Tokenizer) and isinstance(gpt2, tok.Tokenizer)
    assert len({sp.fingerprint, gpt2.fingerprint}) == 2


def test_get_tokenizer_specs(tmp_path, sp):
    assert tok.get_tokenizer(f"sentencepiece:{tok.DEFAULT_SP_MODEL}").fingerprint == (
        sp.fingerprint
    )
    with pytest.raises(ValueError, match="unknown tokenizer 'bert'"):
        tok.get_tokenizer("bert")
    # A bare 'gpt2' finds its files in a given folder or its gpt2_tokenizer/ subfolder.
    gpt2_dir = tok.find_gpt2_dir([tmp_path, tok.ASSETS.parents[2].parent / "shared" / "data"])
    if gpt2_dir is not None:
        found = tok.get_tokenizer("gpt2", search_dirs=[tmp_path, gpt2_dir.parent])
        assert found.name == "gpt2_bpe" and found.vocab_json.parent == gpt2_dir
    assert tok.tokenizer_kind("gpt2:/x") == "gpt2" and tok.tokenizer_kind("sentencepiece") == (
        "sentencepiece")
    with pytest.raises(FileNotFoundError, match="vocab.json and merges.txt"):
        tok.get_tokenizer(f"gpt2:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tok.get_tokenizer(f"sentencepiece:{tmp_path / 'none.model'}")


def test_strip_gutenberg_keeps_only_the_book():
    text = (
        "\ufeffThe Project Gutenberg eBook\r\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\r\n"
        "Body line.\r\n***END OF THE PROJECT GUTENBERG EBOOK X***\r\nLicence"
    )
    assert train_tokenizer.strip_gutenberg(text) == "Body line."
    assert train_tokenizer.strip_gutenberg("no markers") == "no markers"


def test_training_is_deterministic(tmp_path, haystack_dir, babi_root):
    start = time.perf_counter()
    sentences = train_tokenizer.gather_sentences(haystack_dir, babi_root, 5000, seed=0)
    assert sentences == train_tokenizer.gather_sentences(haystack_dir, babi_root, 5000, seed=0)
    assert sentences != train_tokenizer.gather_sentences(haystack_dir, babi_root, 5000, seed=1)
    paths = [
        train_tokenizer.train_model(sentences, tmp_path / f"m{i}.model", 1000, "unigram", 0)
        for i in range(2)
    ]
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    assert len(digests) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    model = tok.SentencePieceTokenizer(paths[0])
    assert model.vocab_size == 1000
    assert time.perf_counter() - start < 60
