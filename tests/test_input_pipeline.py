"""RMT batches from BABILong: shapes, answer masks, resumable deterministic iterators."""

import itertools

import numpy as np
import pytest

from babilong_tfds.compose import Composer
from configs.rmt_babilong import get_config
from rmt_jax import curriculum
from rmt_jax import input_pipeline as ip
from rmt_jax.core.answer import in_context_layout


@pytest.fixture(scope="module")
def config(babi_root, small_haystack_dir):
    config = get_config("quick,qa1,qa2").unlock()
    config.train.batch_size = 4
    config.data.babi_dir = str(babi_root)
    config.data.haystack_dir = str(small_haystack_dir)
    return config.lock()


@pytest.fixture(scope="module")
def composer(small_haystack, sp_tokenizer):
    return Composer(small_haystack, sp_tokenizer)


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_batches_follow_the_contract(config, composer, sp_tokenizer):
    data = ip.TrainData(config, composer)
    batch = next(data.iterator(stage=2))  # 4 segments of 32 tokens
    seg = config.model.segment_len
    q, a = config.data.max_question_len, config.data.max_answer_len
    # the question and answer slots end the 4th segment: the context takes the rest
    assert batch["context"].shape == (4, 4 * seg - q - a) and batch["context"].dtype == np.int32
    tokens, _ = in_context_layout(batch["context"], batch["context_mask"], batch["question"],
                                  batch["question_length"], batch["answer"], seg, xp=np)
    assert tokens.shape == (4, 4 * seg)  # 4 segments in all, none added for the question
    assert batch["query"].shape == batch["loss_mask"].shape == (4, q + a)
    for i in range(4):
        n = batch["context_mask"][i].sum()
        assert batch["context_mask"][i, :n].all() and not batch["context"][i, n:].any()
        answer = batch["query"][i][batch["loss_mask"][i] > 0]
        assert answer[-1] == sp_tokenizer.eos_id
        assert np.array_equal(answer, batch["answer"][i][: len(answer)])
        ql = batch["question_length"][i]
        assert np.array_equal(batch["query"][i][:ql], batch["question"][i][:ql])
        assert ip.decode_answer(batch["answer"][i], sp_tokenizer) in {
            "bathroom",
            "bedroom",
            "garden",
            "hallway",
            "kitchen",
            "office",
        }
    assert set(batch["task_id"].tolist()) <= {0, 1}


def test_iterator_state_resumes_exactly(config, composer):
    data = ip.TrainData(config, composer)
    it = data.iterator(1)
    next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    resumed = data.iterator(1, state)
    assert all(same(e, next(resumed)) for e in expected)
    other_stage = next(data.iterator(2))
    assert not same(expected[0], other_stage)


def test_processes_get_disjoint_shards(config, composer):
    config = config.copy_and_resolve_references()
    config.train.batch_size = 8
    a = next(ip.TrainData(config, composer, process_index=0, process_count=2).iterator(0))
    b = next(ip.TrainData(config, composer, process_index=1, process_count=2).iterator(0))
    assert a["context"].shape[0] == b["context"].shape[0] == 4
    assert not any(np.array_equal(x, y) for x in a["context"] for y in b["context"])
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        ip.TrainData(config, composer, process_count=3)


def test_encode_text_record_and_errors(config, sp_tokenizer):
    record = {
        "input": "Mary went to the garden. " * 10,
        "question": "Where is Mary?",
        "target": "garden",
        "task": b"qa1",
    }
    ex = ip.encode_example(record, sp_tokenizer, config)
    n = len(sp_tokenizer.encode(record["input"]))
    assert ex["context_mask"].sum() == n and len(ex["context"]) % config.model.segment_len == 0
    with pytest.raises(ValueError, match="does not fit the 32 tokens of 1 segments of 32"):
        ip.encode_example(record, sp_tokenizer, config, segments=1)
    padded = ip.encode_example(record, sp_tokenizer, config, context_len=n + 5)
    assert padded["context"].shape == (n + 5,) and padded["context_mask"].sum() == n
    with pytest.raises(ValueError, match=f"does not fit the {n - 1} tokens"):
        ip.encode_example(record, sp_tokenizer, config, context_len=n - 1)
    with pytest.raises(ValueError, match="stage 9 out of range"):
        ip.TrainData(config, None).iterator(9)


