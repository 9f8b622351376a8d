"""The curriculum: stages advance on steps or on the running accuracy, state is JSON-able."""

import json

import pytest

from rmt_jax.curriculum import Curriculum, CurriculumState, advance


def run(curriculum, accuracies):
    state, stages = CurriculumState(), []
    for step, acc in enumerate(accuracies, start=1):
        acc = acc if curriculum.needs_accuracy(state) else None
        state = advance(curriculum, state, step=step, accuracy=acc)
        stages.append(state.stage)
    return state, stages


def test_advances_every_stage_steps_and_stays_on_the_last():
    c = Curriculum(segments=(1, 2, 4), stage_steps=3)
    state, stages = run(c, [0.0] * 10)
    assert stages == [0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    assert state.stage_start == 6


def test_advances_early_when_running_accuracy_passes_threshold():
    c = Curriculum(segments=(1, 2), stage_steps=1000, advance_accuracy=0.9, accuracy_decay=0.5)
    state, stages = run(c, [1.0] * 6)
    # EMA from 0 with decay 0.5: 0.5, 0.75, 0.875, 0.9375 -> passes at step 4.
    assert stages == [0, 0, 0, 1, 1, 1]
    assert state == CurriculumState(stage=1, stage_start=4, accuracy=0.0)
    assert not c.needs_accuracy(state)


def test_low_accuracy_never_advances_without_steps():
    c = Curriculum(segments=(1, 2), stage_steps=0, advance_accuracy=0.9)
    _, stages = run(c, [0.5] * 50)
    assert set(stages) == {0}


def test_state_round_trips_through_json_exactly():
    c = Curriculum(segments=(1, 2), stage_steps=100, advance_accuracy=0.99, accuracy_decay=0.9)
    state, _ = run(c, [0.3, 0.7, 0.1])
    again = CurriculumState.from_json(json.loads(json.dumps(state.to_json())))
    assert again == state


def test_bad_settings_raise_with_the_field():
    with pytest.raises(ValueError, match="never leave stage 0"):
        Curriculum(segments=(1, 2), stage_steps=0)
    with pytest.raises(ValueError, match="segments"):
        Curriculum(segments=(), stage_steps=1)
    with pytest.raises(ValueError, match="train accuracy"):
        advance(Curriculum(segments=(1, 2), stage_steps=5, advance_accuracy=0.5),
                CurriculumState(), step=1)


def test_fractional_stages_are_one_short_segment():
    from rmt_jax.curriculum import stage_context

    c = Curriculum(segments=(0.25, 0.5, 1, 2), stage_steps=10)
    assert c.num_stages == 4
    assert stage_context(0.25, 128, True) == (1, [32])
    assert stage_context(0.5, 128, False) == (1, [64])
    assert stage_context(2, 128, True) == (2, [128, 256])
    assert stage_context(2, 128, False) == (2, [256])
    # 16 tokens of the last segment reserved for the question and answer slots
    assert stage_context(2, 128, True, 16) == (2, [112, 240])
    assert stage_context(0.5, 128, True, 16) == (1, [56])
    # 0: the bare story, padded to one segment
    assert stage_context(0, 128, True, 16) == (1, [0])
    bare = Curriculum(segments=(0, 1, 2), stage_steps=10, segment_len=128, reserved=16)
    assert bare.stage(0).segments == 1 and bare.stage(0).context_sizes == (0,)
    assert bare.stage(0).context_len == 112 and bare.stage(0).count == 0
    for bad in ((-1, 1), (-0.5, 1), (1.5, 2)):
        with pytest.raises(ValueError, match="fractions of one segment"):
            Curriculum(segments=bad, stage_steps=1)
    with pytest.raises(ValueError, match="no token"):
        stage_context(0.001, 128, True)


def test_the_curriculum_answers_the_shape_of_each_stage():
    from configs import rmt_babilong

    config = rmt_babilong.get_config("quick,qa1").unlock()
    config.curriculum.segments = (0.25, 1, 3)
    c = Curriculum.from_config(config)
    seg = config.model.segment_len
    # 'in_context' with whole_segments: k segments in all, the question and answer slots
    # taking `reserved` tokens of the last
    reserved = config.data.max_question_len + config.data.max_answer_len
    assert config.model.answer_mode == "in_context" and c.reserved == reserved
    assert c.num_stages == 3 and c.segment_len == seg
    assert [c.stage(i).segments for i in range(3)] == [1, 1, 3]
    assert c.stage(0).context_sizes == ((seg - reserved) // 4,) and c.stage(0).count == 0.25
    assert c.stage(2).context_sizes == tuple(k * seg - reserved for k in (1, 2, 3))
    assert c.stage(2).context_len == 3 * seg - reserved and c.stage(2).index == 2
    config.curriculum.whole_segments = False  # the context alone fills the k segments
    c = Curriculum.from_config(config)
    assert c.reserved == 0 and c.stage(0).context_sizes == (seg // 4,)
    assert c.stage(2).context_sizes == (seg, 2 * seg, 3 * seg)
    assert c.stage(2).context_len == 3 * seg
    config.curriculum.mix_shorter = False
    assert Curriculum.from_config(config).stage(2).context_sizes == (3 * seg,)
    config.curriculum.whole_segments = True
    config.model.answer_mode = "separate"  # the answer segment comes after the context anyway
    assert Curriculum.from_config(config).reserved == 0
    config.model.answer_mode = "in_context"
    config.data.max_question_len = seg  # no room left for context in the last segment
    with pytest.raises(ValueError, match="leave no context token in a segment of"):
        Curriculum.from_config(config)
    for bad in (-1, 3):
        with pytest.raises(ValueError, match=f"stage {bad} out of range: the config has 3"):
            c.stage(bad)


def heldout_curriculum(**overrides):
    settings = dict(segments=(1, 2), stage_steps=0, advance_on="heldout", eval_every=2,
                    patience=2, heldout_samples=4, max_stage_steps=100, segment_len=8)
    return Curriculum(**{**settings, **overrides})


def run_heldout(curriculum, scores, *, num_steps=100):
    """Feeds `scores` to the evaluations due; returns the final state and the decisions."""
    from rmt_jax.curriculum import heldout_due, record_heldout

    state, decisions, scores = CurriculumState(), [], iter(scores)
    for step in range(1, num_steps + 1):
        last = step == num_steps
        if heldout_due(curriculum, state, step, last=last):
            score = next(scores, None)
            if score is None:
                break
            state, decision = record_heldout(curriculum, state, step=step, score=score,
                                             last=last)
            decisions.append((step, decision))
            assert not heldout_due(curriculum, state, step, last=last)  # once per step
        if state.finished:
            break
    return state, decisions


def test_heldout_stage_ends_when_exact_match_stops_improving_by_min_delta():
    c = heldout_curriculum(min_delta=0.05)
    state, decisions = run_heldout(c, [0.2, 0.5, 0.54, 0.5, 0.1, 0.3, 0.3])
    assert [s for s, _ in decisions] == [2, 4, 6, 8, 10, 12, 14]
    assert [d.improved for _, d in decisions] == [True, True, False, False, True, True, False]
    ended = decisions[3][1]  # 0.54 is not 0.05 better than 0.5: two without improvement
    assert ended.stage_ended and ended.restore_step == 4 and ended.best_score == 0.5
    assert not any(d.stage_ended for _, d in decisions[:3])
    # the next stage begins at step 8 with a fresh best; its evaluations count from there
    assert decisions[4][1].best_step == 10 and decisions[5][1].best_step == 12
    assert state == CurriculumState(stage=1, stage_start=8, best_score=0.3, best_step=12,
                                    stale=1, evaluated=14)


def test_heldout_last_stage_ending_finishes_and_max_stage_steps_caps_a_stage():
    c = heldout_curriculum(eval_every=3, max_stage_steps=5)
    state, decisions = run_heldout(c, [0.1, 0.2, 0.3, 0.4])
    # due at 3 steps into a stage and at the cap (5): always improving, still ended
    assert [s for s, _ in decisions] == [3, 5, 8, 10]
    assert [d.stage_ended for _, d in decisions] == [False, True, False, True]
    assert all(d.restore_step == -1 for _, d in decisions)  # the best is the current state
    assert state.finished and state.stage == 1 and state.best_step == 10


def test_heldout_end_of_training_restores_the_best_without_changing_stage():
    c = heldout_curriculum(patience=5)
    state, decisions = run_heldout(c, [0.5, 0.1, 0.2], num_steps=6)
    step, last = decisions[-1]
    assert step == 6 and last.restore_step == 2 and not last.stage_ended
    assert state.stage == 0 and not state.finished and state.stale == 2


def test_heldout_state_round_trips_and_old_checkpoints_read():
    c = heldout_curriculum()
    state, _ = run_heldout(c, [0.25, 0.125])
    assert CurriculumState.from_json(json.loads(json.dumps(state.to_json()))) == state
    old = {"stage": 1, "stage_start": 8, "accuracy": 0.5}  # saved before advance_on
    assert CurriculumState.from_json(old) == CurriculumState(stage=1, stage_start=8,
                                                             accuracy=0.5)
    # the step-based decisions are not taken in heldout mode
    assert advance(c, CurriculumState(), step=10**6) == CurriculumState()


def test_heldout_and_mixing_settings_are_checked():
    with pytest.raises(ValueError, match="advance_on='heldiut'"):
        heldout_curriculum(advance_on="heldiut")
    with pytest.raises(ValueError, match="curriculum.patience=0 must be >= 1"):
        heldout_curriculum(patience=0)
    with pytest.raises(ValueError, match="min_delta"):
        heldout_curriculum(min_delta=-0.1)
    with pytest.raises(ValueError, match="mix_shorter=False"):
        Curriculum(segments=(1, 2), stage_steps=5, mixed_length_ratio=0.5)
    with pytest.raises(ValueError, match=r"mixed_length_ratio=1.0 must lie in \[0, 1\)"):
        Curriculum(segments=(1, 2), stage_steps=5, mixed_length_ratio=1.0, mix_shorter=False)
    with pytest.raises(ValueError, match="same_length_batches=True .* needs "
                                         "curriculum.mix_shorter=True"):
        Curriculum(segments=(1, 2), stage_steps=5, same_length_batches=True, mix_shorter=False)


def test_same_length_batches_mark_the_stages_with_more_than_one_size():
    c = Curriculum(segments=(0, 0.5, 1, 4), stage_steps=5, segment_len=8,
                   same_length_batches=True)
    assert [c.stage(i).size_per_batch for i in range(4)] == [False, False, False, True]
    assert c.stage(3).context_sizes == (8, 16, 24, 32) and c.stage(3).context_len == 32
    plain = Curriculum(segments=(0, 0.5, 1, 4), stage_steps=5, segment_len=8)
    assert not any(plain.stage(i).size_per_batch for i in range(4))


def test_mixed_length_ratio_takes_rows_at_the_earlier_stages_lengths():
    c = Curriculum(segments=(0.5, 1, 2, 4), stage_steps=5, segment_len=8, mix_shorter=False,
                   batch_size=8, mixed_length_ratio=0.3)
    assert c.stage(0).shorter_rows == 0 and c.stage(0).shorter_sizes == ()
    assert c.stage(1).shorter_sizes == (4,) and c.stage(1).shorter_rows == 2  # round(2.4)
    assert c.stage(3).shorter_sizes == (4, 8, 16) and c.stage(3).context_sizes == (32,)
    off = Curriculum(segments=(1, 2), stage_steps=5, segment_len=8, batch_size=8)
    assert off.stage(1).shorter_rows == 0


def test_story_questions_are_one_per_stage_and_checked():
    c = Curriculum(segments=(0, 0, 1), stage_steps=5, segment_len=64, story_questions=(1, 0, 0))
    assert [c.stage(i).story_questions for i in range(3)] == [1, 0, 0]
    assert [c.stage(i).context_sizes for i in range(2)] == [(0,), (0,)]  # both bare stories
    none = Curriculum(segments=(0, 1), stage_steps=5, segment_len=64)
    assert [none.stage(i).story_questions for i in range(2)] == [0, 0]
    for bad in ((1,), (1, -1), (1, True), (1, 0.5)):
        with pytest.raises(ValueError, match=r"story_questions=.*one integer >= 0 per stage"):
            Curriculum(segments=(0, 1), stage_steps=5, story_questions=bad)


def test_bare_share_adds_bare_stories_to_the_stages_of_whole_segments():
    c = Curriculum(segments=(0, 0.5, 1, 4), stage_steps=5, segment_len=8, reserved=2,
                   same_length_batches=True, bare_share=0.25)
    bare, half, one, four = (c.stage(i) for i in range(4))
    # the bare and fractional stages are as without it
    assert bare.context_sizes == (0,) and bare.size_weights == ()
    assert half.context_sizes == (3,) and half.size_weights == ()
    # stages of whole segments: the bare story at its share, the stage's own sizes equal
    assert one.context_sizes == (0, 6) and one.size_weights == (0.25, 0.75)
    assert four.context_sizes == (0, 6, 14, 22, 30)
    assert four.size_weights == pytest.approx((0.25, 0.1875, 0.1875, 0.1875, 0.1875))
    # every story of such a stage has facts that fit one segment; a bare one is padded to it
    assert [s.story_tokens for s in (bare, one, four)] == [6, 6, 6]
    assert [four.padded_len(s) for s in four.context_sizes] == [6, 6, 14, 22, 30]
    assert four.size_per_batch and one.size_per_batch  # two sizes: one width per batch
    # per-sample lengths: every sample padded to the stage's longest
    plain = Curriculum(segments=(1, 4), stage_steps=5, segment_len=8, reserved=2,
                       bare_share=0.25)
    assert [plain.stage(1).padded_len(s) for s in (0, 14)] == [30, 30]
    off = Curriculum(segments=(0, 4), stage_steps=5, segment_len=8, reserved=2)
    assert off.stage(1).context_sizes == (6, 14, 22, 30) and off.stage(1).story_tokens == 30
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"curriculum.bare_share=.* must lie in \[0, 1\)"):
            Curriculum(segments=(0, 1), stage_steps=5, bare_share=bad)
