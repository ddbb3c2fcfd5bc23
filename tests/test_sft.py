"""The tokenizer and SFT stages end to end on tiny local models (nothing is downloaded).

Smoke (CI): SFT on ``../shared/data/self-instruct-seed-tasks.jsonl`` with a tiny local Llama and a
tiny GPT-2 without a pad token; the outputs reload with plain ``transformers``. Also: LoRA,
exact resume after a crash, the step-loss normalisation against an unpacked reference, the
world/hf configs load strictly, and a 2-process gloo run equals a 1-process run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignforge.config import ConfigError, SFTConfig, TokenizerConfig, load_config
from alignforge.data.batching import collate, encode_examples, lm_loss, make_batches, pad_id_of
from alignforge.stages import sft
from alignforge.stages import tokenizer as tokenizer_stage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resume_helpers import crash_after_save  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SEED_TASKS = SHARED / "self-instruct-seed-tasks.jsonl"
needs_seed_tasks = pytest.mark.skipif(not SEED_TASKS.exists(),
                                      reason=f"shared data not found: {SEED_TASKS} (clone with shared/ beside the repo)")

DEMOS = [
    {"prompt": "What is 2+3?", "response": "It is 5."},
    {"prompt": "Name three colours.", "response": "red, green, blue"},
    {"prompt": "Say yes.", "response": "yes"},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
     "response": "Hello."},
    {"prompt": "Where does the fox live?", "response": "The fox lives near the silver river."},
    {"prompt": "What is 4+4?", "response": "It is 8."},
] * 4


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _texts() -> list[str]:
    texts = [d["response"] for d in DEMOS] + [d["prompt"] for d in DEMOS if isinstance(d["prompt"], str)]
    if SEED_TASKS.exists():
        texts += tokenizer_stage.read_texts(str(SEED_TASKS))
    return texts


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny Llama with our tokenizer, and a tiny GPT-2 whose tokenizer has no pad/template."""
    from tokenizers import Tokenizer, decoders, models as tmodels, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from alignforge.models.load import save_model
    from alignforge.models.tiny import tiny_random_model
    from alignforge.models.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("models")
    texts = _texts()
    tok = train_tokenizer(texts, vocab_size=400)
    llama = tiny_random_model("llama", len(tok), seed=0, max_positions=256, tie_embeddings=False)
    save_model(llama, tok, root / "llama")

    core = Tokenizer(tmodels.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    gtok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    assert gtok.pad_token is None and not gtok.chat_template
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(gtok), n_embd=32, n_layer=2, n_head=4, n_positions=256,
                                      bos_token_id=gtok.eos_token_id, eos_token_id=gtok.eos_token_id))
    gpt2.save_pretrained(root / "gpt2")
    gtok.save_pretrained(root / "gpt2")
    return {"llama": root / "llama", "gpt2": root / "gpt2", "root": root}


def _args(model_dir, data, out, **train) -> list[str]:
    t = {"seq_len": 128, "batch_size": 4, "max_steps": 6, "warmup_steps": 1, "log_every": 1,
         "eval_every": 3, "save_every": 0, "lr": 3e-3}
    t.update(train)
    return [f"model.init={model_dir}", f"data.train={data}", f"out={out}", "runtime.threads=1",
            "runtime.progress=false", "runtime.device=cpu", "sft.samples=2", "sft.sample_max_new_tokens=8",
            *[f"train.{k}={v}" for k, v in t.items()]]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# tokenizer stage
# ---------------------------------------------------------------------------------------------


def test_tokenizer_stage_trains_saves_and_reloads(tmp_path, capsys):
    from transformers import AutoTokenizer

    data = _write_jsonl(tmp_path / "corpus.jsonl", [{"text": d["response"]} for d in DEMOS] + DEMOS[:3])
    out = tmp_path / "tok"
    args = [f"data.train={data}", f"out={out}", "tokenizer.vocab_size=300", "tokenizer.min_frequency=1"]
    assert tokenizer_stage.main(args) == 0
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert len(tok) == json.loads((out / "stats.json").read_text())["vocab_size"] <= 300
    assert tok.eos_token == "<|end|>" and tok.pad_token == "<|pad|>"
    assert tok.decode(tok("It is 5.")["input_ids"]) == "It is 5."  # byte-level: exact round trip
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                  tokenize=True, return_dict=False)
    assert tok.decode(ids) == "<|user|>\nHi<|end|>\n<|assistant|>\n"
    assert load_config(TokenizerConfig, out / "config.yaml").tokenizer.vocab_size == 300
    # finished: not recomputed; plain .txt input works too
    assert tokenizer_stage.main(args) == 0
    assert "is finished" in capsys.readouterr().out
    (tmp_path / "c.txt").write_text("the cat sat\n\nthe dog ran\n")
    assert tokenizer_stage.read_texts(str(tmp_path / "c.txt")) == ["the cat sat", "the dog ran"]


