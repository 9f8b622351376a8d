"""Evaluating an LLM behind an OpenAI-compatible server on BABILong, as the official runner.

For every (task, length) cell, each sample's prompt is built from the official prompts
(`babilong_tfds.prompts`), optionally from a BM25-retrieved context
(`babilong_tfds.retrieval`), and sent to `{api_url}/completions` (or
`{api_url}/chat/completions` with `chat=True`, the prompt as the user message after an
optional system message) with greedy decoding (temperature 0) and 20 new tokens, as the
published numbers were made. Requests run in parallel threads; 429, 5xx and connection
errors are retried with exponential backoff (bounded); 401/403 and malformed answers stop
the run.

Files, in the official runner's layout so that its result collection reads them:

  {results_dir}/{model_folder}/{task}_{length}_{run_name}.csv   index,target,output,question
  {results_dir}/{model_folder}/{task}_{length}_{run_name}.json  {'prompt': ..., 'generate_kwargs'}

`model_folder` is the model name with characters other than letters, digits and `._+-`
replaced by '_' in each '/'-separated part ('meta-llama/Llama-3-8B' stays two folders, as the
official runner and its `collect_results` expect). `run_name` is the official
`instruction_yes_examples_yes_post_prompt_yes_chat_template_no_system_prompt_no`, plus
`_retrieval_bm25_top_5` for retrieved contexts.

Resuming: every answer is appended (and flushed) to a hidden journal
`.{task}_{length}_{run_name}.answers.jsonl` as it arrives; the CSV and JSON are written
whole (temp file + rename) when the cell is complete, and the journal is then removed. A
rerun skips complete cells and the journal's answered samples, so an interrupt loses no
answer and never leaves a CSV that looks complete. Data, prompts and the endpoint are all
checked before the first request.

`evaluate` returns (and `launch.evaluate_llm` writes as results.json) the dict of
`rmt_jax.evaluate_lib`: {'results': {task: {length: {'accuracy', 'exact_match', 'count'}}},
'mean_qa1_qa5': {length: float} (when qa1..qa5 all ran), 'examples', 'meta'}.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from babilong_tfds import metric, published, retrieval
from babilong_tfds.files import write_text
from babilong_tfds.prompts import OfficialPrompts, PromptConfig
from babilong_tfds.tasks import parse_lengths, parse_tasks

# The official runner's generation: greedy, 20 new tokens.
MAX_NEW_TOKENS = 20
TEMPERATURE = 0.0
CSV_HEADER = ("", "target", "output", "question")  # pandas' to_csv with its index
EXAMPLES_PER_CELL = 3
# Cells loaded before the run are kept for it up to this many context characters in all;
# beyond, they are checked up front and read again when their turn comes.
MAX_HELD_CHARS = 1 << 28

log = logging.getLogger(__name__)


class EndpointError(ValueError):
    """The server cannot be used: unreachable, key refused, malformed or rejected answers."""


# -- the server ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible server and how to ask it."""

    api_url: str  # the base URL, e.g. http://127.0.0.1:8000/v1
    model: str
    chat: bool = False  # /chat/completions instead of /completions
    system_prompt: str = ""  # chat only
    api_key: str | None = None  # sent as a bearer token when set
    max_tokens: int = MAX_NEW_TOKENS
    timeout_s: float = 600.0  # per request
    max_retries: int = 6  # after the first try, for 429, 5xx and connection errors
    backoff_s: float = 1.0  # the first wait; doubled after each retry
    max_backoff_s: float = 30.0

    def __post_init__(self):
        url = self.api_url.rstrip("/")
        if not re.match(r"https?://", url):
            raise ValueError(f"api_url {self.api_url!r} must start with http:// or https://")
        if url.endswith("/completions"):
            raise ValueError(f"api_url {self.api_url!r} names an endpoint: pass the base URL "
                             "(e.g. http://HOST:PORT/v1); /completions or /chat/completions "
                             "is added")
        if not self.model:
            raise ValueError("model is empty: pass the served model's name")
        if self.system_prompt and not self.chat:
            raise ValueError("a system prompt needs chat requests (--chat)")
        if self.max_tokens < 1 or self.max_retries < 0 or self.timeout_s <= 0:
            raise ValueError("max_tokens must be >= 1, max_retries >= 0 and timeout_s > 0")
        object.__setattr__(self, "api_url", url)

    @property
    def path(self) -> str:
        return "/chat/completions" if self.chat else "/completions"

    def body(self, prompt: str) -> dict:
        """The request body for one prompt."""
        body: dict = {"model": self.model}
        if self.chat:
            messages = [{"role": "system", "content": self.system_prompt}] * bool(
                self.system_prompt)
            body["messages"] = [*messages, {"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return {**body, "max_tokens": self.max_tokens, "temperature": TEMPERATURE}

    def generate_kwargs(self) -> dict:
        return {"max_tokens": self.max_tokens, "temperature": TEMPERATURE}


def _answer_text(data, chat: bool) -> str:
    """The generated text of a (chat) completion response, or a ValueError saying why not."""
    try:
        choice = data["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("no choices[0]." + ("message.content" if chat else "text")) from None
    if text is None and chat:  # a chat message may carry no content
        return ""
    if not isinstance(text, str):
        raise ValueError(f"the generated text is a {type(text).__name__}, not a string")
    return text


class OpenAIClient:
    """Thread-safe requests to one `Endpoint`, with bounded retries; counts what it sends."""

    def __init__(self, endpoint: Endpoint, *, sleep: Callable[[float], None] = time.sleep):
        import httpx

        self.endpoint = endpoint
        self._httpx = httpx
        headers = {"Content-Type": "application/json"}
        if endpoint.api_key:
            headers["Authorization"] = f"Bearer {endpoint.api_key}"
        self._http = httpx.Client(headers=headers, timeout=endpoint.timeout_s,
                                  limits=httpx.Limits(max_connections=None))
        self._sleep = sleep
        self._lock = threading.Lock()
        self.requests_sent = 0

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _request(self, method: str, path: str, body: dict | None = None, *,
                 retries: int | None = None):
        e = self.endpoint
        url = e.api_url + path
        retries = e.max_retries if retries is None else retries
        for attempt in range(retries + 1):
            with self._lock:
                self.requests_sent += 1
            wait = e.backoff_s * 2 ** attempt
            try:
                response = self._http.request(method, url, json=body)
            except self._httpx.TransportError as error:
                problem = f"cannot reach {url}: {type(error).__name__}: {error}"
            else:
                status = response.status_code
                if status in (401, 403):
                    raise EndpointError(
                        f"{url} refused the API key (HTTP {status}): set the key's environment "
                        f"variable (--api_key_env) to a key this server accepts")
                if status != 429 and status < 500:
                    return response
                problem = f"{url} answered HTTP {status}: {response.text[:200]!r}"
                wait = max(wait, _retry_after(response))
            if attempt == retries:
                raise EndpointError(f"{problem} (gave up after {retries + 1} tries)")
            log.info("%s; retrying in %.1f s", problem, min(wait, e.max_backoff_s))
            self._sleep(min(wait, e.max_backoff_s))
        raise AssertionError("unreachable")

    def check(self) -> None:
        """GET /models before the run: the server is there and takes the key.

        A server without /models (404, 405) passes; the first request then tells."""
        response = self._request("GET", "/models", retries=min(2, self.endpoint.max_retries))
        if response.status_code in (404, 405):
            return
        url = self.endpoint.api_url + "/models"
        if response.status_code >= 400:
            raise EndpointError(f"{url} answered HTTP {response.status_code}: "
                                f"{response.text[:200]!r}")
        try:
            data = response.json()
        except ValueError:
            raise EndpointError(f"malformed response from {url}: not JSON: "
                                f"{response.text[:200]!r}") from None
        models = [m.get("id") for m in data.get("data", []) if isinstance(m, dict)] if (
            isinstance(data, dict)) else []
        if models and self.endpoint.model not in models:
            log.warning("%s lists %s but not %r", url, ", ".join(map(str, models)),
                        self.endpoint.model)

    def complete(self, prompt: str) -> str:
        """The model's answer to one prompt, stripped (as the official runner keeps it)."""
        response = self._request("POST", self.endpoint.path, self.endpoint.body(prompt))
        url = self.endpoint.api_url + self.endpoint.path
        if response.status_code >= 400:
            raise EndpointError(f"{url} rejected the request (HTTP {response.status_code}): "
                                f"{response.text[:300]!r}")
        try:
            return _answer_text(response.json(), self.endpoint.chat).strip()
        except ValueError as error:
            raise EndpointError(f"malformed response from {url}: {error}; it starts "
                                f"{response.text[:200]!r}") from None


def _retry_after(response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", 0)))
    except ValueError:
        return 0.0


# -- files --------------------------------------------------------------------------------
def model_folder(model: str) -> str:
    """The model's results folder, relative: each '/'-part made filesystem-safe."""
    parts = [re.sub(r"[^A-Za-z0-9._+-]", "_", part) for part in model.split("/") if part]
    parts = [p if p.strip(".") else p.replace(".", "_") for p in parts]
    if not parts:
        raise ValueError(f"model name {model!r} makes no folder name")
    return "/".join(parts)


def summary_dir(results_dir: str | os.PathLike, model: str, run_name: str) -> Path:
    """Where results.json and heatmap.png of one run go (beside the official files)."""
    return Path(results_dir) / model_folder(model) / run_name


@dataclasses.dataclass(frozen=True)
class CellFiles:
    csv: Path
    config: Path
    journal: Path

    @classmethod
    def of(cls, folder: Path, task: str, length: str, run_name: str) -> CellFiles:
        stem = f"{task}_{length}_{run_name}"
        return cls(folder / f"{stem}.csv", folder / f"{stem}.json",
                   folder / f".{stem}.answers.jsonl")


def predictions_csv(samples: Sequence[dict], outputs: Sequence[str]) -> str:
    """The official predictions file: pandas' `to_csv` of (target, output, question)."""
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for i, (sample, output) in enumerate(zip(samples, outputs, strict=True)):
        writer.writerow([i, sample["target"], output, sample["question"]])
    return buffer.getvalue()


def read_predictions(path: Path) -> list[dict]:
    """Rows of a predictions CSV as {'target', 'output', 'question'}."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0][1:]) != CSV_HEADER[1:]:
        raise ValueError(f"{path} is not a predictions file (header {rows[:1]})")
    return [dict(zip(CSV_HEADER[1:], row[1:], strict=True)) for row in rows[1:]]


def _same_samples(rows: Sequence[dict], samples: Sequence[dict]) -> bool:
    return len(rows) == len(samples) and all(
        r["target"] == s["target"] and r["question"] == s["question"]
        for r, s in zip(rows, samples, strict=True))


def _read_journal(path: Path, samples: Sequence[dict]) -> dict[int, str]:
    """{sample index: output} already answered; a line cut by an interrupt is ignored."""
    if not path.exists():
        return {}
    answers = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
            i = entry["index"]
            output, target, question = entry["output"], entry["target"], entry["question"]
        except (ValueError, KeyError, TypeError):
            continue
        if not (0 <= i < len(samples) and samples[i]["target"] == target
                and samples[i]["question"] == question):
            raise ValueError(f"{path} holds answers to other samples than --data's (sample "
                             f"{i}): delete it, or write to another results dir")
        answers[i] = output
    return answers


# -- the run ------------------------------------------------------------------------------
def _load_cell(data: str, task: str, length: str, num_samples: int | None) -> list[dict]:
    records = published.load_samples(data, task, length)
    if num_samples is not None:
        records = records[:num_samples]
    if not records:
        raise ValueError(f"{data} holds no samples of {task} at {length}")
    return [{"input": str(r["input"]), "question": str(r["question"]),
             "target": str(r["target"])} for r in records]


def _answer_cell(client: OpenAIClient, samples: list[dict], files: CellFiles,
                 build_prompt: Callable[[dict], str], *, concurrency: int,
                 progress: bool, desc: str) -> list[str]:
    """Every sample's answer, asking only for those not in the journal; journals each."""
    from tqdm.auto import tqdm

    answers = _read_journal(files.journal, samples)
    pending = [i for i in range(len(samples)) if i not in answers]
    journal = None
    lock = threading.Lock()

    def record(i: int, output: str) -> None:
        nonlocal journal
        with lock:
            if journal is None:
                files.journal.parent.mkdir(parents=True, exist_ok=True)
                journal = open(files.journal, "a", encoding="utf-8")  # noqa: SIM115
            s = samples[i]
            journal.write(json.dumps({"index": i, "output": output, "target": s["target"],
                                      "question": s["question"]}, ensure_ascii=False) + "\n")
            journal.flush()
            answers[i] = output

    bar = tqdm(total=len(samples), initial=len(answers), desc=desc, disable=not progress,
               leave=False)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=concurrency)
    futures = {pool.submit(lambda i=i: client.complete(build_prompt(samples[i]))): i
               for i in pending}
    try:
        for future in concurrent.futures.as_completed(futures):
            record(futures[future], future.result())
            bar.update()
    except BaseException as error:
        # Keep every answer that came: after a failed request the ones in flight are awaited
        # (each is bounded by its timeout); after an interrupt they are not.
        pool.shutdown(wait=isinstance(error, Exception), cancel_futures=True)
        for future, i in futures.items():
            if future.done() and not future.cancelled() and future.exception() is None:
                if i not in answers:
                    record(i, future.result())
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        bar.close()
        if journal is not None:
            journal.close()
    return [answers[i] for i in range(len(samples))]


def evaluate(
    endpoint: Endpoint,
    prompts: OfficialPrompts,
    *,
    data: str,
    tasks: str | Sequence[str],
    lengths: str | Sequence[str],
    results_dir: str | os.PathLike,
    use_instruction: bool = True,
    use_examples: bool = True,
    use_post_prompt: bool = True,
    retrieve: str = "none",
    top_k: int = 5,
    concurrency: int = 8,
    num_samples: int | None = None,
    progress: bool = True,
    client: OpenAIClient | None = None,
) -> dict:
    """Answers, files and scores of every (task, length) cell (see the module docstring).

    Raises ValueError (EndpointError for the server) naming the problem; everything but the
    server is checked before the first request.
    """
    task_list, length_list = parse_tasks(tasks), parse_lengths(lengths)
    retrieval.check_retrieval(retrieve, top_k)
    if concurrency < 1:
        raise ValueError(f"concurrency={concurrency} must be >= 1")
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    if retrieve == "bm25":
        retrieval.bm25_scores(["Mary went home."], "Where is Mary?")  # bm25s and nltk are here
    config = PromptConfig(use_instruction, use_examples, use_post_prompt,
                          chat_template=endpoint.chat, system_prompt=endpoint.system_prompt)
    suffix = retrieval.run_suffix(retrieve, top_k)

    def run_name(task: str) -> str:
        return "_".join(filter(None, [config.name(prompts, task), suffix]))

    # Every cell is read before the first request: a missing task or length stops here.
    held, held_chars = {}, 0
    for task in task_list:
        for length in length_list:
            cell = _load_cell(data, task, length, num_samples)
            chars = sum(len(s["input"]) for s in cell)
            if held_chars + chars <= MAX_HELD_CHARS:
                held[task, length] = cell
                held_chars += chars

    own_client = client is None
    client = OpenAIClient(endpoint) if own_client else client
    folder = Path(results_dir) / model_folder(endpoint.model)
    results, examples, seconds, skipped = {}, {}, {}, []
    start_requests = client.requests_sent
    try:
        client.check()
        for task in task_list:
            for length in length_list:
                start = time.perf_counter()
                samples = held.pop((task, length), None) or _load_cell(data, task, length,
                                                                      num_samples)
                files = CellFiles.of(folder, task, length, run_name(task))
                outputs = _cell_outputs(client, prompts, config, task, samples, files,
                                        retrieve=retrieve, top_k=top_k,
                                        concurrency=concurrency, progress=progress,
                                        desc=f"{task} {length}")
                if outputs is None:
                    skipped.append(f"{task}_{length}")
                    outputs = [r["output"] for r in read_predictions(files.csv)]
                targets = [s["target"] for s in samples]
                questions = [s["question"] for s in samples]
                cell, cell_examples = metric.score_cell(targets, outputs, questions, task,
                                                        num_examples=EXAMPLES_PER_CELL)
                results.setdefault(task, {})[length] = cell
                examples.setdefault(task, {})[length] = cell_examples
                seconds.setdefault(task, {})[length] = round(time.perf_counter() - start, 3)
    finally:
        if own_client:
            client.close()
    out: dict = {"results": results}
    means = metric.leaderboard_means(results, length_list)
    if means:
        out["mean_qa1_qa5"] = means
    out["examples"] = examples
    out["meta"] = {
        "model": endpoint.model, "api_url": endpoint.api_url, "endpoint": endpoint.path,
        "system_prompt": endpoint.system_prompt, "run_name": run_name(task_list[0]),
        "model_folder": str(folder), "data": data, "tasks": task_list,
        "lengths": length_list, "num_samples": num_samples,
        "retrieve": retrieve, "top_k": top_k if retrieve != "none" else None,
        "generate_kwargs": endpoint.generate_kwargs(),
        "prompts": {"source": prompts.source, "sha256": prompts.sha256},
        "requests_sent": client.requests_sent - start_requests,
        "cells_skipped": skipped, "seconds": seconds,
    }
    return out


def _cell_outputs(client, prompts, config, task, samples, files, *, retrieve, top_k,
                  concurrency, progress, desc) -> list[str] | None:
    """A cell's outputs, written in the official layout; None when its CSV was complete."""
    if files.csv.exists():
        if not _same_samples(read_predictions(files.csv), samples):
            raise ValueError(f"{files.csv} holds predictions for other samples than --data's: "
                             "delete it, or write to another results dir")
        return None

    def build_prompt(sample: dict) -> str:
        context = retrieval.retrieve_context(sample["input"], sample["question"],
                                             method=retrieve, top_k=top_k)
        return config.build(prompts, task, context, sample["question"])

    outputs = _answer_cell(client, samples, files, build_prompt, concurrency=concurrency,
                           progress=progress, desc=desc)
    cell_config = {"prompt": config.official_config(prompts, task),
                   "generate_kwargs": client.endpoint.generate_kwargs(),
                   "api": {"url": client.endpoint.api_url, "endpoint": client.endpoint.path,
                           "model": client.endpoint.model},
                   "prompts_file": {"source": prompts.source, "sha256": prompts.sha256}}
    if retrieve != "none":
        cell_config["retrieval"] = {"method": retrieve, "top_k": top_k}
    files.config.parent.mkdir(parents=True, exist_ok=True)
    write_text(files.config, json.dumps(cell_config, indent=4))
    write_text(files.csv, predictions_csv(samples, outputs))
    files.journal.unlink(missing_ok=True)
    return outputs
