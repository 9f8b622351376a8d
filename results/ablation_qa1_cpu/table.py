"""Prints the ablation table (markdown) from each arm's results.json, timing.json and
metrics.jsonl:  python results/ablation_qa1_cpu/table.py"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
LENGTHS = ("0k", "1k", "4k")
CHANGES = {  # arm -> what it changes, against the arm named first
    "a_separate": "as landed: separate answer segment, simulator synonyms",
    "b_in_context": "a + question and answer in the last segment (`answer_mode=in_context`)",
    "c_in_context_babi_words": "b + bAbI's own wording (`babi_synonyms=False`): the new default",
    "d_lr_1.2e-3": "c + peak lr 1.2e-3 (from 6e-4)",
    "e_d_model_128": "c + d_model 128 (from 64)",
    "f_segment_len_64": "c + segments of 64 tokens (from 32)",
    "g_in_context_babi_words_seed1": "c with train.seed=1, data.seed=1 (a second run of c)",
    "h_alibi": "c + ALiBi recency bias instead of learned positions (`model.positions=alibi`)",
    "i_rope": "c + rotary positions instead of learned ones (`model.positions=rope`)",
    "j_heldout_curriculum": "c + stages end on held-out exact match (`curriculum.advance_on="
                            "heldout`, patience 5 x 200 steps, at most 1,800 steps a stage)",
    "k_init_std": "c + fresh weights of std 1/sqrt(64) (`model.init_std=0.125`, from 0.02)",
    "l_init_rope_h4": "k + RoPE + 4 heads (the probe's winning backbone)",
    "m_init_rope_h4_lr1e-3": "l + peak lr 1e-3",
    "n_probe_recipe": "l + the probe's optimiser: lr 1e-3 constant after warm-up, batch 32",
    "o_one_window_seg128": "n + segments of 128 tokens (a 0k story fits one), curriculum 1 "
                           "(2,000 steps) -> 2 segments, 3,000 steps",
    "p_qa1_cpu_recipe": "`configs/qa1_cpu.py`'s recipe in the quickstart's 10 minutes: d 128, "
                        "4 heads, RoPE, init 0.088 unscaled, 1 memory token, segments of 128, "
                        "batch 32, lr 1e-3 constant; bare stories (1,500 steps) -> 1 segment",
    "p_qa1_cpu_recipe_seed1": "p with train.seed=1, data.seed=1 (a second run of p)",
    "q_recency0": "p + training questions about any person alike (`data.question_recency=0`; "
                  "bAbI asks about one of the last two facts 60% of the time)",
    "r_batch16": "p with batch 16 (from 32) and 5,000 steps (2,500 a stage): about the same "
                 "minutes, more updates",
    "s_two_fact_stage": "p + a first stage of two-fact bare stories (`curriculum.story_questions"
                        "=(1,0,0,0)`: each story ends at its first question) before the bare "
                        "stories",
    "s_two_fact_stage_seed1": "s with train.seed=1, data.seed=1 (a second run of s)",
}


def row(arm: Path) -> str:
    results = json.loads((arm / "results.json").read_text())["results"]["qa1"]
    timing = json.loads((arm / "timing.json").read_text())
    logs = [json.loads(line) for line in (arm / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in logs if "train/loss" in m]
    loss = sum(m["train/loss"] for m in train[-5:]) / len(train[-5:])
    steps = train[-1]["step"]
    acc = " | ".join(f"{100 * results[k]['accuracy']:.0f}" for k in LENGTHS)
    return (f"| {arm.name} | {CHANGES.get(arm.name, timing['overrides'])} | {steps} | "
            f"{timing['train_s']} s + "
            f"{timing['evaluate_s']} s | {loss:.3f} | {acc} |")


def main() -> None:
    print("| arm | change | steps | wall time train + evaluate | train loss (last 500 steps) "
          "| 0k | 1k | 4k |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for arm in sorted(p for p in HERE.iterdir() if (p / "timing.json").exists()):
        print(row(arm))


if __name__ == "__main__":
    main()
