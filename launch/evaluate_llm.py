r"""Evaluates an LLM served behind an OpenAI-compatible API on BABILong, as the official runner.

    python -m launch.evaluate_llm --api_url=http://127.0.0.1:8000/v1 \
        --model=meta-llama/Llama-3.1-8B-Instruct --data=hf:RMT-team/babilong \
        --tasks=qa1,qa2,qa3,qa4,qa5 --lengths=0k,1k,4k --results_dir=babilong_evals \
        --manual_dir=../shared/data --chat
    python -m launch.evaluate_llm ... --retrieve=bm25 --top_k=5

Writes the official predictions (`{results_dir}/{model}/{task}_{length}_{run}.csv` and
`.json`, read by the official `collect_results`) and `{results_dir}/{model}/{run}/results.json`
and `heatmap.png`; prints accuracy by task and length. A rerun skips what is answered.
Prompts: --prompts=FILE, else --manual_dir/babilong_official/prompts.py, else the pinned
official file is downloaded (sha256 checked). The API key is read from $OPENAI_API_KEY (or
the variable --api_key_env names); without it no key is sent.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags

from babilong_tfds import llm_eval, prompts, retrieval
from rmt_jax import evaluate_lib  # the results.json and heatmap writer of launch.evaluate

_API_URL = flags.DEFINE_string("api_url", None, "Base URL, e.g. http://HOST:PORT/v1.",
                               required=True)
_MODEL = flags.DEFINE_string("model", None, "Served model name (also the results folder).",
                             required=True)
_DATA = flags.DEFINE_string("data", None, "JSONL export folder, HF-layout folder, or hf:NAME.",
                            required=True)
_TASKS = flags.DEFINE_string("tasks", "qa1,qa2,qa3,qa4,qa5", "Comma-separated qa1..qa20.")
_LENGTHS = flags.DEFINE_string("lengths", "0k", "Comma-separated 0k..10M.")
_RESULTS_DIR = flags.DEFINE_string("results_dir", "babilong_evals", "Where results go.")
_CHAT = flags.DEFINE_bool("chat", False, "Use /chat/completions (else /completions).")
_SYSTEM_PROMPT = flags.DEFINE_string("system_prompt", "", "System message (with --chat).")
_API_KEY_ENV = flags.DEFINE_string("api_key_env", "OPENAI_API_KEY",
                                   "Environment variable holding the API key.")
_CONCURRENCY = flags.DEFINE_integer("concurrency", 8, "Requests in flight at once.")
_MAX_RETRIES = flags.DEFINE_integer("max_retries", 6, "Retries on 429, 5xx, connection errors.")
_TIMEOUT_S = flags.DEFINE_float("timeout_s", 600.0, "Seconds per request.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "First N samples per cell (all).")
_PROMPTS = flags.DEFINE_string("prompts", None, "A prompts.py to use as given (no pin check).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None,
                                  "Folder with babilong_official/prompts.py (pinned).")
_INSTRUCTION = flags.DEFINE_bool("use_instruction", True, "Put the task instruction in.")
_EXAMPLES = flags.DEFINE_bool("use_examples", True, "Put the in-context examples in.")
_POST_PROMPT = flags.DEFINE_bool("use_post_prompt", True, "Put the post-prompt in.")
_RETRIEVE = flags.DEFINE_enum("retrieve", "none", list(retrieval.METHODS),
                              "Context retrieval: none, or BM25 over its sentences.")
_TOP_K = flags.DEFINE_integer("top_k", 5, "Sentences kept by --retrieve.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    try:
        official = prompts.load_prompts(_PROMPTS.value, manual_dir=_MANUAL_DIR.value)
        endpoint = llm_eval.Endpoint(
            _API_URL.value, _MODEL.value, chat=_CHAT.value, system_prompt=_SYSTEM_PROMPT.value,
            api_key=os.environ.get(_API_KEY_ENV.value) or None, max_retries=_MAX_RETRIES.value,
            timeout_s=_TIMEOUT_S.value)
        results = llm_eval.evaluate(
            endpoint, official, data=_DATA.value, tasks=_TASKS.value, lengths=_LENGTHS.value,
            results_dir=_RESULTS_DIR.value, use_instruction=_INSTRUCTION.value,
            use_examples=_EXAMPLES.value, use_post_prompt=_POST_PROMPT.value,
            retrieve=_RETRIEVE.value, top_k=_TOP_K.value, concurrency=_CONCURRENCY.value,
            num_samples=_NUM_SAMPLES.value)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    meta = results["meta"]
    out = llm_eval.summary_dir(_RESULTS_DIR.value, _MODEL.value, meta["run_name"])
    used = [name for name, on in (("instr", _INSTRUCTION.value), ("examples", _EXAMPLES.value),
                                  ("post", _POST_PROMPT.value)) if on]
    retrieved = f", {_RETRIEVE.value} top {_TOP_K.value}" if _RETRIEVE.value != "none" else ""
    evaluate_lib.write_results(results, out, title=f"{_MODEL.value.split('/')[-1]} (%)\n"
                               f"{'+'.join(used) or 'bare'}{retrieved}")
    print(evaluate_lib.format_table(results))
    print(f"{meta['requests_sent']} requests; predictions in {meta['model_folder']}; "
          f"results.json and heatmap.png in {out}")


if __name__ == "__main__":
    app.run(main)
