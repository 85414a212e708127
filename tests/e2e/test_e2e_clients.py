"""Real clients against a real `swapyard serve` process: the official `openai` Python client and
huggingface_hub's `InferenceClient`, for every route they cover.

Greedy outputs are checked against the adapter's own greedy tokens (MultiAdapterModel.generate of the row
alone), embeddings against the server's float answer and the model's pooled hidden states, errors as the
clients' own exception classes with the right status (429 with Retry-After through --rate-limit)."""

from __future__ import annotations

import base64
import shutil

import httpx
import huggingface_hub.constants
import numpy as np
import openai
import pytest
import torch
from huggingface_hub import InferenceClient
from huggingface_hub.errors import UnknownError, ValidationError
from serve_helpers import make_causal_adapters, prompt, reference_tokens, save_base
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters_core.multi import MultiAdapterModel

pytestmark = pytest.mark.e2e
NEW = 8
USER, ADMIN = "user-key", "admin-key"
TEMPLATE = "{% for m in messages %}w1 {{ m['content'] }} w2 {% endfor %}w3"
MESSAGES = [{"role": "user", "content": "w10 w11 w12"}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, server_factory):
    root = tmp_path_factory.mktemp("e2e-clients")
    base = save_base("llama", root / "base")
    adapters = make_causal_adapters(base, root / "adapters", names=["lora4", "ia3"])
    templated = root / "adapters" / "chatty"
    shutil.copytree(adapters["lora4"], templated)
    (templated / "chat_template.jinja").write_text(TEMPLATE)
    url = server_factory(
        [
            "--base-model", str(base), "--adapter-dir", str(root / "adapters"), "--served-model-name", "tiny",
            "--api-key", USER, "--admin-key", ADMIN, "--rate-limit", "3000/day",
            "--max-input-tokens", "32", "--max-total-tokens", "200", "--max-new-tokens-limit", "150",
        ]
    )  # fmt: skip
    multi = MultiAdapterModel(AutoModelForCausalLM.from_pretrained(base))
    for name, path in adapters.items():
        multi.add(name, str(path))
    return url, multi, AutoTokenizer.from_pretrained(base)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub refuses every request in offline mode, a local server's too: the tests run offline
    (HF_HUB_OFFLINE=1, no Hub downloads), so its clients get the flag off while they talk to 127.0.0.1."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def _client(url: str, key: str = USER) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def _greedy_text(multi, tok, text: str, adapter: str | None) -> str:
    return tok.decode(reference_tokens(multi, tok, text, adapter, NEW), skip_special_tokens=True)


