"""The LLM runner end to end against a stand-in OpenAI-compatible server on 127.0.0.1."""

import csv
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from babilong_tfds import llm_eval, metric
from babilong_tfds.prompts import PromptConfig, prompts_from_source
from babilong_tfds.tasks import TASK_NAMES

from .conftest import REPO, SHARED_DATA

PEOPLE = ["Mary", "John", "Sandra", "Daniel", "Fred", "Bill"]
PLACES = ["kitchen", "garden", "office", "bathroom", "bedroom", "hallway"]
FILLER = " ".join(f"The rain fell on day {i} and the mill was quiet." for i in range(30))

# A prompts file of our own (not the official text), with the official file's shape.
PROMPTS_SOURCE = (
    "HEAD = '{instruction}|{examples}|{post_prompt}'\n"
    "DEFAULT_TEMPLATE = f'{HEAD}\\n<ctx>{{context}}</ctx>\\nQ: {{question}}'\n"
    "DEFAULT_PROMPTS = {" + ", ".join(
        f"'{t}': {{'instruction': 'Do {t}.', 'examples': 'E{t}', 'post_prompt': 'One word.'}}"
        for t in TASK_NAMES) + "}\n")
PROMPTS = prompts_from_source(PROMPTS_SOURCE, source="test")
RUN = "instruction_yes_examples_yes_post_prompt_yes_chat_template_no_system_prompt_no"


def _samples(task: str, length: str) -> list[dict]:
    out = []
    for i, person in enumerate(PEOPLE):
        place = PLACES[(i + len(task) + len(length)) % len(PLACES)]
        facts = f"{person} went to the {place}. {PEOPLE[i - 1]} went to the hallway."
        context = facts if length == "0k" else f"{FILLER} {facts} {FILLER}"
        out.append({"input": context, "question": f"Where is {person}?", "target": place})
    return out


def _answer(sample: dict, i: int) -> str:
    """Right for even samples, wrong for odd ones."""
    wrong = next(p for p in PLACES if p != sample["target"])
    return f"{sample['question'][9:-1]} is in the {sample['target'] if i % 2 == 0 else wrong}."


