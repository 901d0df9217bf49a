"""The vllm backend without vLLM: the missing-extra error, and request construction through a stand-in module."""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

import pytest

from mvmlm.config import ConfigError
from mvmlm.rundir import RunDir
from report_synthesis import read_corpus, template_report
from report_synthesis.backends import (
    BackendConfig,
    BackendUnavailable,
    SamplingConfig,
    VllmOptions,
    create_backend,
    derive_seed,
)
from report_synthesis.backends.vllm import llm_kwargs, sampling_kwargs
from report_synthesis.facts import BreastFacts
from report_synthesis.run import ReportsConfig, write_reports

CFG = BackendConfig(
    name="vllm",
    model="meta-llama/Meta-Llama-3-8B-Instruct",
    revision="abc123",
    sampling=SamplingConfig(max_tokens=200, temperature=0.6, top_p=0.9, stop=["</report>"]),
    vllm=VllmOptions(tensor_parallel_size=2, max_model_len=2048, chat_template_kwargs={"enable_thinking": False}),
)


def test_missing_vllm_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(BackendUnavailable, match=r'pip install -e "\.\[llm\]"'):
        create_backend(CFG)


def test_llm_and_sampling_arguments_are_explicit():
    assert llm_kwargs(CFG) == {
        "model": "meta-llama/Meta-Llama-3-8B-Instruct",
        "revision": "abc123",
        "tensor_parallel_size": 2,
        "max_model_len": 2048,
        "gpu_memory_utilization": 0.9,
        "dtype": "auto",
        "trust_remote_code": False,
        "generation_config": "vllm",
    }
    assert sampling_kwargs(CFG.sampling, seed=7) == {
        "n": 1,
        "max_tokens": 200,
        "temperature": 0.6,
        "top_p": 0.9,
        "stop": ["</report>"],
        "seed": 7,
    }
    assert sampling_kwargs(SamplingConfig(), seed=1)["stop"] is None
    with pytest.raises(ConfigError, match="backend.model"):
        llm_kwargs(BackendConfig(name="vllm"))


class FakeVllm(ModuleType):
    """Records what the backend hands to ``vllm.LLM`` and ``LLM.chat``; answers with the template's report."""

    def __init__(self, facts_by_content: dict[str, BreastFacts]):
        super().__init__("vllm")
        self.init_kwargs, self.calls = None, []
        fake = self

        class LLM:
            def __init__(self, **kwargs):
                fake.init_kwargs = kwargs

            def chat(self, messages, sampling_params, **kwargs):
                fake.calls.append((messages, sampling_params, kwargs))
                texts = [template_report(facts_by_content[m[-1]["content"]], 0) for m in messages]
                return [SimpleNamespace(outputs=[SimpleNamespace(text=t, finish_reason="stop")]) for t in texts]

        self.LLM = LLM
        self.SamplingParams = lambda **kwargs: SimpleNamespace(**kwargs)


def test_pipeline_through_vllm_builds_chat_messages_and_a_seed_per_request(monkeypatch, table_path, tmp_path, facts):
    from report_synthesis.prompts import PromptConfig, build_messages

    by_content = {build_messages(f, PromptConfig())[-1]["content"]: f for f in facts.values()}
    fake = FakeVllm(by_content)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    cfg = ReportsConfig(
        table=str(table_path),
        out=str(tmp_path / "corpus"),
        variants=2,
        chunk_size=5,
        seed=3,
        progress=False,
        backend=CFG,
    )
    summary = write_reports(cfg, RunDir(tmp_path / "corpus"))
    assert fake.init_kwargs == llm_kwargs(CFG)
    assert [len(messages) for messages, _, _ in fake.calls] == [5, 5, 2]
    messages, params, kwargs = fake.calls[0]
    assert kwargs == {"use_tqdm": False, "chat_template_kwargs": {"enable_thinking": False}}
    assert [m["role"] for m in messages[0]] == ["system", "user"]
    assert {p.max_tokens for _, ps, _ in fake.calls for p in ps} == {200}
    corpus = read_corpus(tmp_path / "corpus")
    seeds = [p.seed for _, ps, _ in fake.calls for p in ps]
    assert seeds == [derive_seed(3, job_id, 0) for job_id in corpus.id]
    assert len(set(seeds)) == 12
    assert summary["accepted_first_try"] == 12 and set(corpus.source) == {"vllm"} and (corpus.attempts == 1).all()


def test_structured_option_sends_a_json_schema_and_unpacks_the_answer(monkeypatch, facts):
    import json

    from report_synthesis.backends import Request
    from report_synthesis.structured import INSTRUCTION, SCHEMA

    left = facts["toy/PAT-0001/EX-0001/L"]
    answer = json.dumps({"report": template_report(left, 0), "stated_facts": left.reportable()})
    fake = FakeVllm({})
    fake.LLM.chat = lambda self, messages, params, **kw: (
        fake.calls.append((messages, params, kw))
        or [SimpleNamespace(outputs=[SimpleNamespace(text=answer, finish_reason="stop")])]
    )
    sampling_module = ModuleType("vllm.sampling_params")
    sampling_module.StructuredOutputsParams = lambda **kwargs: SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling_module)
    cfg = BackendConfig(name="vllm", model="m", vllm=VllmOptions(structured=True))
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    [generation] = create_backend(cfg).generate([Request("x#0", messages, 5, left)])
    assert generation.text == template_report(left, 0) and generation.stated_facts == left.reportable()
    [(sent, [params], _)] = fake.calls
    assert params.structured_outputs.json == SCHEMA and params.seed == 5
    assert sent[0][-1]["content"] == f"u\n\n{INSTRUCTION}" and messages[-1]["content"] == "u"
    assert "structured_outputs" not in sampling_kwargs(SamplingConfig(), seed=1)
