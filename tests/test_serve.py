"""`alignforge serve`: the real server (uvicorn on 127.0.0.1) driven by the official `openai` client."""

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from serve_helpers import running_server

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from alignforge.models.load import save_model
    from alignforge.models.tiny import tiny_random_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("serve")
    tok = tiny_tokenizer("llama")
    model = tiny_random_model("llama", len(tok), seed=3, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id)
    # At the default init scale a random model's logits are almost flat and greedy repeats one
    # token whatever the prompt; larger weights make answers varied and prompt-dependent.
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2, generator=g)
    save_model(model, tok, root / "policy" / "model")
    return root / "policy"


@pytest.fixture(scope="module")
def running(checkpoint):
    """(server, base_url): the app under uvicorn in a thread, on a socket bound to a free port."""
    from alignforge.config import load_config, ServeConfig

    torch.set_num_threads(1)
    # A 50 ms window: generous so concurrent requests from 8 client threads land in few batches
    # even on a loaded 2-core machine.
    cfg = load_config(ServeConfig, None, [f"model.init={checkpoint}", "serve.model_name=tiny", "serve.batch_window_ms=50",
                                          "serve.max_tokens=16", "serve.log_level=warning", "runtime.device=cpu"])
    with running_server(cfg) as (server, base_url):
        yield server, base_url


@pytest.fixture()
def client(running):
    return openai.OpenAI(base_url=running[1], api_key="x", max_retries=0, timeout=60)


MSG = [{"role": "user", "content": "Where does the heron live?"}]


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client.models.retrieve("tiny").owned_by == "alignforge"


def test_chat_completion_matches_the_engine_and_reports_usage(client, running):
    from alignforge.generation import SamplingParams, generate_text

    server, _ = running
    r = client.chat.completions.create(model="tiny", messages=MSG, temperature=0, max_tokens=12)
    assert r.object == "chat.completion" and r.model == "tiny" and len(r.choices) == 1
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    # The server answers exactly what the engine gives for the training-time chat encoding.
    direct = generate_text(server.engine.model, server.tokenizer, [MSG], SamplingParams(temperature=0, max_new_tokens=12))
    assert choice.message.content == direct.texts[0]
    prompt_len = len(direct.prompt_ids[0][direct.prompt_mask[0]])
    assert r.usage.prompt_tokens == prompt_len
    assert r.usage.completion_tokens == direct.lengths[0]
    assert r.usage.total_tokens == prompt_len + direct.lengths[0]
    assert choice.finish_reason == direct.finish_reason[0]


def test_completion_endpoint_continues_raw_text(client, running):
    server, _ = running
    r = client.completions.create(model="tiny", prompt="The quick brown", temperature=0, max_tokens=8)
    assert r.object == "text_completion" and len(r.choices) == 1
    assert r.usage.prompt_tokens == len(server.tokenizer("The quick brown", add_special_tokens=False)["input_ids"])
    assert r.choices[0].finish_reason == "length" or r.usage.completion_tokens < 8
    # Two prompts in one request → one choice each, in order; each equals its single-prompt answer.
    both = client.completions.create(model="tiny", prompt=["The quick brown", "Numbers:"], temperature=0, max_tokens=8)
    alone = client.completions.create(model="tiny", prompt="Numbers:", temperature=0, max_tokens=8)
    assert [c.index for c in both.choices] == [0, 1]
    assert both.choices[0].text == r.choices[0].text and both.choices[1].text == alone.choices[0].text


def test_streaming_concatenates_to_the_greedy_answer(client):
    full = client.chat.completions.create(model="tiny", messages=MSG, temperature=0, max_tokens=16)
    stream = client.chat.completions.create(model="tiny", messages=MSG, temperature=0, max_tokens=16, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1  # really streamed in pieces, not one blob
    assert "".join(pieces) == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].usage.total_tokens == full.usage.total_tokens
    # Text completions stream too.
    done = client.completions.create(model="tiny", prompt="Numbers:", temperature=0, max_tokens=10)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="Numbers:", temperature=0, max_tokens=10, stream=True) if c.choices)
    assert streamed == done.choices[0].text


def test_raw_sse_wire_format(running):
    _, base = running
    req = urllib.request.Request(f"{base}/chat/completions", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"model": "tiny", "messages": MSG, "max_tokens": 4,
                                                  "temperature": 0, "stream": True}).encode())
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = resp.read().decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for e in events[:-2]:
        assert e.startswith("data: ")
        assert json.loads(e[len("data: "):])["object"] == "chat.completion.chunk"


