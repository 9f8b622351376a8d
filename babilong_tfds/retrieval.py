"""A BM25 retrieval baseline: keep the k context sentences that best match the question.

The context is split into sentences with NLTK's untrained `PunktSentenceTokenizer()` (the
splitter the reference uses on the background books, so every inserted fact is one
sentence), the sentences are ranked against the question with BM25 (`bm25s`, English stop
words dropped, lucene scoring), and the `top_k` best are kept in the order they had in the
context, joined by single spaces. Ties go to the earlier sentence, so the same input gives
the same context. A question with no indexed word keeps the first `top_k` sentences.

    retrieve_context(context, question, method='bm25', top_k=5) -> str
    run_suffix('bm25', 5) -> 'retrieval_bm25_top_5'  (appended to the run name)

Needs the `llm` extra (`bm25s`) and `nltk`.
"""

from __future__ import annotations

import functools

import numpy as np

# 'none' passes the context through.
METHODS = ("none", "bm25")


def check_retrieval(method: str, top_k: int) -> None:
    """Raises a ValueError naming the problem for an unknown method or a top_k below 1."""
    if method not in METHODS:
        raise ValueError(f"unknown retrieval {method!r}: expected one of {', '.join(METHODS)}")
    if method != "none" and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1")


def run_suffix(method: str, top_k: int) -> str:
    """What a retrieved-context run adds to its name ('' for none)."""
    check_retrieval(method, top_k)
    return "" if method == "none" else f"retrieval_{method}_top_{top_k}"


@functools.cache
def _sentence_splitter():
    import nltk

    return nltk.PunktSentenceTokenizer()


def split_sentences(text: str) -> list[str]:
    """The sentences of `text` (untrained Punkt), each as it stands in the text."""
    return _sentence_splitter().tokenize(text)


def _bm25():
    try:
        import bm25s
    except ImportError:
        raise ValueError("BM25 retrieval needs the bm25s package: pip install -e '.[llm]'"
                         ) from None
    return bm25s


def bm25_scores(sentences: list[str], question: str) -> np.ndarray:
    """BM25 score of each sentence for the question, [len(sentences)] float32."""
    bm25s = _bm25()
    if not sentences:
        return np.zeros((0,), np.float32)
    corpus = bm25s.tokenize(sentences, stopwords="en", show_progress=False)
    index = bm25s.BM25()
    index.index(corpus, show_progress=False)
    (query,) = bm25s.tokenize([question], stopwords="en", show_progress=False,
                              return_ids=False)
    query = [token for token in query if token in corpus.vocab]
    if not query:
        return np.zeros((len(sentences),), np.float32)
    return np.asarray(index.get_scores(query), np.float32)


def top_sentences(sentences: list[str], scores: np.ndarray, top_k: int) -> list[str]:
    """The `top_k` best-scored sentences in their original order; ties to the earlier one."""
    best = np.argsort(-scores, kind="stable")[:top_k]
    return [sentences[i] for i in sorted(best.tolist())]


def retrieve_context(context: str, question: str, *, method: str = "bm25",
                     top_k: int = 5) -> str:
    """The context the model sees: all of it ('none'), or the retrieved sentences."""
    check_retrieval(method, top_k)
    if method == "none":
        return context
    sentences = split_sentences(context)
    return " ".join(top_sentences(sentences, bm25_scores(sentences, question), top_k))