def test_tokenizer_also_train_on_gives_demonstration_words_their_own_tokens(tmp_path):
    """tokenizer.also_train_on: words only the demonstrations use become tokens instead of bytes."""
    from transformers import AutoTokenizer

    corpus = _write_jsonl(tmp_path / "corpus.jsonl", [{"text": "the fox lives near the river"}] * 20)
    demos = _write_jsonl(tmp_path / "demos.jsonl",
                         [{"prompt": "Help?", "response": "I am sorry, I cannot help with that."}] * 20)
    lengths = {}
    for name, extra in (("plain", []), ("also", [f"tokenizer.also_train_on=[{demos}]"])):
        out = tmp_path / name
        assert tokenizer_stage.main([f"data.train={corpus}", f"out={out}", "tokenizer.vocab_size=400", *extra]) == 0
        tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
        lengths[name] = len(tok(" sorry cannot", add_special_tokens=False)["input_ids"])
        stats = json.loads((out / "stats.json").read_text())
        assert stats["documents"] == 20 and stats["extra_documents"] == (40 if extra else 0)
    assert lengths == {"plain": 13, "also": 2}  # one token per byte (13 bytes) vs one per word


def test_tokenizer_stage_errors_name_the_problem(tmp_path, capsys):
    assert tokenizer_stage.main([f"data.train={tmp_path / 'missing.jsonl'}", f"out={tmp_path / 'o'}"]) == 2
    assert "missing.jsonl: file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": 3}\n')
    assert tokenizer_stage.main([f"data.train={bad}", f"out={tmp_path / 'o'}"]) == 2
    assert "bad.jsonl:2: field 'text'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# SFT
# ---------------------------------------------------------------------------------------------


def _reload_and_generate(model_dir: Path, prompt: str) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    msgs = [{"role": "user", "content": prompt}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    out = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    return tok.decode(out[0, len(ids):])


@needs_seed_tasks
def test_sft_self_instruct_tiny_llama_end_to_end(models, tmp_path):
    out = tmp_path / "sft"
    assert sft.main(_args(models["llama"], SEED_TASKS, out, max_steps=8, eval_every=4)) == 0
    assert (out / "DONE").exists() and (out / "config.yaml").exists()
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[-1]["loss"] < rows[0]["loss"]              # it learns
    assert {"eval_loss", "eval_bpb", "tokens_per_s", "mfu"} <= set(rows[-1])
    assert 0 < rows[-1]["mfu"] < 1
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [4, 4, 8, 8] and all("response" in s for s in samples)
    done = json.loads((out / "DONE").read_text())
    assert done["examples"] > 100 and done["pad_fraction"] < 0.2
    assert isinstance(_reload_and_generate(out / "model", "Say yes."), str)
    cfg = load_config(SFTConfig, out / "config.yaml")
    assert cfg.model.init == str(models["llama"]) and cfg.train.max_steps == 8


@needs_seed_tasks
def test_sft_gpt2_without_pad_token(models, tmp_path):
    out = tmp_path / "sft"
    assert sft.main(_args(models["gpt2"], SEED_TASKS, out, max_steps=3, eval_every=0)
                    + ["data.max_records=40", "sft.batching=sorted", "sft.attention=position_ids"]) == 0
    rows = _rows(out)
    assert len(rows) == 3 and all(r["loss"] == r["loss"] for r in rows)  # finite, not NaN
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out / "model"), local_files_only=True)
    assert tok.chat_template and "### Assistant" in tok.chat_template  # the fallback template was saved
    assert isinstance(_reload_and_generate(out / "model", "Say yes."), str)


