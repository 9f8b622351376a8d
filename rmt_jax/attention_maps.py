"""What RMT's memory attends to: when writing facts, and when reading them to answer.

For one BABILong sample (notebooks/attention_maps.ipynb is the thin driver):

  * writing: in segment s the input is [read memory (R); tokens (len_s); write memory (N);
    pads], and the N write rows of the attention map of a layer are where the next memory
    looks. `segment_attention` returns those rows over [read memory; tokens], averaged over
    heads, with the positions of the bAbI fact tokens in the segment (from the record's
    `fact_offsets` and the facts' token counts);
  * reading: the segment that answers is [read memory; question; answer] in the 'separate'
    answer mode, and [read memory; last context tokens; question; answer] in 'in_context'
    (the last segment of `rmt_jax.core.answer.in_context_layout`; the segments before it are the
    writing ones). The core does not return its attention, so `answer_attention` runs the
    same computation as `RMT.answer_hidden` (`model.transformer` on `[read; embed(tokens)]`)
    with the weights returned: rows are the question and generated answer tokens, the first
    R columns the read memory, then the last context tokens (if any), question and answer.

Maps come from the layers in `config.attention_map_layers`; `with_attention_maps` sets them
on a restored model (the parameters do not change). Layer default: the last.

Offsets are exact when the record carries `input_ids` (as `sample_record` makes it): the
fact offsets count tokens of the ids, not of the text re-tokenized.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from babilong_tfds.dataset import BabilongSource
from rmt_jax import input_pipeline
from rmt_jax.core.answer import generate_answer, generate_in_context, in_context_layout
from rmt_jax.core.model import RMT
from rmt_jax.core.recurrence import initial_state, scan_segments


@dataclasses.dataclass
class SegmentAttention:
    """The write-memory rows of one segment's attention map (head mean)."""

    index: int                        # segment number
    tokens: np.ndarray                # [len] token ids of the segment's real tokens
    read_tokens: int                  # R: columns [0, R) are the read memory
    write: np.ndarray                 # [N, R + len] attention of each write token
    fact_spans: list[tuple[int, int, int]]  # (fact index, start, stop) within the tokens

    @property
    def fact_mask(self) -> np.ndarray:
        """[len] True on the fact tokens."""
        mask = np.zeros(len(self.tokens), bool)
        for _, start, stop in self.fact_spans:
            mask[start:stop] = True
        return mask

    def fact_share(self) -> tuple[float, float]:
        """(attention mass of the write rows on fact tokens, over their mass on all segment
        tokens; the fraction of the segment's tokens that are facts): a first > second means
        the memory looks at the facts more than at the text around them."""
        on_tokens = self.write[:, self.read_tokens:]
        total = float(on_tokens.sum())
        on_facts = float(on_tokens[:, self.fact_mask].sum())
        return on_facts / max(total, 1e-12), float(self.fact_mask.mean())


@dataclasses.dataclass
class AnswerAttention:
    """The answering segment's attention (head mean) over [read memory; context tail;
    question; answer] (no context tail in the 'separate' mode)."""

    tokens: np.ndarray     # [C + Q] ids: last context tokens (C), question, generated answer
    question_length: int   # question tokens
    read_tokens: int       # R: columns [0, R) are the read memory
    weights: np.ndarray    # [Q, R + C + Q] attention of each question and answer token
    context_tokens: int = 0  # C: last context tokens sharing the segment ('in_context')

    def memory_share(self) -> np.ndarray:
        """[Q] attention mass of each query token on the read memory."""
        return self.weights[:, : self.read_tokens].sum(-1)


@dataclasses.dataclass
class AttentionReport:
    record: dict
    prediction: str
    layer: int
    segments: list[SegmentAttention]
    answer: AnswerAttention

    def fact_segment(self, fact: int) -> int | None:
        """The first writing segment holding (part of) fact `fact`; None when the fact lies
        in the answering segment alone ('in_context': the last segment writes no memory)."""
        return next((s.index for s in self.segments
                     if any(i == fact for i, _, _ in s.fact_spans)), None)