def test_openai_models_completions_and_streams(setup) -> None:
    url, multi, tok = setup
    client = _client(url)
    assert {m.id for m in client.models.list()} == {"tiny", "lora4", "ia3", "chatty"}
    for model, adapter in (("lora4", "lora4"), ("ia3", "ia3"), ("tiny", None)):
        text = prompt(40 + len(model))
        want = _greedy_text(multi, tok, text, adapter)
        done = client.completions.create(model=model, prompt=text, max_tokens=NEW, temperature=0)
        assert done.choices[0].text == want, model
        assert done.usage is not None and done.usage.prompt_tokens == 5
        chunks = list(
            client.completions.create(
                model=model,
                prompt=text,
                max_tokens=NEW,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert "".join(c.choices[0].text for c in chunks if c.choices) == want
        assert (
            chunks[-1].usage is not None
            and chunks[-1].usage.completion_tokens == done.usage.completion_tokens
        )


def test_openai_chat_with_the_adapters_template(setup) -> None:
    url, _, _ = setup
    client = _client(url)
    ids = httpx.post(
        f"{url}/tokenize",
        json={"model": "chatty", "messages": MESSAGES},
        headers={"Authorization": f"Bearer {USER}"},
    ).json()["tokens"]
    rendered = httpx.post(
        f"{url}/detokenize", json={"tokens": ids}, headers={"Authorization": f"Bearer {USER}"}
    ).json()["prompt"]
    assert rendered == "w1 w10 w11 w12 w2 w3"  # the adapter's template, not the base's
    chat = client.chat.completions.create(model="chatty", messages=MESSAGES, max_tokens=NEW, temperature=0)
    plain = client.completions.create(model="chatty", prompt=rendered, max_tokens=NEW, temperature=0)
    assert chat.choices[0].message.content == plain.choices[0].text
    assert chat.choices[0].message.role == "assistant" and chat.usage.prompt_tokens == len(ids)
    stream = client.chat.completions.create(
        model="chatty", messages=MESSAGES, max_tokens=NEW, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == plain.choices[0].text


def test_openai_embeddings(setup) -> None:
    url, multi, tok = setup
    client = _client(url)
    texts = [prompt(50), prompt(51, length=9)]
    floats = client.embeddings.create(model="lora4", input=texts, encoding_format="float")
    b64 = client.embeddings.create(model="lora4", input=texts, encoding_format="base64")
    assert [d.index for d in floats.data] == [0, 1] and floats.usage.prompt_tokens == 14
    want = multi.embed([tok(t)["input_ids"] for t in texts], ["lora4", "lora4"])  # last-token pooling
    for f, b, w in zip(floats.data, b64.data, want):
        assert np.allclose(f.embedding, w.numpy(), atol=1e-4)
        assert isinstance(b.embedding, str)  # asked for explicitly, the client hands base64 back as sent
        assert np.allclose(np.frombuffer(base64.b64decode(b.embedding), dtype="<f4"), f.embedding, atol=1e-6)


def test_openai_errors_are_exceptions_with_their_status(setup) -> None:
    url, _, _ = setup
    client = _client(url)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.completions.create(model="nope", prompt="w1", max_tokens=2)
    assert unknown.value.status_code == 404
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model="lora4", prompt="w1", max_tokens=10_000)
    with pytest.raises(openai.AuthenticationError):
        _client(url, key="wrong").models.list()
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="w1")
    # --rate-limit 3000/day: the admin key's own budget, spent by two large requests.
    admin = _client(url, key=ADMIN)
    many = [prompt(60 + i, length=30) for i in range(64)]  # 1920 tokens
    admin.embeddings.create(model="lora4", input=many)
    with pytest.raises(openai.RateLimitError) as limited:
        admin.embeddings.create(model="lora4", input=many)
    assert limited.value.status_code == 429 and int(limited.value.response.headers["retry-after"]) > 60
    client.completions.create(model="lora4", prompt="w1", max_tokens=2)  # another key: its own budget


def test_inference_client_text_generation(setup, online) -> None:
    url, multi, tok = setup
    client = InferenceClient(model=url, api_key=USER)
    text = prompt(70)
    want = reference_tokens(multi, tok, text, "lora4", NEW)
    plain = client.text_generation(text, adapter_id="lora4", max_new_tokens=NEW)
    assert plain == tok.decode(want, skip_special_tokens=True)
    details = client.text_generation(text, adapter_id="lora4", max_new_tokens=NEW, details=True)
    assert [t.id for t in details.details.tokens] == want
    assert details.details.generated_tokens == len(want)
    streamed = list(
        client.text_generation(text, adapter_id="lora4", max_new_tokens=NEW, stream=True, details=True)
    )
    assert [s.token.id for s in streamed] == want and streamed[-1].generated_text == plain
    assert "".join(client.text_generation(text, adapter_id="lora4", max_new_tokens=NEW, stream=True)) == plain
    with pytest.raises(UnknownError) as unknown:
        client.text_generation(text, adapter_id="nope", max_new_tokens=NEW)
    assert "nope" in str(unknown.value)
    with pytest.raises(ValidationError):
        client.text_generation(text, max_new_tokens=10_000)


def test_inference_client_chat_and_feature_extraction(setup, online) -> None:
    url, multi, tok = setup
    chat = InferenceClient(base_url=url, api_key=USER)
    plain = _client(url).chat.completions.create(
        model="ia3", messages=MESSAGES, max_tokens=NEW, temperature=0
    )
    out = chat.chat_completion(MESSAGES, model="ia3", max_tokens=NEW, temperature=0)
    assert out.choices[0].message.content == plain.choices[0].message.content
    streamed = chat.chat_completion(MESSAGES, model="ia3", max_tokens=NEW, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == plain.choices[0].message.content
    features = InferenceClient(model=f"{url}/embed", api_key=USER).feature_extraction(prompt(80))
    want = multi.embed([tok(prompt(80))["input_ids"]], [None])[0]
    assert features.shape == (1, want.shape[0])
    assert np.allclose(features[0], (want / want.norm()).numpy(), atol=1e-5)  # TEI normalizes by default


def test_prompt_logprobs_through_both_clients(setup, online) -> None:
    """OpenAI `echo` + `logprobs` (streamed too) and TGI `decoder_input_details` through the real clients: every
    prompt token after the first scored by the model's own log-softmax under the adapter (the first has none)."""
    url, multi, tok = setup
    text = prompt(80)
    ids = tok(text)["input_ids"]
    with torch.no_grad():
        logits = multi(input_ids=torch.tensor([ids]), adapter_names=["lora4"]).logits[0]  # (L, V)
    want = torch.log_softmax(logits.float(), -1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    done = _client(url).completions.create(
        model="lora4", prompt=text, max_tokens=NEW, temperature=0, echo=True, logprobs=1
    )
    scored = done.choices[0].logprobs
    assert scored is not None and scored.token_logprobs is not None
    assert done.choices[0].text.startswith(text) and scored.token_logprobs[0] is None
    assert np.allclose(scored.token_logprobs[1 : len(ids)], want.numpy(), atol=1e-4)
    chunks = list(
        _client(url).completions.create(
            model="lora4", prompt=text, max_tokens=NEW, temperature=0, echo=True, logprobs=1, stream=True
        )
    )
    first = chunks[0].choices[0]  # streamed, the prompt and its logprobs come first (vLLM's shape)
    assert first.text == text and first.logprobs is not None and first.logprobs.token_logprobs is not None
    assert first.logprobs.token_logprobs[0] is None and len(first.logprobs.token_logprobs) == len(ids)
    assert np.allclose(first.logprobs.token_logprobs[1:], want.numpy(), atol=1e-4)
    assert "".join(c.choices[0].text for c in chunks) == done.choices[0].text
    details = InferenceClient(model=url, api_key=USER).text_generation(
        text, adapter_id="lora4", max_new_tokens=NEW, details=True, decoder_input_details=True
    )
    prefill = details.details.prefill
    assert [t.id for t in prefill] == ids and prefill[0].logprob is None
    assert np.allclose([t.logprob for t in prefill[1:]], want.numpy(), atol=1e-4)
