r"""Where the device time of a `jax.profiler` trace goes: busy fraction and the costliest ops.

  python -m launch.trace_summary /tmp/prof            # a folder holding perfetto_trace.json.gz
  python -m launch.trace_summary /tmp/prof --top=30 --out=/tmp/prof_summary.json

Reads the Perfetto trace that `jax.profiler.trace(dir, create_perfetto_trace=True)` writes
(`launch.benchmark_rmt --profile_dir=DIR` makes one), so it needs neither TensorBoard nor the
profiler plugin. The device events are those of the `/device:GPU:*` (or TPU) processes; on a
CPU backend, the XLA ops that the host threads ran (events naming an `hlo_op`). Reported:

  window_us      from the first device event's start to the last one's end
  busy_us        the union of the device events' intervals (overlapping streams counted once)
  busy_fraction  busy_us / window_us: well below 1 means the device waits for the host
                 (launches, loop conditions), not for arithmetic
  events         device events in the window; top: per name, count, total and mean time
                 (on a CPU backend a loop is listed with, not instead of, the ops inside it)
"""

from __future__ import annotations

import collections
import gzip
import json
from pathlib import Path

from absl import app, flags

from rmt_jax.files import atomic_write

FLAGS = flags.FLAGS

DEVICE_PREFIXES = ("/device:GPU", "/device:TPU")


def find_trace(path: str | Path) -> Path:
    """The newest perfetto_trace.json.gz under `path` (or `path` itself when it is the file)."""
    path = Path(path)
    if path.is_file():
        return path
    found = sorted(path.glob("**/perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"no perfetto_trace.json.gz under {path}: record one with "
            "jax.profiler.trace(dir, create_perfetto_trace=True) or "
            "launch.benchmark_rmt --profile_dir=DIR")
    return found[-1]


def device_events(trace: dict) -> list[dict]:
    """Complete ('X') events of the device's streams; else XLA op events on host threads.

    A GPU process holds one thread per stream ('Stream #7(Compute)', the kernels and copies)
    and derived threads ('XLA Modules', 'XLA Ops') that span the same time again; only the
    streams are kept (on a TPU, which has no stream threads, the 'XLA Ops' thread).
    """
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    meta = [e for e in events if e.get("ph") == "M"]
    process = {e["pid"]: e.get("args", {}).get("name", "") for e in meta
               if e.get("name") == "process_name"}
    thread = {(e["pid"], e.get("tid")): e.get("args", {}).get("name", "") for e in meta
              if e.get("name") == "thread_name"}
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    device_pids = {pid for pid, name in process.items() if name.startswith(DEVICE_PREFIXES)}
    if not device_pids:
        return [e for e in complete if "hlo_op" in e.get("args", {})]
    on_device = [e for e in complete if e["pid"] in device_pids]
    for wanted in ("Stream", "XLA Ops"):
        chosen = [e for e in on_device
                  if thread.get((e["pid"], e.get("tid")), "").startswith(wanted)]
        if chosen:
            return chosen
    return on_device


def summarize(trace: dict, top: int = 20) -> dict:
    events = device_events(trace)
    if not events:
        raise ValueError("the trace holds no device events: was anything run on the device "
                         "inside the profiled region?")
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in events)
    busy, end = 0.0, spans[0][0]
    for start, stop in spans:  # union of intervals
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    window = max(stop for _, stop in spans) - spans[0][0]
    per_name: dict[str, list[float]] = collections.defaultdict(list)
    for e in events:
        per_name[e["name"]].append(float(e["dur"]))
    ranked = sorted(per_name.items(), key=lambda kv: -sum(kv[1]))
    return dict(
        window_us=round(window, 1), busy_us=round(busy, 1),
        busy_fraction=round(busy / window, 4) if window > 0 else 1.0,
        events=len(events),
        top=[dict(name=name[:160], count=len(d), total_us=round(sum(d), 1),
                  mean_us=round(sum(d) / len(d), 2), share_of_busy=round(sum(d) / busy, 4))
             for name, d in ranked[:top]])


def load(path: str | Path) -> dict:
    with gzip.open(find_trace(path), "rt") as f:
        return json.load(f)


def format_table(summary: dict) -> str:
    lines = [f"device window {summary['window_us'] / 1e3:.2f} ms, busy "
             f"{summary['busy_us'] / 1e3:.2f} ms ({100 * summary['busy_fraction']:.1f}%), "
             f"{summary['events']} events",
             f"{'count':>7} {'total ms':>9} {'mean us':>9} {'share':>6}  name"]
    for row in summary["top"]:
        lines.append(f"{row['count']:>7} {row['total_us'] / 1e3:>9.3f} {row['mean_us']:>9.2f} "
                     f"{100 * row['share_of_busy']:>5.1f}%  {row['name']}")
    return "\n".join(lines)


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: python -m launch.trace_summary TRACE_DIR_OR_FILE")
    summary = summarize(load(argv[1]), FLAGS.top)
    print(format_table(summary))
    if FLAGS.out:
        text = json.dumps(summary, indent=1) + "\n"
        atomic_write(Path(FLAGS.out), lambda tmp: Path(tmp).write_text(text))


if __name__ == "__main__":
    # Defined here, not at import: launch.benchmark_rmt imports this module and has its own.
    flags.DEFINE_integer("top", 20, "how many op names to list")
    flags.DEFINE_string("out", None, "write the summary as JSON here too")
    app.run(main)
