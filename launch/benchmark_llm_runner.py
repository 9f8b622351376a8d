r"""Benchmark of the LLM runner's throughput against a local stand-in server.

    python -m launch.benchmark_llm_runner --manual_dir=../shared/data \
        --out=results/benchmark_llm_runner.json

A stand-in OpenAI-compatible server on 127.0.0.1 answers every completion after a fixed
`--latency_ms`, so the figure is the runner's own: building the official prompts, sending,
parsing, journaling and writing the official files. For each `--concurrency` the runner
answers `--num_samples` qa1 samples (contexts of `--context_chars` characters) into a fresh
results folder; samples/s is the median over `--repeats` runs. With N requests in flight
the bound is N / latency. Prints a table and writes one JSON file (with the command).
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import platform
import shlex
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from absl import app, flags

from babilong_tfds import llm_eval, prompts
from launch.outputs import check_output_file
from rmt_jax.files import atomic_write

_MANUAL_DIR = flags.DEFINE_string("manual_dir", "../shared/data",
                                  "Folder with babilong_official/prompts.py.")
_LATENCY_MS = flags.DEFINE_float("latency_ms", 50.0, "The stand-in's wait per request.")
_CONCURRENCY = flags.DEFINE_list("concurrency", ["1", "8"], "Requests in flight, each run.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "Samples answered per run.")
_CONTEXT_CHARS = flags.DEFINE_integer("context_chars", 4000, "Characters of each context.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per concurrency (median).")
_OUT = flags.DEFINE_string("out", "results/benchmark_llm_runner.json", "JSON output path.")


class _StandIn(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, latency_s: float):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.latency_s = latency_s

    def handle_error(self, request, client_address):
        pass  # a client closing its connection is not the server's failure


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body go out as separate writes: without this, Nagle's algorithm and
        # delayed ACKs add ~40 ms to every keep-alive answer.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def _reply(self, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._reply({"data": [{"id": "stand-in"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.server.latency_s)
        self._reply({"choices": [{"index": 0, "text": " The answer is the kitchen."}]})


def _write_data(root: Path, num_samples: int, context_chars: int) -> None:
    filler = "The mill stood by the river and the wheel turned slowly all day. "
    lines = []
    for i in range(num_samples):
        context = (filler * (context_chars // len(filler) + 1))[:context_chars]
        lines.append(json.dumps({"input": f"{context} Mary went to the kitchen.",
                                 "question": f"Where is Mary? ({i})", "target": "kitchen"}))
    (root / "qa1").mkdir(parents=True)
    (root / "qa1" / "0k.jsonl").write_text("\n".join(lines) + "\n")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        check_output_file(_OUT.value)
        official = prompts.load_prompts(manual_dir=_MANUAL_DIR.value)
        levels = [int(c) for c in _CONCURRENCY.value]
    except ValueError as e:
        sys.exit(f"error: {e}")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    server = _StandIn(_LATENCY_MS.value / 1000)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        _write_data(data, _NUM_SAMPLES.value, _CONTEXT_CHARS.value)
        for concurrency in levels:
            times = []
            for repeat in range(_REPEATS.value):
                start = time.perf_counter()
                llm_eval.evaluate(llm_eval.Endpoint(url, "stand-in"), official, data=str(data),
                                  tasks="qa1", lengths="0k", concurrency=concurrency,
                                  results_dir=Path(tmp) / f"out_{concurrency}_{repeat}",
                                  progress=False)
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            rows.append({"concurrency": concurrency, "seconds": seconds,
                         "samples_per_s": _NUM_SAMPLES.value / seconds,
                         "bound_samples_per_s": concurrency * 1000 / _LATENCY_MS.value,
                         "all_seconds": times})
    server.shutdown()
    print(f"{'concurrency':>11} {'seconds':>9} {'samples/s':>10} {'bound':>8}")
    for row in rows:
        print(f"{row['concurrency']:>11} {row['seconds']:>9.3f} {row['samples_per_s']:>10.1f} "
              f"{row['bound_samples_per_s']:>8.1f}")
    report = {
        "command": " ".join(["python -m launch.benchmark_llm_runner", shlex.join(sys.argv[1:])]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "latency_ms": _LATENCY_MS.value, "num_samples": _NUM_SAMPLES.value,
        "context_chars": _CONTEXT_CHARS.value, "repeats": _REPEATS.value, "runs": rows,
    }
    out = Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
