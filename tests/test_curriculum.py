"""The curriculum: stages advance on steps or on the running accuracy, state is JSON-able."""

import json

import pytest

from rmt_jax.curriculum import Curriculum, CurriculumState, advance, stage_at_step


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
    assert [stage_at_step(c, s) for s in (0, 2, 3, 6, 100)] == [0, 0, 1, 2, 2]


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
    for bad in ((0, 1), (-0.5, 1), (1.5, 2)):
        with pytest.raises(ValueError, match="fractions of one segment"):
            Curriculum(segments=bad, stage_steps=1)
    with pytest.raises(ValueError, match="no token"):
        stage_context(0.001, 128, True)


def test_the_curriculum_answers_the_shape_of_each_stage():
    from configs import rmt_babilong

    config = rmt_babilong.get_config("tiny,qa1").unlock()
    config.curriculum.segments = (0.25, 1, 3)
    c = Curriculum.from_config(config)
    seg = config.model.segment_len
    assert c.num_stages == 3 and c.segment_len == seg
    assert [c.stage(i).segments for i in range(3)] == [1, 1, 3]
    assert c.stage(0).context_sizes == (seg // 4,) and c.stage(0).count == 0.25
    assert c.stage(2).context_sizes == (seg, 2 * seg, 3 * seg) and c.stage(2).index == 2
    config.curriculum.mix_shorter = False
    assert Curriculum.from_config(config).stage(2).context_sizes == (3 * seg,)
    for bad in (-1, 3):
        with pytest.raises(ValueError, match=f"stage {bad} out of range: the config has 3"):
            c.stage(bad)