def test_model_config_from_config(config):
    mc = ip.model_config(config, vocab_size=8192)
    assert mc.vocab_size == 8192 and mc.bptt_segments is None and mc.attention_impl is None
    assert mc.scan_unroll == 1
    unrolled = config.copy_and_resolve_references()
    unrolled.model.scan_unroll = 4
    assert ip.model_config(unrolled, vocab_size=8192).scan_unroll == 4
    old = config.copy_and_resolve_references()  # saved before the field existed
    with old.unlocked():
        del old.model["scan_unroll"]
    assert ip.model_config(old, vocab_size=8192).scan_unroll == 1
    assert mc.init_std == 0.02
    scaled = config.copy_and_resolve_references()
    scaled.model.init_std = 0.125
    assert ip.model_config(scaled, vocab_size=8192).init_std == 0.125
    assert mc.scaled_residual_init
    scaled.model.scaled_residual_init = False
    assert not ip.model_config(scaled, vocab_size=8192).scaled_residual_init
    with old.unlocked():
        del old.model["init_std"]
        del old.model["scaled_residual_init"]
    assert ip.model_config(old, vocab_size=8192).init_std == 0.02
    assert ip.model_config(old, vocab_size=8192).scaled_residual_init


def test_grain_workers_give_the_same_batches_and_resume(config, composer):
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    reference = ip.TrainData(config, composer).iterator(1)
    expected = [next(reference) for _ in range(3)]
    workers = config.copy_and_resolve_references()
    workers.data.worker_count = 2
    it = ip.TrainData(workers, composer).iterator(1)
    assert all(same(e, next(it)) for e in expected[:2])
    resumed = ip.TrainData(workers, composer).iterator(1, it.get_state())
    assert same(next(resumed), expected[2])


