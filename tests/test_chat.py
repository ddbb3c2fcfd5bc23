"""`alignforge chat`: multi-turn history through the chat template, commands, and use over a pipe."""

import io
import os
import subprocess
import sys

import pytest
import torch


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from alignforge.models.load import save_model
    from alignforge.models.tiny import tiny_random_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("chat")
    tok = tiny_tokenizer("llama")
    model = tiny_random_model("llama", len(tok), seed=0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    # At the default init scale a random model's logits are almost flat and greedy repeats one
    # token whatever the prompt; larger weights make answers depend on the prompt (and history).
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2, generator=g)
    save_model(model, tok, root / "sft" / "model")
    return root / "sft"


@pytest.fixture(scope="module")
def loaded(checkpoint):
    from alignforge.models.load import load_causal_lm

    torch.set_num_threads(1)
    model, tok = load_causal_lm(checkpoint, device="cpu")
    return model.eval(), tok


def greedy(model, tok, messages, n=10):
    from alignforge.generation import SamplingParams, generate_text

    return generate_text(model, tok, [messages], SamplingParams(temperature=0, max_new_tokens=n)).texts[0]


def run(session, text, interactive=False):
    from alignforge.serving.chat import run_chat

    out, err = io.StringIO(), io.StringIO()
    assert run_chat(session, io.StringIO(text), out, err, interactive=interactive) == 0
    return out.getvalue(), err.getvalue()


def test_history_goes_through_the_chat_template_and_reset_forgets_it(loaded):
    from alignforge.serving.chat import ChatSession

    model, tok = loaded
    session = ChatSession(model, tok, temperature=0, max_tokens=10)
    out, err = run(session, "hi\nwhere is it?\n/reset\nwhere is it?\n")
    a1 = greedy(model, tok, [{"role": "user", "content": "hi"}])
    a2 = greedy(model, tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": a1},
                             {"role": "user", "content": "where is it?"}])
    a3 = greedy(model, tok, [{"role": "user", "content": "where is it?"}])
    assert a2 != a3  # the history changes the answer (else this test could not see it)
    assert out == f"{a1}\n{a2}\n{a3}\n"  # (answers of a random model may hold newlines: compare it all)
    assert "(conversation reset)" in err
    assert session.history == [{"role": "user", "content": "where is it?"}, {"role": "assistant", "content": a3}]


def test_commands_change_sampling_and_bad_values_are_reported(loaded):
    from alignforge.serving.chat import ChatSession

    model, tok = loaded
    session = ChatSession(model, tok, temperature=0.7, max_tokens=10)
    out, err = run(session, "/temperature 0\n/top_p 0.5\n/max_tokens 3\n/temperature -1\n/top_p x\n/frobnicate\n"
                            "/system be brief\n/temperature\nhello\n/quit\nnot answered\n")
    assert (session.temperature, session.top_p, session.max_tokens, session.system) == (0.0, 0.5, 3, "be brief")
    assert "/temperature: expected a number >= 0, got '-1'" in err
    assert "/top_p: expected a number in (0, 1], got 'x'" in err
    assert "unknown command '/frobnicate'" in err and "temperature = 0.0" in err
    # One answer (the line after /quit is never read), greedy with the system message, 3 tokens at most.
    expected = greedy(model, tok, [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}], n=3)
    assert out == expected + "\n"


def test_interactive_mode_prompts_and_piped_mode_does_not(loaded):
    from alignforge.serving.chat import ChatSession

    model, tok = loaded
    out, err = run(ChatSession(model, tok, temperature=0, max_tokens=4), "hi\n", interactive=True)
    assert out.startswith("you> assistant> ") and "/help" in err
    out, err = run(ChatSession(model, tok, temperature=0, max_tokens=4), "hi\n")
    assert "you>" not in out and "assistant>" not in out and err == ""


def test_long_conversations_drop_the_oldest_turns(loaded):
    from alignforge.serving.chat import ChatSession

    model, tok = loaded
    session = ChatSession(model, tok, temperature=0, max_tokens=40, system="sys")  # 128 positions in all
    out, err = run(session, "".join(f"tell me about the heron number {i}\n" for i in range(6)))
    assert len(session.history) < 12 and "dropped the" in err
    assert session.messages()[0] == {"role": "system", "content": "sys"}  # the system message is kept
    assert session.history[-2]["content"] == "tell me about the heron number 5"
    # A single message longer than the whole context is an error for that turn, not a crash.
    out, err = run(session, "word " * 200 + "\n")
    assert out == "" and "exceed the model's 128 positions" in err


def test_cli_over_a_pipe(checkpoint, loaded, capsys):
    model, tok = loaded
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "alignforge", "chat", str(checkpoint), "chat.temperature=0",
                           "chat.max_tokens=6", "runtime.device=cpu"], input=b"hi\n/reset\nbye\n",
                          capture_output=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    hi = greedy(model, tok, [{"role": "user", "content": "hi"}], n=6)
    bye = greedy(model, tok, [{"role": "user", "content": "bye"}], n=6)  # after /reset: no history
    # bytes, not text mode: universal newlines would turn a '\r' in a random answer into '\n'
    assert proc.stdout.decode() == f"{hi}\n{bye}\n" and proc.stderr.decode() == "(conversation reset)\n"

    from alignforge.serving.chat import main

    assert main(["chat.temperature=0"]) == 2
    assert "chat needs a checkpoint" in capsys.readouterr().err
    assert main([str(checkpoint / "nope")]) == 2
    assert "model.init: cannot load" in capsys.readouterr().err
    assert main([str(checkpoint), "chat.top_p=1.5"]) == 2
    assert "chat.top_p: expected a number in (0, 1], got 1.5" in capsys.readouterr().err


def test_lines_that_are_not_valid_text_are_refused_by_line_and_the_session_goes_on(checkpoint, loaded):
    """Issue 19 §3: a non-UTF-8 byte (0xff reaches Python as the lone surrogate U+DCFF) used to end
    the chat with a tokenizer's TypeError traceback; a /system line with one broke every later turn."""
    from alignforge.serving.chat import ChatSession

    model, tok = loaded
    session = ChatSession(model, tok, temperature=0, max_tokens=4)
    out, err = run(session, "hi \udcff\n/system be \udcfe\nbye\n")
    assert "error: input line 1: not valid Unicode text: lone surrogate U+DCFF at character 4" in err
    assert "input line 2: not valid Unicode text" in err and session.system is None
    assert out == greedy(model, tok, [{"role": "user", "content": "bye"}], n=4) + "\n"
    with pytest.raises(ValueError, match="not valid Unicode text"):
        session.reply("x\ud800")
    assert [m["content"] for m in session.history if m["role"] == "user"] == ["bye"]
    # The CLI with the raw byte on a pipe, even with a strict stdin decoder.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8:strict"}
    proc = subprocess.run([sys.executable, "-m", "alignforge", "chat", str(checkpoint), "chat.temperature=0",
                           "chat.max_tokens=4", "runtime.device=cpu"], input=b"hi \xff\nbye\n",
                          capture_output=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "input line 1: not valid Unicode text: lone surrogate U+DCFF" in proc.stderr.decode()
    assert proc.stdout.decode() == out
