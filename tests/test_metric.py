"""The label-set metric on the corners of the reference behaviour, and exact match."""

import pytest

from babilong_tfds import metric
from babilong_tfds.tasks import LABELS, TASKS


def test_plain_answer_is_correct_and_wrong_room_is_not():
    q = "Where is Mary?"
    assert metric.label_score("bathroom", "bathroom", q, "qa1")
    assert metric.label_score("bathroom", "Mary is in the bathroom.", q, "qa1")
    assert not metric.label_score("bathroom", "kitchen", q, "qa1")


def test_two_labels_in_output_is_wrong():
    assert not metric.label_score("garden", "the garden or the kitchen", "Where is John?", "qa1")


def test_case_of_output_and_target_is_ignored():
    assert metric.label_score("Mary", "MARY gave it.", "Who gave the apple to Fred?", "qa5")
    assert metric.label_score("kitchen", "KITCHEN", "Where is Daniel?", "qa1")


def test_labels_named_in_the_question_are_dropped():
    q = "What is the kitchen west of?"
    assert metric.found_labels("the kitchen is west of the garden", q, "qa4") == {"garden"}
    assert metric.label_score("garden", "the kitchen is west of the garden", q, "qa4")
    assert not metric.label_score("kitchen", "kitchen", q, "qa4")


def test_only_text_before_the_first_period_counts():
    q = "Where is Mary?"
    assert metric.label_score("office", "office. Earlier she was in the garden.", q, "qa1")
    assert not metric.label_score("garden", "office. Earlier she was in the garden.", q, "qa1")


@pytest.mark.parametrize("marker", ["<context>", "<example>", "<CONTEXT>"])
def test_generation_is_cut_at_context_and_example(marker):
    out = f"hallway {marker} Where is Bill? bedroom"
    assert metric.preprocess_output(out) == "hallway "
    assert metric.label_score("hallway", out, "Where is John?", "qa1")


def test_qa8_lists_any_order_but_complete_and_exact():
    q = "What is Mary carrying?"
    assert metric.label_score("apple,milk", "milk and apple", q, "qa8")
    assert metric.label_score("apple,milk", "apple, milk", q, "qa8")
    assert not metric.label_score("apple,milk", "apple", q, "qa8")
    assert not metric.label_score("apple,milk", "apple, milk, football", q, "qa8")


def test_qa8_nothing_is_a_single_label():
    q = "What is Sandra carrying?"
    assert metric.target_parts("nothing", "qa8") == ["nothing"]
    assert metric.label_score("nothing", "nothing", q, "qa8")
    assert not metric.label_score("nothing", "nothing but the milk", q, "qa8")
    assert not metric.label_score("apple", "nothing", q, "qa8")


def test_qa19_direction_is_one_label_not_a_list():
    q = "How do you go from the kitchen to the garden?"
    assert metric.target_parts("n,w", "qa19") == ["n,w"]
    assert metric.label_score("n,w", "n,w", q, "qa19")
    assert not metric.label_score("n,w", "w,n", q, "qa19")
    assert not metric.label_score("s,e", "s,e,n", q, "qa19")  # holds 's,e' and 'e,n'


def test_qa7_none_always_contains_one_as_the_reference_does():
    q = "How many objects is Mary carrying?"
    assert metric.found_labels("none", q, "qa7") == {"none", "one"}
    assert not metric.label_score("none", "none", q, "qa7")
    assert metric.label_score("one", "one", q, "qa7")
    assert metric.label_score("two", "two", q, "qa7")


def test_qa5_names_and_objects():
    q = "Who did Fred give the apple to?"
    assert metric.label_score("Bill", "Fred gave the apple to Bill", q, "qa5")
    assert not metric.label_score("Bill", "Jeff", q, "qa5")
    assert metric.label_score("football", "the football", "What did Bill give to Mary?", "qa5")


def test_qa6_no_is_found_inside_other_words():
    # Plain substring matching: 'not' holds 'no'.
    assert metric.found_labels("yes, not there", "Is John in the kitchen?", "qa6") == {
        "no",
        "yes",
    }


@pytest.mark.parametrize("task", TASKS)
def test_every_label_scores_itself(task):
    question = "Xyz?"
    for label in LABELS[task]:
        expected = not (task == "qa7" and label == "none")
        assert metric.label_score(label, label, question, task) is expected


def test_unknown_task_raises():
    with pytest.raises(ValueError, match="unknown task 'qa21'"):
        metric.label_score("x", "x", "q", "qa21")
    with pytest.raises(ValueError, match="unknown task"):
        metric.score_batch(["x"], ["x"], ["q"], "babi")


def test_exact_match_normalises():
    assert metric.exact_match("bathroom", "  Bathroom. ")
    assert metric.exact_match("apple,milk", "Milk, apple.")
    assert metric.exact_match("left of", "left   of")
    assert not metric.exact_match("bathroom", "the bathroom")
    assert not metric.exact_match("apple,milk", "apple")
    assert not metric.exact_match("apple,milk", "apple,milk,milk")


def test_exact_match_keeps_qa19_order_when_told_the_task():
    assert metric.exact_match("n,w", "N, W", "qa19")
    assert not metric.exact_match("n,w", "w,n", "qa19")
    assert metric.exact_match("n,w", "w,n")  # without the task it is taken as a list


def test_score_batch_means():
    scores = metric.score_batch(
        ["bathroom", "garden", "office", "kitchen"],
        ["bathroom", "the garden is nice", "hallway", "kitchen or office"],
        ["Where is Mary?"] * 4,
        "qa1",
    )
    assert scores == {"label_accuracy": 0.5, "exact_match": 0.25, "count": 4.0}


def test_score_batch_checks_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        metric.score_batch(["a", "b"], ["a"], ["q", "q"], "qa1")
    with pytest.raises(ValueError, match="no samples"):
        metric.score_batch([], [], [], "qa1")


def test_leaderboard_score_is_mean_of_qa1_to_qa5():
    scores = {"qa1": 1.0, "qa2": 0.5, "qa3": 0.0, "qa4": 0.5, "qa5": 1.0, "qa6": 0.0}
    assert metric.leaderboard_score(scores) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="qa5"):
        metric.leaderboard_score({"qa1": 1.0})