def test_fractional_first_stage_is_a_short_context_in_one_segment(config, composer):
    short = get_config("quick,qa1").unlock()
    short.train.batch_size = 8
    short.data.babi_dir, short.data.haystack_dir = config.data.babi_dir, config.data.haystack_dir
    short.curriculum.segments = (0.5, 1, 2)
    short.model.segment_len = 64  # half of the 48 context tokens holds a qa1 story
    data = ip.TrainData(short.lock(), composer)
    seg = short.model.segment_len
    room = seg - short.data.max_question_len - short.data.max_answer_len  # context per segment
    assert data.stage_lengths(0) == [room // 2]
    assert data.stage_lengths(2) == [room, seg + room]
    batch = next(data.iterator(0))
    assert batch["context"].shape == (8, room)  # padded to one segment with the question
    real = batch["context_mask"].sum(axis=1)
    assert real.max() <= room // 2 and real.min() > 0
    assert next(data.iterator(2))["context"].shape == (8, seg + room)


def test_bare_story_stage_draws_only_stories_that_fit_one_segment(config, composer,
                                                                  sp_tokenizer):
    bare = get_config("quick,qa1").unlock()
    bare.train.batch_size = 8
    bare.data.babi_dir, bare.data.haystack_dir = config.data.babi_dir, config.data.haystack_dir
    bare.curriculum.segments = (0, 1)
    bare.model.segment_len = 64
    data = ip.TrainData(bare.lock(), composer)
    room = 64 - bare.data.max_question_len - bare.data.max_answer_len
    assert data.stage_lengths(0) == [0]
    rooms = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
    it = data.iterator(0)
    for batch in (next(it), next(it)):
        assert batch["context"].shape == (8, room)  # one segment with the question
        for row, mask in zip(batch["context"], batch["context_mask"], strict=True):
            assert 0 < mask.sum() <= room
            # the facts alone, no book text: every sentence of a qa1 story ends in a room
            text = sp_tokenizer.decode(row[mask].tolist())
            assert all(s.split()[-1] in rooms for s in text.split(".") if s.strip()), text
    # a segment too small for any story: a clear error, not a silently cut context
    tiny = bare.copy_and_resolve_references()
    tiny.model.segment_len = 24  # 8 context tokens: no qa1 story fits
    with pytest.raises(ValueError, match="at most 8 tokens"):
        next(ip.TrainData(tiny, composer).iterator(0))


def test_next_stage_iterator_starts_early_and_gives_the_same_batches(config, composer,
                                                                     monkeypatch):
    data = ip.TrainData(config, composer)
    closed = []
    make = data.iterator

    def tracked(stage, state=None):
        it = make(stage, state)
        close = it.close
        monkeypatch.setattr(it, "close", lambda: (closed.append(stage), close()))
        return it

    monkeypatch.setattr(data, "iterator", tracked)
    fresh = {stage: make(stage) for stage in (2, 3)}
    expected = {stage: [next(it), next(it)] for stage, it in fresh.items()}
    stages = curriculum.StageIterators(data, 1)
    stage, started = stages.upcoming
    assert stage == 2 and isinstance(started, curriculum.StartedIterator)
    started._thread.join()  # its first batch is made while stage 1 trains
    assert same(started._first, expected[2][0])
    # until that batch is taken, the state is the one before it: a checkpoint taken then
    # resumes with the same batches
    assert same(next(make(2, started.get_state())), expected[2][0])
    next(stages.current)
    it = stages.advance(2)
    assert it is started and same(next(it), expected[2][0]) and same(next(it), expected[2][1])
    assert same(next(make(2, it.get_state())), next(make(2, fresh[2].get_state())))
    assert stages.upcoming[0] == 3
    assert same(next(stages.advance(3)), expected[3][0])
    stages.closing.join()
    assert closed == [1, 2]  # the stages left behind (2: the iterator under the started one)
    # a jump past the prepared stage drops it and makes a fresh iterator
    last = data.curriculum.num_stages - 1
    stages.advance(last)
    assert stages.upcoming is None  # nothing after the last stage
    stages.close()
    assert sorted(closed) == [1, 2, 3, 4, last]


def test_a_started_iterator_raises_its_errors_in_the_caller():
    def broken():
        raise RuntimeError("no data")
        yield

    class Source:
        def __init__(self):
            self.it = broken()

        def get_state(self):
            return {}

        def __next__(self):
            return next(self.it)

    with pytest.raises(RuntimeError, match="no data"):
        next(curriculum.StartedIterator(Source()))


def test_question_recency_reaches_the_training_stories(config, composer):
    from rmt_jax.train_lib import check_run_config

    assert config.data.question_recency is None  # bAbI's own chance by default
    assert ip.TrainData(config, composer)._source(1, [0]).question_recency is None
    uniform = config.copy_and_resolve_references()
    uniform.data.question_recency = 0.0
    source = ip.TrainData(uniform, composer)._source(1, [0])
    assert source.question_recency == 0.0
    assert all(p.question_recency == 0.0 for p in source._pools.values())
    # the records drawn are the simulator's stories under that recency
    assert all(source[i]["origin"].startswith("generated@0:") for i in range(4))
    check_run_config(uniform)
    uniform.data.question_recency = 1.5
    with pytest.raises(ValueError, match="data.question_recency: question recency must be a "
                                         "number from 0 to 1"):
        check_run_config(uniform)


def test_story_questions_reach_a_stages_training_and_heldout_stories(config, composer):
    from rmt_jax.early_stopping import Heldout
    from rmt_jax.train_lib import check_run_config

    assert tuple(config.curriculum.story_questions) == ()  # the tasks' own lengths by default
    short = config.copy_and_resolve_references()
    short.curriculum.segments = (0, 0, 1)
    short.curriculum.story_questions = (1, 0, 0)
    data = ip.TrainData(short, composer)
    first, second = data._source(0, [0]), data._source(1, [0])
    assert (first.story_questions, second.story_questions) == (1, 0)
    qa1 = [r for r in (first[i] for i in range(16)) if r["task"] == "qa1"]
    assert qa1 and {len(r["facts"]) for r in qa1} == {2}
    heldout = Heldout(short, data.curriculum, composer=composer)
    assert heldout._source(0).story_questions == 1 and heldout._source(2).story_questions == 0
    check_run_config(short)
    short.data.babi_source = "files"
    with pytest.raises(ValueError, match=r"curriculum.story_questions=\(1, 0, 0\) shortens "
                                         "simulated stories, but data.babi_source='files'"):
        check_run_config(short)


def test_same_length_batches_draw_one_width_per_global_batch(config, composer):
    config = config.copy_and_resolve_references()
    config.train.batch_size = 4
    config.curriculum.same_length_batches = True
    seg = config.model.segment_len
    reserved = config.data.max_question_len + config.data.max_answer_len
    data = ip.TrainData(config, composer)
    stage = data.curriculum.stage(2)  # 1..4 segments
    assert stage.size_per_batch and not data.curriculum.stage(0).size_per_batch
    batches = list(itertools.islice(data.iterator(2), 8))
    widths = [b["context"].shape[1] for b in batches]
    assert set(widths) <= {k * seg - reserved for k in (1, 2, 3, 4)} and len(set(widths)) > 1
    for b in batches:  # each row within its batch's width, a real context
        assert (b["context_mask"].sum(1) > 0).all()
    # two processes read halves of the same global batches: the same widths
    halves = [list(itertools.islice(ip.TrainData(config, composer, process_index=p,
                                                 process_count=2).iterator(2), 8))
              for p in (0, 1)]
    assert [b["context"].shape for b in halves[0]] == [b["context"].shape for b in halves[1]]
    assert [b["context"].shape[1] for b in halves[0]] == widths
    it = data.iterator(2)  # resumable like any other stream
    next(it)
    state = it.get_state()
    assert same(next(it), next(data.iterator(2, state)))


def test_bare_share_mixes_bare_story_batches_into_a_memory_stage(config, composer,
                                                                sp_tokenizer):
    from rmt_jax.train_lib import check_run_config

    mixed = get_config("quick,qa1").unlock()
    mixed.train.batch_size = 4
    mixed.data.babi_dir, mixed.data.haystack_dir = config.data.babi_dir, config.data.haystack_dir
    mixed.model.segment_len = 64
    mixed.curriculum.segments = (0, 2)
    mixed.curriculum.same_length_batches = True
    mixed.curriculum.bare_share = 0.5
    room = 64 - curriculum.reserved_tokens(mixed)
    data = ip.TrainData(mixed.lock(), composer)
    assert data.stage_lengths(1) == [0, room, 64 + room]
    rooms = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
    bare = 0
    for batch in itertools.islice(data.iterator(1), 12):
        texts = [sp_tokenizer.decode(row[mask].tolist())
                 for row, mask in zip(batch["context"], batch["context_mask"], strict=True)]
        facts_only = [all(s.split()[-1] in rooms for s in t.split(".") if s.strip())
                      for t in texts]
        if all(facts_only):  # a bare batch: the facts alone, padded to one segment
            bare += 1
            assert batch["context"].shape == (4, room)
        else:  # book text too, in one or two segments
            assert not any(facts_only) and batch["context"].shape[1] in (room, 64 + room)
    assert 2 <= bare <= 10  # about half of 12 batches (binomial sd 1.7)
    # synthetic batches have no bare stories: a clear error, not a silent no-op
    synthetic = mixed.copy_and_resolve_references()
    synthetic.data.synthetic = True
    with pytest.raises(ValueError, match=r"curriculum.bare_share=0.5 mixes bare BABILong "
                                         "stories .* data.synthetic=True"):
        check_run_config(synthetic)