def test_sft_lora_changes_only_adapters_and_saves_merged(models, tmp_path):
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    data = _write_jsonl(tmp_path / "demos.jsonl", DEMOS)
    out = tmp_path / "lora"
    assert sft.main(_args(models["llama"], data, out, max_steps=3, eval_every=0, lr=1e-2)
                    + ["model.lora.enabled=true", "model.lora.r=4", "model.lora.target_modules=[q_proj, v_proj]"]) == 0
    base, tuned = load_file(str(models["llama"] / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    assert base.keys() == tuned.keys()  # merged: a plain model, no adapter keys
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)


def _ptx_args(tmp_path: Path, coef: float = 0.5) -> list[str]:
    text = _write_jsonl(tmp_path / "ptx.jsonl", [{"text": t} for t in _texts()])
    return [f"sft.ptx_data={text}", f"sft.ptx_coef={coef}", "sft.ptx_batch_size=2"]


@pytest.mark.parametrize("ptx", [False, True], ids=["plain", "ptx"])
def test_sft_resumes_exactly_after_a_crash(models, tmp_path, monkeypatch, ptx):
    """Also with SFT-ptx: its position in the pretraining text is part of the checkpoint."""
    from safetensors.torch import load_file

    from alignforge.train import checkpoint as ckpt

    data = _write_jsonl(tmp_path / "demos.jsonl", DEMOS)
    common = dict(max_steps=6, save_every=3, eval_every=2, batch_size=2)
    extra = _ptx_args(tmp_path) if ptx else []
    args = lambda out: _args(models["llama"], data, out, **common) + extra  # noqa: E731
    ref = tmp_path / "ref"
    assert sft.main(args(ref)) == 0

    out = tmp_path / "crashed"
    with crash_after_save(monkeypatch, ckpt, "simulated crash right after the step-3 checkpoint"):
        sft.main(args(out))
    assert not (out / "DONE").exists()
    assert sft.main(args(out)) == 0
    a, b = load_file(str(ref / "model" / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert [r["step"] for r in _rows(out)] == list(range(1, 7))
    assert [r["loss"] for r in _rows(out)] == [r["loss"] for r in _rows(ref)]
    assert [r.get("eval_loss") for r in _rows(out)] == [r.get("eval_loss") for r in _rows(ref)]
    assert [r.get("ptx_loss") for r in _rows(out)] == [r.get("ptx_loss") for r in _rows(ref)]
    assert all(("ptx_loss" in r) == ptx for r in _rows(out))


def test_sft_ptx_loss_is_the_next_token_loss_of_the_pretraining_blocks_in_order(models, tmp_path):
    """SFT-ptx against an independent reference: the logged ptx loss of step 1 is the plain
    next-token cross-entropy of the first ``ptx_batch_size`` blocks of the text (packed with an
    eos after each document) under the initial model, and step 2 reads the next blocks."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = _write_jsonl(tmp_path / "demos.jsonl", DEMOS)
    out = tmp_path / "out"
    assert sft.main(_args(models["llama"], data, out, max_steps=1, lr=0.0, warmup_steps=0) + _ptx_args(tmp_path)) == 0
    tok = AutoTokenizer.from_pretrained(models["llama"])
    model = AutoModelForCausalLM.from_pretrained(models["llama"]).eval()
    stream: list[int] = []
    for t in _texts():
        stream += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    blocks = torch.tensor([stream[i * 128: i * 128 + 129] for i in range(2)])
    with torch.no_grad():
        logits = model(input_ids=blocks[:, :-1]).logits
    expected = F.cross_entropy(logits.reshape(-1, logits.size(-1)), blocks[:, 1:].reshape(-1)).item()
    assert _rows(out)[0]["ptx_loss"] == pytest.approx(expected, rel=1e-5)  # fp32 on one side, same ops


def test_sft_ptx_config_is_checked(models, tmp_path, capsys):
    data = _write_jsonl(tmp_path / "demos.jsonl", DEMOS)
    assert sft.main(_args(models["llama"], data, tmp_path / "o") + ["sft.ptx_coef=0.5"]) == 2
    assert "sft.ptx_coef' > 0 needs sft.ptx_data" in capsys.readouterr().err


def test_step_loss_weighs_every_response_token_equally(models):
    """Σ over packed micro-batches of nll/N_step has the gradient of HF's mean label loss over
    the same examples unpacked and padded in one batch (an independent reference)."""
    from transformers import AutoModelForCausalLM

    from alignforge.models.tokenizer import load_tokenizer

    tok = load_tokenizer(models["llama"])
    model = AutoModelForCausalLM.from_pretrained(str(models["llama"]), local_files_only=True)
    examples, _ = encode_examples(tok, [(d["prompt"], d["response"]) for d in DEMOS[:6]])
    plan = make_batches(examples, seq_len=64, batch_size=1, pad_id=pad_id_of(tok), mode="pack", seed=0)
    assert len(plan.batches) >= 2
    n_step = sum(b.loss_tokens for b in plan.batches)
    for b in plan.batches:
        nll, _ = lm_loss(model, b)
        (nll / n_step).backward()
    ours = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()

    ref_batch = collate(examples, [[i] for i in range(len(examples))], pad_id_of(tok))
    labels = torch.where(ref_batch.loss_mask, ref_batch.input_ids, torch.full_like(ref_batch.input_ids, -100))
    attn = (ref_batch.segment_ids >= 0).long()
    model(input_ids=ref_batch.input_ids, attention_mask=attn, labels=labels).loss.backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(ours[k], p.grad, rtol=1e-4, atol=1e-6)


def test_sft_bad_input_errors(models, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "response": "ok"}\n{"prompt": "", "response": "x"}\n')
    assert sft.main(_args(models["llama"], bad, tmp_path / "o")) == 2
    assert "bad.jsonl:2: field 'prompt'" in capsys.readouterr().err
    assert sft.main(_args(models["llama"], bad, tmp_path / "o") + ["train.seq_len=100000"]) == 2
    assert "exceeds the model's 256 positions" in capsys.readouterr().err
    assert sft.main([f"data.train={bad}", f"out={tmp_path / 'o'}"]) == 2
    assert "needs model.init" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="sft.batchin"):
        load_config(SFTConfig, None, ["sft.batchin=pack"])


@pytest.mark.parametrize("path", ["configs/world/tokenizer.yaml", "configs/world/sft.yaml",
                                  "configs/hf/sft-self-instruct.yaml"])
def test_shipped_configs_load_strictly(path):
    cls = TokenizerConfig if "tokenizer" in path else SFTConfig
    cfg = load_config(cls, REPO / path)
    assert cfg.data.train


@pytest.mark.slow
def test_two_process_gloo_equals_one_process(models, tmp_path):
    """torchrun 2×(grad_accum 1) ≡ 1×(grad_accum 2): same global batches, same token weighting."""
    from safetensors.torch import load_file

    data = _write_jsonl(tmp_path / "demos.jsonl", DEMOS)
    one, two = tmp_path / "one", tmp_path / "two"
    common = dict(max_steps=4, eval_every=2, batch_size=2)
    assert sft.main(_args(models["llama"], data, one, grad_accum=2, **common)) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "alignforge", "sft", *_args(models["llama"], data, two, grad_accum=1, **common)]
    # Own session: on a timeout the whole group (torchrun and both workers) is killed, not only
    # torchrun — orphaned workers would keep eating the CI's cores.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail("2-process SFT did not finish in 240 s:\n" + output[-3000:])
    assert proc.returncode == 0, output[-3000:]
    a, b = load_file(str(one / "model" / "model.safetensors")), load_file(str(two / "model" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    ra, rb = _rows(one), _rows(two)
    assert [r["step"] for r in rb] == [1, 2, 3, 4]
    assert [r["loss"] for r in rb] == pytest.approx([r["loss"] for r in ra], rel=1e-4)
    assert rb[-1]["eval_loss"] == pytest.approx(ra[-1]["eval_loss"], rel=1e-4)


def test_split_eval_is_seeded_disjoint_and_capped():
    from alignforge.data.splits import split_eval

    recs = list(range(100))
    train, held = split_eval(recs, 0.2, seed=1)
    assert len(held) == 20 and sorted(train + held) == recs
    assert split_eval(recs, 0.2, seed=1) == (train, held)
    train, held = split_eval(recs, 0.2, seed=1, max_eval=5)
    assert len(held) == 5 and len(train) == 95   # the cap keeps the rest for training
    assert split_eval(recs, 0.0, seed=1) == (recs, [])