def with_attention_maps(model: RMT, layers: tuple[int, ...] | None = None) -> RMT:
    """The same parameters in a model whose config returns attention maps of `layers`
    (default: the last layer)."""
    cfg = model.config
    layers = tuple(layers) if layers is not None else (cfg.layers - 1,)
    new_cfg = dataclasses.replace(cfg, attention_map_layers=layers)
    abstract = nnx.eval_shape(lambda: RMT(new_cfg, rngs=nnx.Rngs(0)))
    return nnx.merge(nnx.graphdef(abstract), nnx.state(model))


def load_model(workdir, *, step="best", layers: tuple[int, ...] | None = None):
    """A checkpoint restored for attention maps -> (model, config, step)."""
    from rmt_jax import checkpointing

    model, config, restored = checkpointing.restore_for_inference(workdir, step=step)
    return with_attention_maps(model, layers), config, restored


def sample_record(composer, task: str, length: str, *, index: int = 0, source: str = "files",
                  babi_root=None, seed: int = 0) -> dict:
    """Test record `index` of a task and length, with `input_ids` and `input` text."""
    data = BabilongSource(composer, [task], [length], seed=seed, split="test",
                          babi_source=source, babi_root=babi_root, with_text=True)
    return data[index]


def fact_positions(record: dict, tokenizer) -> list[tuple[int, int, int]]:
    """(fact index, start, stop) in context tokens: `fact_offsets` plus each fact's tokens
    (counted as the composer counts them, sentence by sentence)."""
    lengths = [len(ids) for ids in tokenizer.encode_sentences(list(record["facts"]))]
    return [(i, int(o), int(o) + n)
            for i, (o, n) in enumerate(zip(record["fact_offsets"], lengths, strict=True))]


def _layer_key(model: RMT, layer: int | None) -> tuple[int, str]:
    if model.config.memory not in ("rmt", "rmt_r"):
        raise ValueError(f"attention maps show how memory tokens are written and read, but "
                         f"memory={model.config.memory!r} has no read tokens (ARMT reads "
                         "through its associative matrices): use an RMT or RMT-R model")
    layers = model.config.attention_map_layers
    if not layers:
        raise ValueError("the model returns no attention maps: wrap it with "
                         "with_attention_maps(model, layers=(LAYER,)) first")
    layer = layers[-1] if layer is None else layer
    if layer not in layers:
        raise ValueError(f"layer {layer} is not in config.attention_map_layers={layers}")
    return layer, f"layer_{layer}"


def segment_attention(model: RMT, example: dict, facts: list[tuple[int, int, int]], *,
                      layer: int | None = None):
    """Write-memory attention of every non-empty segment -> (list of SegmentAttention,
    final MemoryState). `example` is one `encode_example` output (pads at the end). In the
    'in_context' mode these are the segments before the last of the example's layout with
    `config.data.max_answer_len` empty answer slots (pass `answer_slots` in the example,
    as `run_sample` does; facts are in context tokens either way)."""
    layer, key = _layer_key(model, layer)
    cfg = model.config
    context = np.asarray(example["context"])
    mask = np.asarray(example["context_mask"], bool)
    if cfg.answer_mode == "in_context":
        tokens, real = _layout(model, example, int(example["answer_slots"]))
        context, mask = tokens[0, :-cfg.segment_len], real[0, :-cfg.segment_len]
        shift = int(np.argmax(real[0]))  # the front padding
        facts = [(i, a + shift, b + shift) for i, a, b in facts]
        if context.size == 0:  # the whole sample fits the last segment
            return [], initial_state(model, 1, capacity=1)
    state, maps = scan_segments(model, context[None], mask[None], return_attention=True)
    weights = np.asarray(maps[key][:, 0].mean(axis=1))  # [S, h, t, t] -> [S, t, t]
    r, n, seg_len = cfg.read_tokens, cfg.mem_tokens, cfg.segment_len
    out = []
    for s in range(weights.shape[0]):
        length = int(mask[s * seg_len:(s + 1) * seg_len].sum())
        if length == 0:
            continue
        # real tokens are contiguous: the first segment of a front-padded row ends in them
        start = s * seg_len + int(np.argmax(mask[s * seg_len:(s + 1) * seg_len]))
        spans = [(i, max(a, start) - start, min(b, start + length) - start)
                 for i, a, b in facts if a < start + length and b > start]
        rows = weights[s, r + length:r + length + n, : r + length]  # [N, R + len]
        out.append(SegmentAttention(s, context[start:start + length], r, rows, spans))
    return out, state


