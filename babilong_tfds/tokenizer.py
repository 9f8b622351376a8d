"""Tokenizers that count BABILong lengths: GPT-2 BPE (the default, as the official
generator counts) and the shipped sentencepiece model (the legacy option, for training).

Specs (`get_tokenizer`): 'gpt2' (vocab.json + merges.txt found in a folder given as
`search_dirs`, e.g. `MANUAL_DIR/gpt2_tokenizer/`, else downloaded from the Hugging Face hub),
'gpt2:DIR', 'sentencepiece' (the shipped model) or 'sentencepiece:/path/x.model'.

Contract (what the haystack composer relies on): sentences are tokenized one by one with
`encode_sentences`, their counts are added, and the final text joins the sentences with
single spaces. So `len(encode(" ".join(sents)))` is within a token or so of
`sum(len(ids) for ids in encode_sentences(sents))`:

- sentencepiece adds a dummy '▁' prefix to each input and never merges across
  whitespace, so a sentence alone encodes as it does after a space in running text;
- GPT-2 BPE glues a leading space to the following word ('Ġword'), so a sentence is
  encoded as it appears after a space: `encode_piece(s) == encode(" " + s)`.
  `encode(text)` itself adds nothing, and reproduces GPT-2's ids exactly.

Ids are plain ints (lists) from `encode`, int32 arrays from `encode_sentences`.
`fingerprint` is the sha256 of the model files, for use as a cache key: two tokenizers
with the same fingerprint give the same ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import sentencepiece as spm
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_SP_MODEL = ASSETS / "babilong_sp.model"
GPT2_FILES = ("vocab.json", "merges.txt")
GPT2_EOS = "<|endoftext|>"
# The default tokenizer spec, and where its files sit under a TFDS manual dir.
DEFAULT_TOKENIZER = "gpt2"
GPT2_SUBDIR = "gpt2_tokenizer"
GPT2_HUB_REPO = "openai-community/gpt2"
# The same files by URL, for a download manager (the TFDS builder without a manual dir).
GPT2_URLS = {f: f"https://huggingface.co/{GPT2_HUB_REPO}/resolve/main/{f}" for f in GPT2_FILES}


@runtime_checkable
class Tokenizer(Protocol):
    """What the library needs of a tokenizer (see the module docstring for the contract)."""

    name: str
    vocab_size: int
    fingerprint: str
    pad_id: int
    eos_id: int
    bos_id: int

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def encode_piece(self, text: str) -> list[int]: ...

    def encode_sentences(self, sentences: Sequence[str]) -> list[np.ndarray]: ...

    def count_tokens(self, text: str) -> int: ...

    def decode(self, ids: Iterable[int]) -> str: ...


def _sha256_files(paths: Sequence[Path]) -> str:
    """One file: its sha256 (what `sha256sum` prints). Several: the sha256 of their
    sha256 hex digests joined by newlines, so renaming a file keeps the key."""
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def _as_int_list(ids: Iterable[int]) -> list[int]:
    return [int(i) for i in np.asarray(ids).reshape(-1)]


class SentencePieceTokenizer:
    """A sentencepiece model; by default the shipped babilong_tfds/assets/babilong_sp.model."""

    def __init__(self, model_path: str | Path | None = None):
        self.model_path = Path(model_path) if model_path is not None else DEFAULT_SP_MODEL
        if not self.model_path.is_file():
            raise FileNotFoundError(
                f"sentencepiece model {self.model_path} does not exist: pass the path of a "
                ".model file (the shipped one is made by launch/train_tokenizer.py)"
            )
        self._sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        self.name = f"sentencepiece:{self.model_path.stem}"
        self.vocab_size = int(self._sp.vocab_size())
        self.fingerprint = _sha256_files([self.model_path])
        self.pad_id = int(self._sp.pad_id())
        self.eos_id = int(self._sp.eos_id())
        self.bos_id = int(self._sp.bos_id())
        self.unk_id = int(self._sp.unk_id())

    def __reduce__(self):
        # Rebuilt from the path in worker processes (the processor is a C++ object).
        return (type(self), (self.model_path,))

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # sentencepiece encodes a list on its own threads.
        return self._sp.encode(list(texts))

    def encode_piece(self, text: str) -> list[int]:
        """`text` as it encodes after a space: the dummy prefix already gives that."""
        return self.encode(text)

    def encode_sentences(self, sentences: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(ids, np.int32) for ids in self.encode_batch(sentences)]

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode(_as_int_list(ids))

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({str(self.model_path)!r})"


class Gpt2BpeTokenizer:
    """GPT-2 byte-level BPE from local vocab.json and merges.txt (HF `tokenizers`).

    No special-token handling: the text '<|endoftext|>' is encoded as plain text, as
    tiktoken does by default; `eos_id`/`bos_id` are its id (50256), and there is no pad.
    """

    def __init__(self, vocab_json: str | Path, merges_txt: str | Path):
        self.vocab_json, self.merges_txt = Path(vocab_json), Path(merges_txt)
        missing = [str(p) for p in (self.vocab_json, self.merges_txt) if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"GPT-2 BPE needs vocab.json and merges.txt; missing: {', '.join(missing)}"
            )
        bpe = models.BPE.from_file(str(self.vocab_json), str(self.merges_txt))
        tok = tokenizers.Tokenizer(bpe)
        # GPT-2's own split: its regex, spaces kept on the following word, no added prefix.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        self._tok = tok
        self.name = "gpt2_bpe"
        self.vocab_size = int(tok.get_vocab_size())
        self.fingerprint = _sha256_files([self.vocab_json, self.merges_txt])
        eos = tok.token_to_id(GPT2_EOS)
        self.eos_id = int(eos) if eos is not None else -1
        self.bos_id = self.eos_id
        self.pad_id = -1

    @classmethod
    def from_dir(cls, directory: str | Path) -> Gpt2BpeTokenizer:
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"GPT-2 BPE folder {directory} does not exist: it must hold "
                f"{' and '.join(GPT2_FILES)}"
            )
        return cls(*(directory / f for f in GPT2_FILES))

    @classmethod
    def from_hub(cls, repo_id: str = GPT2_HUB_REPO) -> Gpt2BpeTokenizer:
        """vocab.json and merges.txt of a Hugging Face hub repository (cached by the hub)."""
        from huggingface_hub import hf_hub_download

        try:
            paths = [hf_hub_download(repo_id, name) for name in GPT2_FILES]
        except Exception as e:  # offline, unknown repo, ...: say what to do instead
            raise FileNotFoundError(
                f"GPT-2 BPE: no local vocab.json/merges.txt given and the Hugging Face hub "
                f"({repo_id}) could not be read ({type(e).__name__}: {e}); put the files in "
                f"MANUAL_DIR/{GPT2_SUBDIR}/ or pass 'gpt2:DIR'"
            ) from e
        return cls(*paths)

    def __reduce__(self):
        return (type(self), (self.vocab_json, self.merges_txt))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # The Rust side spreads a batch over its thread pool.
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_piece(self, text: str) -> list[int]:
        """`text` as it encodes after a space inside running text: encode(' ' + text)."""
        return self.encode(" " + text)

    def encode_sentences(self, sentences: Sequence[str]) -> list[np.ndarray]:
        ids = self.encode_batch([" " + s for s in sentences])
        return [np.asarray(x, np.int32) for x in ids]

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(_as_int_list(ids), skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"Gpt2BpeTokenizer({str(self.vocab_json)!r}, {str(self.merges_txt)!r})"


def find_gpt2_dir(search_dirs: Sequence[str | Path | None] = ()) -> Path | None:
    """The first of `search_dirs` (or its `gpt2_tokenizer/` subfolder) holding vocab.json and
    merges.txt; None when none does."""
    for root in search_dirs:
        if root is None:
            continue
        for d in (Path(root), Path(root) / GPT2_SUBDIR):
            if all((d / f).is_file() for f in GPT2_FILES):
                return d
    return None


def get_tokenizer(
    spec: str = DEFAULT_TOKENIZER, *, search_dirs: Sequence[str | Path | None] = ()
) -> Tokenizer:
    """'gpt2' | 'gpt2:/dir/with/vocab_and_merges' | 'sentencepiece' | 'sentencepiece:/x.model'.

    A bare 'gpt2' reads its files from the first of `search_dirs` that holds them (the folder
    or its `gpt2_tokenizer/` subfolder, e.g. a TFDS manual dir), else from the Hugging Face hub.
    """
    kind, sep, arg = spec.partition(":")
    if kind == "sentencepiece":
        return SentencePieceTokenizer(arg if sep and arg else None)
    if kind in ("gpt2", "gpt2_bpe"):
        if arg:
            return Gpt2BpeTokenizer.from_dir(arg)
        local = find_gpt2_dir(search_dirs)
        return Gpt2BpeTokenizer.from_dir(local) if local else Gpt2BpeTokenizer.from_hub()
    raise ValueError(
        f"unknown tokenizer {spec!r}: expected 'gpt2', 'gpt2:/dir/with/vocab.json+merges.txt', "
        "'sentencepiece' or 'sentencepiece:/path/x.model'"
    )


def tokenizer_kind(spec: str) -> str:
    """'gpt2:/some/dir' -> 'gpt2': which tokenizer a spec names, whatever its files' path."""
    kind = spec.partition(":")[0]
    return "gpt2" if kind == "gpt2_bpe" else kind
