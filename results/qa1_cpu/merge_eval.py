"""Merges two evaluations of one model (results/qa1_cpu/eval and eval_1m) into eval_all.

    python results/qa1_cpu/merge_eval.py EVAL_DIR EVAL_1M_DIR OUT_DIR
"""
import json
import sys

from rmt_jax import evaluate_lib

a, b = (json.load(open(f"{d}/results.json")) for d in sys.argv[1:3])
assert a["meta"]["step"] == b["meta"]["step"] and a["meta"]["recipe"] == b["meta"]["recipe"]
merged = {"results": {}, "examples": {}, "meta": dict(a["meta"])}
for r in (a, b):
    for key in ("results", "examples"):
        for task, cells in r[key].items():
            merged[key].setdefault(task, {}).update(cells)
    for task, secs in r["meta"]["seconds"].items():
        merged["meta"]["seconds"].setdefault(task, {}).update(secs)
merged["meta"]["lengths"] = a["meta"]["lengths"] + b["meta"]["lengths"]
merged["meta"]["num_samples_by_length"] = {
    **{k: a["meta"]["num_samples"] for k in a["meta"]["lengths"]},
    **{k: b["meta"]["num_samples"] for k in b["meta"]["lengths"]}}
evaluate_lib.write_results(merged, sys.argv[3])
print(json.dumps({t: {k: v["accuracy"] for k, v in cells.items()}
                  for t, cells in merged["results"].items()}))