def test_stop_strings_cut_the_text(client):
    base = client.chat.completions.create(model="tiny", messages=MSG, temperature=0, max_tokens=16)
    text = base.choices[0].message.content
    assert len(text) >= 6, "the tiny model's greedy answer is too short to pick a stop string from"
    stop = text[4:6]
    assert text.find(stop) == 4, f"pick another slice: {text!r}"
    cut = client.chat.completions.create(model="tiny", messages=MSG, temperature=0, max_tokens=16, stop=stop)
    assert cut.choices[0].message.content == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    both = client.chat.completions.create(model="tiny", messages=MSG, temperature=0, max_tokens=16,
                                          stop=["\u2603 never", stop])
    assert both.choices[0].message.content == text[: text.find(stop)]


def test_temperature_zero_deterministic_seed_reproducible_and_n(client):
    a = client.chat.completions.create(model="tiny", messages=MSG, temperature=0, max_tokens=12)
    b = client.chat.completions.create(model="tiny", messages=MSG, temperature=0, max_tokens=12)
    assert a.choices[0].message.content == b.choices[0].message.content
    many = client.chat.completions.create(model="tiny", messages=MSG, temperature=1.0, top_p=0.9, max_tokens=12,
                                          n=4, seed=7)
    again = client.chat.completions.create(model="tiny", messages=MSG, temperature=1.0, top_p=0.9, max_tokens=12,
                                           n=4, seed=7)
    texts = [c.message.content for c in many.choices]
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert texts == [c.message.content for c in again.choices]  # same seed, same answers
    assert len(set(texts)) > 1  # a random tiny model at T=1 does not repeat itself 4 times
    assert 4 <= many.usage.completion_tokens <= 4 * 12  # all four answers are counted
    assert many.usage.prompt_tokens == a.usage.prompt_tokens  # the prompt is counted once, as OpenAI does


def test_concurrent_requests_are_batched(client, running):
    server, _ = running
    prompts = [f"question number {i}?" for i in range(8)]
    calls0 = server.engine.generate_calls

    def ask(p):
        return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": p}],
                                              temperature=0, max_tokens=8).choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, prompts))
    calls = server.engine.generate_calls - calls0
    assert len(answers) == 8 and all(isinstance(a, str) for a in answers)
    assert calls < 8, f"8 concurrent requests took {calls} generate calls: not batched"
    # Batching never changes a greedy answer: each equals the answer to the same request alone.
    assert ask(prompts[5]) == answers[5]


