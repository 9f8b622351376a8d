"""launch.trace_summary: busy time from the device's streams, costliest ops, CPU traces."""

import gzip
import json

import pytest

from launch import trace_summary


def gpu_trace():
    """A GPU-shaped Perfetto trace: two streams, a derived 'XLA Modules' line, a host thread."""
    meta = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name",
         "args": {"name": "Stream #7(Compute)"}},
        {"ph": "M", "pid": 1, "tid": 8, "name": "thread_name",
         "args": {"name": "Stream #8(MemcpyD2H)"}},
        {"ph": "M", "pid": 1, "tid": 9, "name": "thread_name", "args": {"name": "XLA Modules"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
    ]
    kernels = [  # (stream, start, duration, name): busy 0-10, 12-20 (8 overlaps), 30-40
        (7, 0, 10, "gemm"), (8, 5, 3, "memcpy"), (7, 12, 8, "fusion.1"), (7, 30, 10, "gemm")]
    events = [{"ph": "X", "pid": 1, "tid": t, "ts": s, "dur": d, "name": n}
              for t, s, d, n in kernels]
    events.append({"ph": "X", "pid": 1, "tid": 9, "ts": 0, "dur": 40, "name": "jit_step"})
    events.append({"ph": "X", "pid": 2, "tid": 1, "ts": 0, "dur": 45, "name": "python"})
    return {"traceEvents": meta + events}


def test_gpu_trace_counts_streams_only():
    summary = trace_summary.summarize(gpu_trace(), top=2)
    assert summary["window_us"] == 40.0
    assert summary["busy_us"] == 28.0  # 10 + 8 + 10; the memcpy overlaps the first gemm
    assert summary["busy_fraction"] == pytest.approx(0.7)
    assert summary["events"] == 4  # neither the module line nor the host thread
    assert [row["name"] for row in summary["top"]] == ["gemm", "fusion.1"]
    assert summary["top"][0] == {"name": "gemm", "count": 2, "total_us": 20.0, "mean_us": 10.0,
                                 "share_of_busy": round(20 / 28, 4)}


def test_load_finds_the_newest_trace_and_complains_when_there_is_none(tmp_path):
    with pytest.raises(FileNotFoundError, match="create_perfetto_trace=True"):
        trace_summary.load(tmp_path)
    folder = tmp_path / "plugins" / "profile" / "run1"
    folder.mkdir(parents=True)
    with gzip.open(folder / "perfetto_trace.json.gz", "wt") as f:
        json.dump(gpu_trace(), f)
    assert trace_summary.summarize(trace_summary.load(tmp_path))["busy_us"] == 28.0
    assert "gemm" in trace_summary.format_table(trace_summary.summarize(gpu_trace()))


def test_a_trace_without_device_events_is_an_error():
    trace = {"traceEvents": [{"ph": "X", "pid": 2, "tid": 1, "ts": 0, "dur": 5, "name": "py"}]}
    with pytest.raises(ValueError, match="no device events"):
        trace_summary.summarize(trace)
