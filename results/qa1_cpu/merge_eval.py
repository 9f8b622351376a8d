"""Merges two evaluations of one model (results/qa1_cpu/eval and eval_1m) into eval_all.

    python results/qa1_cpu/merge_eval.py EVAL_DIR EVAL_1M_DIR OUT_DIR
"""
import json
import sys

from rmt_jax import evaluate_lib

parts = [json.load(open(f"{d}/results.json")) for d in sys.argv[1:3]]
assert len({p["meta"]["step"] for p in parts}) == 1, "evaluations of different steps"
merged = evaluate_lib.merge_results(parts)
evaluate_lib.write_results(merged, sys.argv[3])
print(json.dumps({t: {k: v["accuracy"] for k, v in cells.items()}
                  for t, cells in merged["results"].items()}))