class StandIn(http.server.ThreadingHTTPServer):
    """A scriptable OpenAI-compatible server: answers by the question it finds in the prompt.

    queue: responses (status, body) served first, one per POST; fail: {text: status}, a
    prompt holding the text is always answered with that status; latency_s: a wait before
    each answer."""

    daemon_threads = True

    def __init__(self, answers: dict[str, str], latency_s: float = 0.0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers, self.latency_s = answers, latency_s
        self.queue: list[tuple[int, object]] = []
        self.fail: dict[str, int] = {}
        self.models_status = 200
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def handle_error(self, request, client_address):
        pass  # a client closing its connection early is not the server's failure

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def posts(self) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST"]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle delay

    def log_message(self, *args):
        pass

    def _send(self, status: int, body, headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        server = self.server
        with server.lock:
            server.requests.append({"method": "GET", "path": self.path,
                                    "headers": dict(self.headers)})
        self._send(server.models_status, {"data": [{"id": "stand-in"}]})

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append({"method": "POST", "path": self.path, "body": body,
                                    "headers": dict(self.headers)})
            forced = server.queue.pop(0) if server.queue else None
        time.sleep(server.latency_s)
        if forced is not None:
            return self._send(*forced, headers=[("Retry-After", "0")])
        chat = self.path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        question = prompt.rsplit("Q: ", 1)[-1]
        for text, status in server.fail.items():
            if text in prompt:
                return self._send(status, {"error": "scripted failure"})
        text = " " + server.answers.get(question, "I do not know.") + "\n"
        choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
        self._send(200, {"id": "x", "choices": [{"index": 0, **choice}]})


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "data"
    for task in ("qa1", "qa2"):
        for length in ("0k", "1k"):
            path = root / task / f"{length}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(s) + "\n" for s in _samples(task, length)))
    return root


@pytest.fixture
def server():
    answers = {}
    for task in ("qa1", "qa2"):
        for length in ("0k", "1k"):
            for i, sample in enumerate(_samples(task, length)):
                answers.setdefault(sample["question"], _answer(sample, i))
    srv = StandIn(answers)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _endpoint(server, **kw):
    return llm_eval.Endpoint(server.url, kw.pop("model", "org/stand-in"), backoff_s=0.0,
                             max_retries=kw.pop("max_retries", 2), timeout_s=10, **kw)


def _run(server, data_dir, out, **kw):
    endpoint = _endpoint(server, **{k: kw.pop(k) for k in list(kw)
                                    if k in ("chat", "system_prompt", "api_key", "model",
                                             "max_retries")})
    return llm_eval.evaluate(endpoint, PROMPTS, data=str(data_dir), tasks=kw.pop("tasks", "qa1"),
                             lengths=kw.pop("lengths", "0k,1k"), results_dir=out,
                             progress=False, **kw)


def _header(request, name):
    return {k.lower(): v for k, v in request["headers"].items()}.get(name)


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_official_layout_and_scores(server, data_dir, tmp_path):
    out = tmp_path / "out"
    results = _run(server, data_dir, out, tasks="qa1,qa2", concurrency=4)
    assert _files(out) == sorted(f"org/stand-in/{t}_{n}_{RUN}.{ext}" for t in ("qa1", "qa2")
                                 for n in ("0k", "1k") for ext in ("csv", "json"))
    for task in ("qa1", "qa2"):
        for length in ("0k", "1k"):
            samples = _samples(task, length)
            stem = out / "org/stand-in" / f"{task}_{length}_{RUN}"
            with open(stem.with_suffix(".csv"), newline="") as f:
                rows = list(csv.reader(f))
            assert rows[0] == ["", "target", "output", "question"]
            assert [r[0] for r in rows[1:]] == [str(i) for i in range(len(samples))]
            expected = [_answer(s, i) for i, s in enumerate(samples)]
            assert [r[2] for r in rows[1:]] == expected  # stripped, in sample order
            assert [r[1] for r in rows[1:]] == [s["target"] for s in samples]
            truth = metric.score_batch([s["target"] for s in samples], expected,
                                       [s["question"] for s in samples], task)
            assert results["results"][task][length]["accuracy"] == truth["label_accuracy"]
            assert truth["label_accuracy"] == 0.5
            saved = json.loads(stem.with_suffix(".json").read_text())
            assert saved["prompt"] == PromptConfig().official_config(PROMPTS, task)
            assert saved["generate_kwargs"] == {"max_tokens": 20, "temperature": 0.0}
    # One GET /models, then one request per sample, each greedy with 20 new tokens.
    assert [r["path"] for r in server.requests if r["method"] == "GET"] == ["/v1/models"]
    posts = server.posts()
    assert len(posts) == 24 == results["meta"]["requests_sent"] - 1
    body = posts[0]["body"]
    assert body.keys() == {"model", "prompt", "max_tokens", "temperature"}
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("org/stand-in", 20, 0)
    sample = _samples("qa1", "0k")[0]
    prompts_sent = {p["body"]["prompt"] for p in posts}
    assert PromptConfig().build(PROMPTS, "qa1", sample["input"], sample["question"]) in (
        prompts_sent)
    assert all(_header(p, "authorization") is None for p in posts)


def test_csv_reads_as_the_official_collector_reads_it(server, data_dir, tmp_path):
    pd = pytest.importorskip("pandas")
    _run(server, data_dir, tmp_path, lengths="0k")
    df = pd.read_csv(tmp_path / "org/stand-in" / f"qa1_0k_{RUN}.csv")
    assert list(df.columns) == ["Unnamed: 0", "target", "output", "question"]
    assert df["output"].tolist() == [_answer(s, i) for i, s in enumerate(_samples("qa1", "0k"))]


def test_resume_asks_only_what_is_unanswered(server, data_dir, tmp_path):
    samples = _samples("qa1", "1k")
    # Samples 2 and 4 of 1k only (their questions are asked at 0k too).
    server.fail = {f"quiet. {PEOPLE[2]} went": 500, f"quiet. {PEOPLE[4]} went": 500}
    with pytest.raises(llm_eval.EndpointError, match="HTTP 500.*gave up after 2 tries"):
        _run(server, data_dir, tmp_path, lengths="0k,1k", concurrency=2, max_retries=1)
    folder = tmp_path / "org/stand-in"
    # 0k is complete; 1k has no CSV or JSON, only the journal of its answered samples.
    assert (folder / f"qa1_0k_{RUN}.csv").exists()
    assert not (folder / f"qa1_1k_{RUN}.csv").exists()
    assert not (folder / f"qa1_1k_{RUN}.json").exists()
    journal = folder / f".qa1_1k_{RUN}.answers.jsonl"
    answered = [json.loads(line)["index"] for line in journal.read_text().splitlines()]
    assert 2 not in answered and 4 not in answered and len(answered) >= 1
    # An interrupt may cut the last line: it is ignored.
    with open(journal, "a") as f:
        f.write('{"index": 5, "outp')
    server.fail, server.requests = {}, []
    results = _run(server, data_dir, tmp_path, lengths="0k,1k", concurrency=2)
    asked = sorted(p["body"]["prompt"].rsplit("Q: ", 1)[-1] for p in server.posts())
    assert asked == sorted(s["question"] for i, s in enumerate(samples) if i not in answered)
    assert not journal.exists()
    assert results["meta"]["cells_skipped"] == ["qa1_0k"]
    assert results["results"]["qa1"]["1k"]["accuracy"] == 0.5
    # Everything answered: a third run sends no completion request and scores the same.
    server.requests = []
    again = _run(server, data_dir, tmp_path, lengths="0k,1k")
    assert server.posts() == [] and again["results"] == results["results"]


def test_retries_429_and_5xx_then_succeeds(server, data_dir, tmp_path):
    server.queue = [(429, {"error": "slow down"}), (503, b"busy"), (500, {"error": "x"})]
    results = _run(server, data_dir, tmp_path, lengths="0k", concurrency=1, max_retries=3)
    assert len(server.posts()) == 6 + 3
    assert results["results"]["qa1"]["0k"]["accuracy"] == 0.5


@pytest.mark.parametrize("case, message", [
    ("unreachable", "cannot reach"),
    ("refused", "refused the API key"),
    ("forbidden_models", "refused the API key"),
    ("not_json", "malformed response"),
    ("no_choices", "malformed response.*choices"),
    ("bad_request", "rejected the request"),
])
def test_server_errors_leave_nothing_written(case, message, server, data_dir, tmp_path):
    out = tmp_path / "out"
    if case == "unreachable":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        endpoint = llm_eval.Endpoint(f"http://127.0.0.1:{port}/v1", "m", backoff_s=0.0,
                                     max_retries=1, timeout_s=5)
        with pytest.raises(llm_eval.EndpointError, match=message):
            llm_eval.evaluate(endpoint, PROMPTS, data=str(data_dir), tasks="qa1",
                              lengths="0k", results_dir=out, progress=False)
    else:
        if case == "forbidden_models":
            server.models_status = 403
        else:
            status, body = {"refused": (401, {"error": "bad key"}),
                            "not_json": (200, b"<html>oops"),
                            "no_choices": (200, {"id": "x"}),
                            "bad_request": (400, {"error": "too long"})}[case]
            server.queue = [(status, body)] * 50
        with pytest.raises(llm_eval.EndpointError, match=message):
            _run(server, data_dir, out, lengths="0k", concurrency=1)
    assert not out.exists() or _files(out) == []


def test_missing_data_stops_before_any_request(server, data_dir, tmp_path):
    with pytest.raises(ValueError, match="holds no qa1 at 4k"):
        _run(server, data_dir, tmp_path / "out", lengths="0k,4k")
    with pytest.raises(ValueError, match="holds no qa3 at 0k"):
        _run(server, data_dir, tmp_path / "out", tasks="qa1,qa3", lengths="0k")
    assert server.requests == [] and not (tmp_path / "out").exists()


def test_chat_bodies_system_prompt_and_key(server, data_dir, tmp_path):
    results = _run(server, data_dir, tmp_path, lengths="0k", chat=True,
                   system_prompt="Answer briefly.", api_key="sk-test")
    run = "instruction_yes_examples_yes_post_prompt_yes_chat_template_yes_system_prompt_yes"
    assert (tmp_path / "org/stand-in" / f"qa1_0k_{run}.csv").exists()
    assert results["results"]["qa1"]["0k"]["accuracy"] == 0.5
    post = server.posts()[0]
    assert post["path"] == "/v1/chat/completions"
    assert post["body"].keys() == {"model", "messages", "max_tokens", "temperature"}
    system, user = post["body"]["messages"]
    assert system == {"role": "system", "content": "Answer briefly."}
    assert user["role"] == "user" and user["content"].startswith("Do qa1.|Eqa1|One word.")
    assert all(_header(r, "authorization") == "Bearer sk-test" for r in server.requests)


def test_bm25_runs_are_named_apart_and_see_only_retrieved_sentences(server, data_dir, tmp_path):
    out = tmp_path / "out"
    _run(server, data_dir, out, lengths="1k", retrieve="bm25", top_k=1, use_examples=False)
    run = ("instruction_yes_examples_no_post_prompt_yes_chat_template_no_system_prompt_no"
           "_retrieval_bm25_top_1")
    assert _files(out) == [f"org/stand-in/qa1_1k_{run}.{e}" for e in ("csv", "json")]
    config = json.loads((out / f"org/stand-in/qa1_1k_{run}.json").read_text())
    assert config["retrieval"] == {"method": "bm25", "top_k": 1}
    sample = _samples("qa1", "1k")[0]
    sent = [p["body"]["prompt"] for p in server.posts() if p["body"]["prompt"].endswith(
        sample["question"])]
    assert sent == [f"Do qa1.||One word.\n<ctx>Mary went to the {sample['target']}.</ctx>\n"
                    f"Q: {sample['question']}"]


@pytest.mark.parametrize("name, folder", [
    ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"),
    ("llama3:8b q4", "llama3_8b_q4"),
    ("../../etc", "__/__/etc"),
])
def test_model_folder_is_filesystem_safe(name, folder):
    assert llm_eval.model_folder(name) == folder


@pytest.mark.parametrize("kw, message", [
    ({"api_url": "127.0.0.1:8000/v1"}, "http://"),
    ({"api_url": "http://h/v1/chat/completions"}, "base URL"),
    ({"system_prompt": "x"}, "needs chat"),
    ({"model": ""}, "model is empty"),
])
def test_bad_endpoints(kw, message):
    args = {"api_url": "http://h/v1", "model": "m", **kw}
    with pytest.raises(ValueError, match=message):
        llm_eval.Endpoint(args.pop("api_url"), args.pop("model"), **args)


def _launch(args, env_key=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("OPENAI_API_KEY", None)
    if env_key:
        env["TEST_KEY"] = env_key
    return subprocess.run([sys.executable, "-m", "launch.evaluate_llm", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=180)


def test_entry_point_end_to_end_and_errors(server, data_dir, tmp_path):
    prompts_file = tmp_path / "prompts.py"
    prompts_file.write_text(PROMPTS_SOURCE)
    out = tmp_path / "out"
    common = [f"--api_url={server.url}", "--model=org/stand-in", f"--data={data_dir}",
              "--tasks=qa1", f"--results_dir={out}", "--concurrency=3"]
    done = _launch([*common, "--lengths=0k,1k", f"--prompts={prompts_file}",
                    "--api_key_env=TEST_KEY"], env_key="sk-1")
    assert done.returncode == 0, done.stderr
    summary = out / "org/stand-in" / RUN
    results = json.loads((summary / "results.json").read_text())
    assert results["results"]["qa1"]["1k"]["accuracy"] == 0.5
    assert (summary / "heatmap.png").stat().st_size > 0
    assert _header(server.posts()[0], "authorization") == "Bearer sk-1"
    # A pinned prompts file that does not match: an error line, nothing sent or written.
    manual = tmp_path / "manual"
    (manual / "babilong_official").mkdir(parents=True)
    (manual / "babilong_official/prompts.py").write_text(PROMPTS_SOURCE)
    server.requests = []
    failed = _launch([*common[:-2], f"--results_dir={tmp_path / 'out2'}", "--lengths=0k",
                      f"--manual_dir={manual}"])
    assert failed.returncode != 0
    assert failed.stderr.strip().splitlines()[-1].startswith("error: prompts file")
    assert "sha256" in failed.stderr
    assert server.requests == [] and not (tmp_path / "out2").exists()


def test_entry_point_with_the_official_prompts(server, data_dir, tmp_path):
    if not (SHARED_DATA / "babilong_official/prompts.py").is_file():
        pytest.skip("the official prompts file is absent from ../shared/data")
    done = _launch([f"--api_url={server.url}", "--model=org/stand-in", f"--data={data_dir}",
                    "--tasks=qa1", "--lengths=0k", f"--results_dir={tmp_path}",
                    f"--manual_dir={SHARED_DATA}", "--max_retries=0"])
    # The official template ends in 'Question: ...', which the stand-in does not parse:
    # every answer is 'I do not know.', scored 0, and the run completes.
    assert done.returncode == 0, done.stderr
    rows = llm_eval.read_predictions(tmp_path / "org/stand-in" / f"qa1_0k_{RUN}.csv")
    assert [r["output"] for r in rows] == ["I do not know."] * 6
    # Requests run in parallel, so their order is not fixed: look for the first sample's.
    assert any(p["body"]["prompt"].endswith("Question: Where is Mary?") for p in server.posts())


def test_an_interrupt_keeps_the_answers_and_writes_no_csv(server, data_dir, tmp_path):
    stop_at = _samples("qa1", "0k")[3]["question"]

    class Interrupted(llm_eval.OpenAIClient):
        def complete(self, prompt):
            if prompt.endswith(stop_at):
                raise KeyboardInterrupt
            return super().complete(prompt)

    endpoint, out = _endpoint(server), tmp_path / "out"
    with Interrupted(endpoint) as client, pytest.raises(KeyboardInterrupt):
        llm_eval.evaluate(endpoint, PROMPTS, data=str(data_dir), tasks="qa1", lengths="0k",
                          results_dir=out, concurrency=1, progress=False, client=client)
    folder = out / "org/stand-in"
    assert _files(out) == [f"org/stand-in/.qa1_0k_{RUN}.answers.jsonl"]
    kept = [json.loads(x)["index"] for x in (folder / f".qa1_0k_{RUN}.answers.jsonl")
            .read_text().splitlines()]
    # Answers that came before (and, from the worker, after) the interrupt are all kept.
    assert set(kept) >= {0, 1, 2} and 3 not in kept
    # A request the worker of the interrupted run sent may still be reaching the server:
    # wait until it has gone quiet, so the count below holds the resumed run's alone.
    seen, deadline = -1, time.time() + 10
    while len(server.requests) != seen and time.time() < deadline:
        seen = len(server.requests)
        time.sleep(0.5)
    server.requests = []
    _run(server, data_dir, out, lengths="0k")
    assert len(server.posts()) == 6 - len(kept)
    assert _files(out) == [f"org/stand-in/qa1_0k_{RUN}.{e}" for e in ("csv", "json")]