def test_bad_requests_are_4xx_with_clear_messages_and_the_server_stays_up(client, running):
    with pytest.raises(openai.NotFoundError, match="model 'gpt-4' does not exist"):
        client.chat.completions.create(model="gpt-4", messages=MSG)
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\]\.role.*got \"wizard\""):
        client.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="'messages': expected a non-empty list"):
        client.chat.completions.create(model="tiny", messages=[])
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\]': missing 'content'"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user"}])
    with pytest.raises(openai.BadRequestError, match=r"'temperature': expected a number in \[0, 2\], got -0.5"):
        client.chat.completions.create(model="tiny", messages=MSG, temperature=-0.5)
    with pytest.raises(openai.BadRequestError, match="'top_p'"):
        client.chat.completions.create(model="tiny", messages=MSG, top_p=0)
    with pytest.raises(openai.BadRequestError, match="'n': expected an integer"):
        client.chat.completions.create(model="tiny", messages=MSG, n=0)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 128 tokens"):
        client.chat.completions.create(model="tiny", messages=MSG, max_tokens=500)
    with pytest.raises(openai.BadRequestError, match="'logprobs' is not supported"):
        client.chat.completions.create(model="tiny", messages=MSG, logprobs=True)
    with pytest.raises(openai.BadRequestError, match="unrecognized request field"):
        client.chat.completions.create(model="tiny", messages=MSG, extra_body={"temprature": 1})
    with pytest.raises(openai.BadRequestError, match="'stop'"):
        client.chat.completions.create(model="tiny", messages=MSG, stop=[""])
    with pytest.raises(openai.BadRequestError, match="'prompt'"):
        client.completions.create(model="tiny", prompt="")
    _, base = running
    req = urllib.request.Request(f"{base}/chat/completions", data=b"{not json", method="POST",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400 and "not valid JSON" in json.loads(e.value.read())["error"]["message"]
    # Still serving.
    ok = client.chat.completions.create(model="tiny", messages=MSG, temperature=0, max_tokens=4)
    assert ok.choices[0].finish_reason in ("stop", "length")



def test_text_that_is_not_valid_unicode_is_a_400_naming_the_field(client, running):
    """Issue 19 §3: JSON's "\\udcff" decodes to a lone surrogate, which no tokenizer can encode: a
    completion was a 500, a chat a 400 blaming the chat template, a bad model name or field name a
    500 (the error echoing it could not be encoded). Each is now a 400 that names the field."""
    _, base = running

    def post(endpoint: str, raw: str):
        req = urllib.request.Request(f"{base}/{endpoint}", data=raw.encode("ascii"), method="POST",
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        return e.value.code, json.loads(e.value.read())["error"]

    code, err = post("chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": "hi \\udcff"}]}')
    assert code == 400 and err["param"] == "messages[0].content"
    assert err["message"].startswith("'messages[0].content': not valid Unicode text: lone surrogate U+DCFF at character 4")
    code, err = post("completions", '{"model": "tiny", "prompt": ["ok", "\\ud800"]}')
    assert code == 400 and err["param"] == "prompt[1]" and "U+D800" in err["message"]
    code, err = post("completions", '{"model": "tiny\\udcff", "prompt": "hi"}')
    assert code == 400 and err["param"] == "model"
    code, err = post("completions", '{"model": "tiny", "prompt": "hi", "x\\udcff": 1}')
    assert code == 400 and "in a key" in err["message"]
    # A valid pair is one character, and fine.
    ok = client.completions.create(model="tiny", prompt="smile \U0001F600", temperature=0, max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")

def test_stream_deltas_agree_with_the_final_text():
    from alignforge.models.tiny import tiny_tokenizer
    from alignforge.serving.serve import stream_deltas

    tok = tiny_tokenizer("llama")
    ids = tok("héron → Marrowfen, 42!", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    final = tok.decode(ids, skip_special_tokens=True)
    pieces = list(stream_deltas(tok, ids, final))
    assert "".join(pieces) == final and all(pieces)
    assert len(pieces) > 3
    # A stop string cut: deltas never run past the final (cut) text.
    assert "".join(stream_deltas(tok, ids, final[:5])) == final[:5]


def test_engine_groups_by_sampling_params_and_splits_by_max_batch():
    from alignforge.generation import SamplingParams
    from alignforge.models.tiny import tiny_random_model, tiny_tokenizer
    from alignforge.serving.serve import BatchingEngine, Job

    torch.set_num_threads(1)
    tok = tiny_tokenizer("llama")
    model = tiny_random_model("llama", len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    engine = BatchingEngine(model, tok, max_batch=8, window_ms=300)
    greedy = SamplingParams(temperature=0, max_new_tokens=3)
    sampled = SamplingParams(temperature=1.0, max_new_tokens=3)
    seeded = SamplingParams(temperature=1.0, max_new_tokens=3, seed=1)
    jobs = [Job([[5, 6, 7]], 1, greedy), Job([[8, 9]], 2, greedy), Job([[10]], 1, sampled),
            Job([[11, 12]], 1, greedy), Job([[5, 6]], 1, seeded), Job([[5, 6]], 1, seeded)]
    # Submitted within one window (7 rows <= 8): the greedy rows 1+2+1 make one call, the sampled
    # one a second; the two seeded ones run alone each (a seed must not depend on batch mates).
    results = [f.result(timeout=60) for f in [engine.submit(j) for j in jobs]]
    assert [len(r) for r in results] == [1, 2, 1, 1, 1, 1]
    assert engine.generate_calls == 4 and engine.rows_generated == 7
    assert results[4][0].token_ids == results[5][0].token_ids  # same seed alone → same draw
    # Greedy answers do not depend on batch mates: the first job alone gives the same tokens.
    assert engine.submit(Job([[5, 6, 7]], 1, greedy)).result(timeout=60)[0].token_ids == results[0][0].token_ids
    # 3 jobs × n=3 = 9 rows > max_batch 8: split between jobs, 6 rows then 3.
    before = engine.generate_calls
    results = [f.result(timeout=60) for f in [engine.submit(Job([[i, 7]], 3, greedy)) for i in (5, 6, 7)]]
    engine.close()
    assert [len(r) for r in results] == [3, 3, 3] and engine.generate_calls - before == 2


def test_cli_errors_and_port_sugar(checkpoint, capsys):
    from alignforge.serving.serve import _sugar, main

    assert _sugar(["ckpt", "--port", "8123", "--host=0.0.0.0"]) == ["ckpt", "serve.port=8123", "serve.host=0.0.0.0"]
    assert main(["--port", "8123"]) == 2
    assert "serve needs a checkpoint" in capsys.readouterr().err
    assert main([str(checkpoint / "missing"), "--port", "8123"]) == 2
    assert "model.init: cannot load" in capsys.readouterr().err
    assert main([str(checkpoint), "serve.max_batch=0"]) == 2
    assert "serve.max_batch" in capsys.readouterr().err


def test_a_failing_generate_is_a_500_for_its_batch_and_the_worker_lives_on(client, monkeypatch):
    import alignforge.serving.batching as serve_mod  # the engine's worker calls generate

    real = serve_mod.generate

    def broken(*args, **kwargs):
        raise RuntimeError("simulated device failure")

    monkeypatch.setattr(serve_mod, "generate", broken)
    with pytest.raises(openai.InternalServerError, match="simulated device failure"):
        client.chat.completions.create(model="tiny", messages=MSG, max_tokens=4)
    monkeypatch.setattr(serve_mod, "generate", real)
    ok = client.chat.completions.create(model="tiny", messages=MSG, temperature=0, max_tokens=4)
    assert ok.usage.completion_tokens >= 1