def _layout(model: RMT, example: dict, slots: int):
    """One example in the 'in_context' layout with `slots` empty answer slots -> [1, S*L]
    tokens and mask (numpy)."""
    return in_context_layout(
        np.asarray(example["context"])[None], np.asarray(example["context_mask"], bool)[None],
        np.asarray(example["question"])[None], np.asarray(example["question_length"])[None],
        np.zeros((1, slots), np.int32), model.config.segment_len, xp=np)


def answer_attention(model: RMT, state, question: np.ndarray, answer: np.ndarray, *,
                     layer: int | None = None,
                     context_tail: np.ndarray | None = None) -> AnswerAttention:
    """Attention of the answering segment [read; context tail; question; answer] (as in
    `answer_hidden`); context_tail: the last context tokens sharing it ('in_context')."""
    layer, key = _layer_key(model, layer)
    tail = np.zeros(0, np.int32) if context_tail is None else np.asarray(context_tail)
    tokens = np.concatenate([tail, np.asarray(question), np.asarray(answer)]).astype(np.int32)
    read = model.read_memory(state.memory, state.buffer, state.buffer_valid)  # [1, R, d]
    x = jnp.concatenate([read, model.embed(jnp.asarray(tokens)[None])], axis=1)
    _, maps, _ = model.transformer(x, return_attention=True)
    weights = np.asarray(maps[key][0].mean(axis=0))  # [h, t, t] -> [t, t]
    r = read.shape[1]
    return AnswerAttention(tokens, len(question), r, weights[r + len(tail):, :], len(tail))


def run_sample(model: RMT, config, composer, tokenizer, *, task: str = "qa1",
               length: str = "1k", index: int = 0, source: str = "files", babi_root=None,
               layer: int | None = None) -> AttentionReport:
    """One sample through the model with attention maps: writing and reading."""
    layer, _ = _layer_key(model, layer)
    babi_root = babi_root if babi_root is not None else config.data.babi_dir
    record = sample_record(composer, task, length, index=index, source=source,
                           babi_root=babi_root)
    example = input_pipeline.encode_example(record, tokenizer, config)
    slots = config.data.max_answer_len
    example["answer_slots"] = slots
    segments, state = segment_attention(model, example, fact_positions(record, tokenizer),
                                        layer=layer)
    qlen = int(example["question_length"])
    question = np.asarray(example["question"][:qlen])
    tail = None
    if model.config.answer_mode == "in_context":
        tokens, real = _layout(model, example, slots)
        seg_len = model.config.segment_len
        last = tokens[:, -seg_len:][real[:, -seg_len:]][None]  # [1, real tokens]
        tail = last[0, : last.shape[1] - slots - qlen]
        padded = np.pad(last, ((0, 0), (0, seg_len - last.shape[1])))
        ids = np.asarray(generate_in_context(model, state, padded,
                                             np.array([last.shape[1]], np.int32),
                                             max_new_tokens=slots))[0]
    else:
        ids = np.asarray(generate_answer(model, state, question[None],
                                         max_new_tokens=slots))[0]
    prediction = input_pipeline.decode_answer(ids, tokenizer)
    stop = [i for i, t in enumerate(ids.tolist()) if t in (tokenizer.eos_id, tokenizer.pad_id)]
    answer_ids = ids[: stop[0] + 1] if stop else ids  # up to and with the end of answer
    answer = answer_attention(model, state, question, answer_ids, layer=layer,
                              context_tail=tail)
    return AttentionReport(record, prediction, layer, segments, answer)


# -- figures ------------------------------------------------------------------------------
def _pieces(tokenizer, ids) -> list[str]:
    piece = getattr(tokenizer, "id_to_piece", None)
    return [piece(i) if piece else tokenizer.decode([i]) for i in np.asarray(ids).tolist()]


