"""ml.deploy.serving: a registry version's generator (a local checkpoint, a provider model) and
the ModelCache of the serving API, over real tiny chat models registered in a real MLflow
registry (SQLite) and a stand-in OpenAI server on loopback."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ml.deploy.serving import ModelCache, ModelLoadError, generator_for_version
from ml.evaluation.generation import LocalGenerator, ProviderGenerator
from ml.registry import Registry, VersionNotFound
from tests.llm.fake_servers import FakeOpenAIServer, ok
from tests.ml.training.tiny import TINY_CONVERSATIONS, make_tiny_model

KEY_ENV = "LEARNLOOP_TEST_SERVING_KEY"
PROMPT = TINY_CONVERSATIONS[0][:-1]  # ends with the user's question


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"a": make_tiny_model(root / "a", seed=0), "b": make_tiny_model(root / "b", seed=1)}


@pytest.fixture(scope="module")
def registry(tmp_path_factory, models) -> Registry:
    """v1: model a (a folder), v2: model b (a file:// URI), v3: a provider model, v4: a folder
    that does not exist."""
    root = tmp_path_factory.mktemp("mlflow")
    reg = Registry(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", "tiny-assistant")
    assert reg.register_version(str(models["a"]), None, {}) == "1"
    assert reg.register_version(models["b"].as_uri(), None, {}) == "2"
    assert reg.register_version("openai:ft:gpt-test:shop", None, {
        "api_key_env": KEY_ENV, "provider_base_url": "http://127.0.0.1:9/v1"}) == "3"
    assert reg.register_version(str(root / "gone"), None, {}) == "4"
    return reg


class Counting:
    """The default loader, counting its calls per version (and slowed a little, so concurrent
    first requests really overlap the load)."""

    def __init__(self, wrap=None):
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()
        self.wrap = wrap

    def __call__(self, info, **kw):
        with self.lock:
            self.calls[info.version] = self.calls.get(info.version, 0) + 1
        time.sleep(0.2)
        gen = generator_for_version(info, **kw)
        return self.wrap(gen) if self.wrap else gen


def test_generator_for_version_local_folder_uri_and_missing(registry, models):
    a = generator_for_version(registry.version("1"), max_new_tokens=8, batch_size=2)
    b = generator_for_version(registry.version("2"), max_new_tokens=8)
    assert isinstance(a, LocalGenerator) and isinstance(b, LocalGenerator)
    assert (a.max_new_tokens, a.batch_size) == (8, 2)
    with pytest.raises(ModelLoadError) as err:
        generator_for_version(registry.version("4"), model_name="tiny-assistant")
    msg = str(err.value)
    assert "tiny-assistant v4" in msg and str(Path(registry.version("4").source)) in msg
    assert "does not exist" in msg and err.value.version == "4"
    not_a_model = models["a"].parent / "empty"
    not_a_model.mkdir()

    class Info:
        version, source, tags = "9", str(not_a_model), {}

    with pytest.raises(ModelLoadError, match=r"model v9 .*config.json missing"):
        generator_for_version(Info())


def test_reply_is_the_generators_greedy_reply_and_tokens_are_capped(registry, models):
    cache = ModelCache(registry, max_new_tokens=12)
    got = cache.reply("1", PROMPT)
    want = LocalGenerator(models["a"], max_new_tokens=12).generate([PROMPT])[0]
    assert (got.text, got.new_tokens, got.stopped) == (want.text, want.new_tokens, want.stopped)
    assert got.prompt_tokens == want.prompt_tokens > 0
    assert cache.reply("1", PROMPT, max_new_tokens=500).new_tokens <= 12  # capped at the cache's
    short = cache.reply("1", PROMPT, max_new_tokens=2)
    assert short.new_tokens <= 2
    assert cache.loads == {"1": 1}
    with pytest.raises(ValueError, match="role"):
        cache.reply("1", [{"role": "robot", "content": "hi"}])
    with pytest.raises(ValueError, match="assistant"):
        cache.reply("1", TINY_CONVERSATIONS[0])  # ends with the reply itself


def test_concurrent_first_requests_load_the_version_once(registry):
    loader = Counting()
    cache = ModelCache(registry, max_new_tokens=6, loader=loader)
    start = threading.Barrier(6)
    out: list = []

    def ask():
        start.wait()
        out.append(cache.reply("1", PROMPT))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(out) == 6 and len({g.text for g in out}) == 1
    assert loader.calls == {"1": 1} and cache.loads == {"1": 1}
    assert cache.generator("1") is cache.generator("1")


def test_least_recently_used_version_is_evicted(registry):
    loader = Counting()
    cache = ModelCache(registry, max_models=2, max_new_tokens=4, loader=loader)
    for v in ("1", "2", "1", "3", "1", "2"):
        cache.generator(v)
    # 1, 2 loaded; 1 used; 3 evicts 2; 1 used; 2 evicts 3
    assert loader.calls == {"1": 1, "2": 2, "3": 1}
    assert cache.loaded() == ["1", "2"]
    assert cache.loads == loader.calls


def test_unknown_version_and_unloadable_version_name_themselves(registry):
    cache = ModelCache(registry)
    with pytest.raises(VersionNotFound, match="no version 99"):
        cache.reply("99", PROMPT)
    with pytest.raises(ModelLoadError, match="v4 .*gone"):
        cache.reply("4", PROMPT)
    assert cache.loads == {}
    with pytest.raises(ValueError, match="max_models"):
        ModelCache(registry, max_models=0)


class Recording:
    """A real LocalGenerator that records the size of every batch and fails on 'boom'."""

    def __init__(self, gen):
        self.gen, self.batches = gen, []

    def generate(self, prompts, *, max_new_tokens=None):
        self.batches.append(len(prompts))
        if any("boom" in m["content"] for p in prompts for m in p):
            raise RuntimeError("boom in the prompt")
        return self.gen.generate(prompts, max_new_tokens=max_new_tokens)


def _wait_for(cond, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_waiting_requests_are_generated_as_one_batch(registry):
    cache = ModelCache(registry, max_new_tokens=6, batch_size=3, loader=Counting(Recording))
    alone = cache.reply("1", PROMPT)
    entry = cache._entry("1")
    entry.generator.batches.clear()
    out: dict[int, object] = {}
    with entry.lock:  # the model is busy: the requests queue up behind it
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, cache.reply("1", PROMPT)))
                   for i in range(4)]
        for t in threads:
            t.start()
        _wait_for(lambda: len(entry.queue) == 4, "4 queued requests")
    for t in threads:
        t.join(timeout=60)
    # the first to get the model took itself and two more (batch_size 3); the last went alone
    assert sorted(entry.generator.batches) == [1, 3], entry.generator.batches
    assert all(g.text == alone.text for g in out.values()) and len(out) == 4
    assert entry.queue == []


def test_a_failing_request_in_a_batch_fails_alone(registry):
    cache = ModelCache(registry, max_new_tokens=4, batch_size=4, loader=Counting(Recording))
    entry = cache._entry("1")
    results: dict[str, object] = {}

    def ask(name, prompt):
        try:
            results[name] = cache.reply("1", prompt)
        except RuntimeError as exc:
            results[name] = exc

    bad = [{"role": "user", "content": "boom"}]
    with entry.lock:
        threads = [threading.Thread(target=ask, args=(n, p))
                   for n, p in (("good1", PROMPT), ("bad", bad), ("good2", PROMPT))]
        for t in threads:
            t.start()
        _wait_for(lambda: len(entry.queue) == 3, "3 queued requests")
    for t in threads:
        t.join(timeout=60)
    assert isinstance(results["bad"], RuntimeError) and "boom" in str(results["bad"])
    assert results["good1"].text == results["good2"].text  # both answered despite the failure
    assert entry.generator.batches[0] == 3 and sorted(entry.generator.batches[1:]) == [1, 1, 1]


def test_provider_version_is_served_through_ml_llm(registry, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-serving-0123456789abcdef")
    with FakeOpenAIServer() as server:
        server.push(ok("Pro costs 129 EUR a month.", prompt_tokens=11, completion_tokens=7))

        def loader(info, **kw):  # the version's tag points at port 9: aim it at the stand-in
            info = type(info)(**{**info.to_dict(), "tags": {
                **info.tags, "provider_base_url": server.base_url}})
            return generator_for_version(info, **kw)

        cache = ModelCache(registry, max_new_tokens=20, loader=loader)
        assert isinstance(cache.generator("3"), ProviderGenerator)
        got = cache.reply("3", PROMPT, max_new_tokens=9)
        assert (got.text, got.prompt_tokens, got.new_tokens) == ("Pro costs 129 EUR a month.", 11,
                                                                  7)
        body = server.requests[0].body
        assert body["model"] == "ft:gpt-test:shop"
        assert body["messages"][-1] == PROMPT[-1]
        assert 9 in (body.get("max_tokens"), body.get("max_completion_tokens"))
