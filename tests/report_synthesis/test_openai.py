"""The openai backend against a local server speaking the chat-completions protocol."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mvmlm.config import ConfigError
from mvmlm.rundir import RunDir
from report_synthesis import read_corpus, template_report
from report_synthesis.backends import BackendConfig, BackendError, OpenAIOptions, Request, create_backend
from report_synthesis.prompts import PromptConfig, build_messages
from report_synthesis.run import ReportsConfig, write_reports
from report_synthesis.structured import INSTRUCTION, SCHEMA

LEFT = "toy/PAT-0001/EX-0001/L"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "- Breast: left"}]


class Script:
    """What the server answers, one action per incoming request (the last one repeats)."""

    def __init__(self, *actions):
        self.actions = list(actions)
        self.seen: list[tuple[str, dict, dict]] = []
        self.lock = threading.Lock()

    def next(self, path: str, headers: dict, body: dict):
        with self.lock:
            self.seen.append((path, headers, body))
            action = self.actions.pop(0) if len(self.actions) > 1 else self.actions[0]
            return action(body) if callable(action) else action


def ok(text: str) -> tuple:
    body = {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }
    return 200, json.dumps(body).encode(), {}


@pytest.fixture
def server():
    """``server(*actions) -> (base_url, script)``; an action is (status, body bytes, headers), ("sleep", s, then)
    or a function of the request body returning one of these."""
    started = []

    def start(*actions):
        script = Script(*actions)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                action = script.next(self.path, dict(self.headers), body)
                if action[0] == "sleep":
                    time.sleep(action[1])
                    action = action[2]
                status, payload, headers = action
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        started.append(httpd)
        return f"http://127.0.0.1:{httpd.server_port}/v1", script

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def backend(base_url: str, **options):
    opts = {"base_url": base_url, "backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 5.0, **options}
    return create_backend(BackendConfig(name="openai", model="served-llama", openai=OpenAIOptions(**opts)))


def requests(facts, n=1):
    return [Request(f"{LEFT}#{v}", MESSAGES, seed=100 + v, facts=facts[LEFT]) for v in range(n)]


def test_success_sends_a_chat_completion_request_with_the_key_from_the_environment(server, facts, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sekret")
    url, script = server(ok("FINDINGS: fine"))
    generations = backend(url, api_key_env="TEST_LLM_KEY", concurrency=3).generate(requests(facts, 5))
    assert [(g.id, g.text, g.finish_reason, g.error) for g in generations] == [
        (f"{LEFT}#{v}", "FINDINGS: fine", "stop", None) for v in range(5)
    ]
    path, headers, body = script.seen[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sekret"
    assert body["model"] == "served-llama" and body["messages"] == MESSAGES and body["max_tokens"] == 320
    assert sorted(b["seed"] for _, _, b in script.seen) == [100, 101, 102, 103, 104]


def test_malformed_body_is_recorded_as_an_error_and_not_retried(server, facts):
    url, script = server((200, b'{"choices": []}', {}))
    [generation] = backend(url).generate(requests(facts))
    assert generation.text == "" and generation.error.startswith("malformed response")
    assert len(script.seen) == 1


def test_429_is_retried_with_backoff_then_succeeds(server, facts):
    url, script = server((429, b"slow down", {"Retry-After": "0"}), (503, b"busy", {}), ok("done"))
    start = time.perf_counter()
    [generation] = backend(url, max_retries=3).generate(requests(facts))
    assert (generation.text, generation.error) == ("done", None)
    assert len(script.seen) == 3
    assert time.perf_counter() - start >= 0.01  # two backoff sleeps of >= 0.005 s each


def test_other_client_errors_are_not_retried(server, facts):
    url, script = server((400, b"bad model", {}))
    [generation] = backend(url).generate(requests(facts))
    assert generation.error == "HTTP 400: bad model" and len(script.seen) == 1


def test_timeouts_are_retried_then_reported(server, facts):
    url, script = server(("sleep", 0.6, ok("too late")))
    [generation] = backend(url, timeout_s=0.2, max_retries=1).generate(requests(facts))
    assert generation.text == "" and "timed out" in generation.error and "2 attempts" in generation.error
    assert len(script.seen) == 2


def test_missing_api_key_variable_is_a_config_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR"):
        backend("http://127.0.0.1:9/v1", api_key_env="NO_SUCH_KEY_VAR")


def test_pipeline_stops_when_the_server_answers_nothing(server, table_path, tmp_path):
    url, _ = server((500, b"down", {}))
    cfg = ReportsConfig(table=str(table_path), out=str(tmp_path / "corpus"), progress=False)
    cfg.backend = BackendConfig(name="openai", model="m", openai=OpenAIOptions(base_url=url, max_retries=0))
    with pytest.raises(BackendError, match="HTTP 500"):
        write_reports(cfg, RunDir(tmp_path / "corpus"))
    assert not list((tmp_path / "corpus").glob("parts/part-*"))


def structured_answer(report: str, stated: dict) -> tuple:
    return ok(json.dumps({"report": report, "stated_facts": stated}))


def test_structured_option_requests_the_schema_and_returns_report_and_stated_facts(server, facts):
    stated = {**dict.fromkeys(SCHEMA["properties"]["stated_facts"]["required"]), "laterality": "L", "birads": 4}
    url, script = server(structured_answer("FINDINGS: left breast. BI-RADS 4.", stated))
    [generation] = backend(url, structured=True).generate(requests(facts))
    assert (generation.text, generation.stated_facts, generation.error) == (
        "FINDINGS: left breast. BI-RADS 4.",
        stated,
        None,
    )
    body = script.seen[0][2]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA
    assert body["messages"][-1]["content"].endswith(INSTRUCTION) and body["messages"][0] == MESSAGES[0]
    url, script = server(ok("FINDINGS: left breast, no JSON here"))
    [generation] = backend(url, structured=True).generate(requests(facts))
    assert generation.error.startswith("structured output:") and generation.stated_facts is None
    url, script = server(ok("plain"))
    backend(url).generate(requests(facts))
    assert "response_format" not in script.seen[0][2]


def test_structured_pipeline_rejects_stated_facts_that_disagree_with_the_table(server, facts, table_path, tmp_path):
    """Every answer's report is the template's (faithful); the first answer for LEFT claims BI-RADS 5 in its
    stated facts, the first for RIGHT claims a mass the table does not have: both are retried, then accepted."""
    prompt = PromptConfig()
    by_prompt = {build_messages(f, prompt)[-1]["content"]: f for f in facts.values()}
    tampered: dict[str, str] = {LEFT: "birads", "toy/PAT-0001/EX-0001/R": "mass"}

    def answer(body):
        item = by_prompt[body["messages"][-1]["content"].removesuffix(f"\n\n{INSTRUCTION}")]
        stated = {**dict.fromkeys(SCHEMA["properties"]["stated_facts"]["required"]), **item.reportable()}
        key = tampered.pop(item.breast_id, None)
        if key == "birads":
            stated["birads"] = 5
        elif key == "mass":
            stated["mass"] = True
        return structured_answer(template_report(item, body["seed"]), stated)

    url, _ = server(answer)
    cfg = ReportsConfig(table=str(table_path), out=str(tmp_path / "corpus"), progress=False)
    cfg.backend = BackendConfig(name="openai", model="m", openai=OpenAIOptions(base_url=url, structured=True))
    summary = write_reports(cfg, RunDir(tmp_path / "corpus"))
    assert summary["rejections"] == {"stated facts": 2}
    assert summary["accepted_after_retry"] == 2 and summary["accepted_first_try"] == 4
    corpus = read_corpus(tmp_path / "corpus")
    assert set(corpus.source) == {"openai"} and not corpus.report.str.contains("stated_facts").any()