def pick_segments(segments: list[SegmentAttention], max_segments: int = 6):
    """The segments holding facts (in order), then the first ones, up to `max_segments`."""
    chosen = [s for s in segments if s.fact_spans][:max_segments]
    for s in segments:
        if len(chosen) >= max_segments:
            break
        if s not in chosen:
            chosen.append(s)
    return sorted(chosen, key=lambda s: s.index)


def plot_write_attention(report: AttentionReport, *, max_segments: int = 6):
    """Per segment: the write-memory rows over [read memory | segment tokens], facts marked."""
    import matplotlib.pyplot as plt

    chosen = pick_segments(report.segments, max_segments)
    fig, axes = plt.subplots(len(chosen), 1, figsize=(12, 1.2 + 1.1 * len(chosen)),
                             squeeze=False, layout="constrained")
    for ax, seg in zip(axes[:, 0], chosen, strict=True):
        image = ax.imshow(seg.write, aspect="auto", cmap="viridis", interpolation="nearest")
        r = seg.read_tokens
        ax.axvline(r - 0.5, color="white", linewidth=1.5)
        for i, start, stop in seg.fact_spans:
            ax.axvspan(r + start - 0.5, r + stop - 0.5, color="red", alpha=0.25)
            ax.text(r + start - 0.4, -0.45, f"fact {i}", color="white", fontsize=7, va="top")
        on_facts, share = seg.fact_share()
        ax.set_ylabel(f"seg {seg.index}\nwrite", fontsize=8)
        ax.set_title(f"segment {seg.index}: {100 * on_facts:.0f}% of the write attention on "
                     f"fact tokens ({100 * share:.0f}% of the tokens)", fontsize=9, loc="left")
        fig.colorbar(image, ax=ax, pad=0.01)
    axes[-1, 0].set_xlabel("key position: read memory | segment tokens (red: bAbI facts)")
    fig.suptitle(f"writing memory, layer {report.layer} (mean over heads)", fontsize=10)
    return fig


def plot_read_attention(report: AttentionReport, tokenizer):
    """The answering segment: each question/answer token's attention over [read memory;
    context tail ('in_context'); question; answer], and its total attention on the memory."""
    import matplotlib.pyplot as plt

    ans = report.answer
    columns_text = _pieces(tokenizer, ans.tokens)
    labels = columns_text[ans.context_tokens:]
    fig, (ax_map, ax_bar) = plt.subplots(
        1, 2, figsize=(12, 1.5 + 0.28 * len(labels)), layout="constrained",
        gridspec_kw={"width_ratios": [3, 1]})
    image = ax_map.imshow(ans.weights, aspect="auto", cmap="viridis", interpolation="nearest")
    ax_map.axvline(ans.read_tokens - 0.5, color="white", linewidth=1.5)
    if ans.context_tokens:
        ax_map.axvline(ans.read_tokens + ans.context_tokens - 0.5, color="white", linewidth=1,
                       linestyle=":")
    ax_map.axhline(ans.question_length - 0.5, color="white", linewidth=1, linestyle="--")
    ax_map.set_yticks(range(len(labels)), labels, fontsize=7)
    columns = [f"m{i}" for i in range(ans.read_tokens)] + columns_text
    ax_map.set_xticks(range(len(columns)), columns, fontsize=6, rotation=90)
    ax_map.set_xlabel("key position: read memory | " + ("last context tokens | "
                      if ans.context_tokens else "") + "question | answer")
    ax_map.set_title(f"reading memory to answer, layer {report.layer}: "
                     f"target {report.record['target']!r}, output {report.prediction!r}",
                     fontsize=9, loc="left")
    fig.colorbar(image, ax=ax_map, pad=0.01)
    ax_bar.barh(range(len(labels)), ans.memory_share(), color="tab:blue")
    ax_bar.set_ylim(len(labels) - 0.5, -0.5)
    ax_bar.set_yticks(range(len(labels)), [""] * len(labels))
    ax_bar.set_xlim(0, 1)
    ax_bar.set_xlabel("attention on read memory")
    return fig
