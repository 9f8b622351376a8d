r"""Speed and validation figures of the bAbI generator and the rule-based solver.

    python -m launch.benchmark_babi_generator --tasks=all --stories=5000 \
        --questions=10000 --babi_root=../shared/data/babi --output_dir=results

Prints a table of stories/s and questions/s per task (one process, per CPU second), then
checks, per task: the solver on `--questions` generated questions and on the original
files (v1.1 plain files and the en-10k archive, when found under `--babi_root`), the
sufficiency of the supporting facts, statistics against v1.1, and verbatim overlap with
the originals. Writes `{output_dir}/babi_generator_speed.json` and
`{output_dir}/babi_generator_validation.json`.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

from absl import app, flags

from babilong_tfds.babi import find_babi_files, parse_babi
from babilong_tfds.babi_generator import GeneratedBabi, generate_samples
from babilong_tfds.babi_generator.validation import (
    accuracy,
    overlap,
    support_sufficiency,
    task_stats,
    tv_distance,
)
from babilong_tfds.tasks import parse_tasks
from launch.outputs import check_output_dir
from rmt_jax.files import write_text

_TASKS = flags.DEFINE_string("tasks", "all", "Comma-separated qa1..qa20, or 'all'.")
_STORIES = flags.DEFINE_integer("stories", 5000, "Stories timed per task.")
_QUESTIONS = flags.DEFINE_integer("questions", 10000, "Generated questions checked per task.")
_SEED = flags.DEFINE_integer("seed", 0, "Generator seed.")
_BABI_ROOT = flags.DEFINE_string("babi_root", "../shared/data/babi", "Original bAbI files.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results", "Where the JSON files go.")
_SKIP_VALIDATION = flags.DEFINE_bool("skip_validation", False, "Only time the generator.")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _speed(task: str, stories: int, seed: int) -> dict:
    """Rates per CPU second of this process (the machine is shared, so wall-clock rates
    are reported too but depend on the other load)."""
    gen = GeneratedBabi(task, seed)
    gen.story(0)
    wall, cpu = time.perf_counter(), time.process_time()
    questions = sum(len(gen.story(i)) for i in range(stories))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "stories_per_s": stories / cpu,
        "questions_per_s": questions / cpu,
        "stories_per_wall_s": stories / wall,
    }


def _originals(root: Path, task: str, variant: str) -> list:
    """The task's train+test questions from the copy under `root` of the given variant."""
    out = []
    for split in ("train", "test"):
        files = [f for f in find_babi_files(root, task, split)
                 if variant in Path(f.member or f.path).parts]
        if files:
            out += parse_babi(files[0].read_text().splitlines(), task, files[0].name)
    return out


def _validate(task: str, root: Path, questions: int, seed: int) -> dict:
    gen = generate_samples(task, seed, questions)
    v11 = _originals(root, task, "v1.1") if root.exists() else []
    en10k = _originals(root, task, "en-10k") if root.exists() else []
    result = {
        "generated_questions": len(gen),
        "solver_accuracy_generated": accuracy(gen),
        "support_sufficiency_generated": support_sufficiency(gen),
        "stats_generated": task_stats(gen),
    }
    if v11:
        stats = task_stats(v11)
        result.update({
            "v11_questions": len(v11),
            "solver_accuracy_v11": accuracy(v11),
            "support_sufficiency_v11": support_sufficiency(v11),
            "stats_v11": stats,
            "answer_tv_distance": tv_distance(result["stats_generated"]["answer_freq"],
                                              stats["answer_freq"]),
            "overlap_v11": overlap(gen, v11),
        })
    if en10k:
        result.update({"en10k_questions": len(en10k), "solver_accuracy_en10k": accuracy(en10k)})
    return result


def main(argv):
    del argv
    try:
        tasks = parse_tasks(_TASKS.value)
        check_output_dir(_OUTPUT_DIR.value, "--output_dir")
    except ValueError as e:
        sys.exit(f"error: {e}")
    out = Path(_OUTPUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"cpu": _cpu(), "python": platform.python_version(), "seed": _SEED.value,
            "processes": 1}
    speed = {t: _speed(t, _STORIES.value, _SEED.value) for t in tasks}
    print(f"CPU: {meta['cpu']} (one process)")
    print(f"{'task':<6} {'stories/s':>10} {'questions/s':>12} {'stories/wall-s':>15}")
    for t, r in speed.items():
        print(f"{t:<6} {r['stories_per_s']:>10,.0f} {r['questions_per_s']:>12,.0f} "
              f"{r['stories_per_wall_s']:>15,.0f}")
    write_text(out / "babi_generator_speed.json", json.dumps(
        {"meta": {**meta, "stories_timed": _STORIES.value}, "tasks": speed}, indent=1))
    if _SKIP_VALIDATION.value:
        return
    root = Path(_BABI_ROOT.value)
    report = {}
    print(f"\n{'task':<6} {'gen acc':>8} {'v1.1':>7} {'en-10k':>7} {'suff gen/v1.1':>14} "
          f"{'facts/q gen/v1.1':>17} {'near gen/v1.1':>14} {'TV':>6} {'story ovl':>9} "
          f"{'3-win ovl':>9}")
    for t in tasks:
        r = report[t] = _validate(t, root, _QUESTIONS.value, _SEED.value)
        g, o = r["stats_generated"], r.get("stats_v11", {})
        ovl = r.get("overlap_v11", {})
        print(f"{t:<6} {r['solver_accuracy_generated']:>8.4f} "
              f"{r.get('solver_accuracy_v11', float('nan')):>7.4f} "
              f"{r.get('solver_accuracy_en10k', float('nan')):>7.4f} "
              f"{r['support_sufficiency_generated']:>6.3f}/"
              f"{r.get('support_sufficiency_v11', float('nan')):<7.3f} "
              f"{g['facts_per_question']:>8.2f}/{o.get('facts_per_question', float('nan')):<8.2f} "
              f"{g['dist_nearest']:>6.2f}/{o.get('dist_nearest', float('nan')):<7.2f} "
              f"{r.get('answer_tv_distance', float('nan')):>6.3f} "
              f"{ovl.get('story_overlap', float('nan')):>9.4f} "
              f"{ovl.get('window3_overlap', float('nan')):>9.4f}")
    write_text(out / "babi_generator_validation.json", json.dumps(
        {"meta": {**meta, "questions_per_task": _QUESTIONS.value}, "tasks": report}, indent=1))
    print(f"\nwrote {out / 'babi_generator_speed.json'} and "
          f"{out / 'babi_generator_validation.json'}")


if __name__ == "__main__":
    app.run(main)
