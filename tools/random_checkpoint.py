"""Random-weight checkpoints of any Llama config, laid out like the hub's: for checks at the real shape.

No model hub is reachable, yet loading, memory and speed must be checked at Llama 3.1 8B's real shape. This writes
what a hub download looks like (config.json, `model-0000k-of-0000n.safetensors` shards and
`model.safetensors.index.json` with `weight_map` and `metadata.total_size`, HF tensor names) filled with random
numbers. It writes one tensor at a time, a slice of rows at a time, straight into the safetensors layout, so an 8B
checkpoint (16 GB in bf16) is written in a few hundred MB of memory.

    python -m tools.random_checkpoint /tmp/llama8b                         # Llama 3.1 8B's shape, bf16, 5 GB shards
    python -m tools.random_checkpoint /tmp/llama8b-1 --layers 1 --dtype fp32
    python -m tools.random_checkpoint /tmp/smol-random --like checkpoints/SmolLM2-135M-Instruct   # any model's config
"""
from __future__ import annotations

import argparse
import json
import math
import struct
import time
from pathlib import Path

import torch

from support.files import write_atomic
from model import ModelConfig, Transformer

# Llama 3.1 8B (Instruct) as its hub config.json states it; the Instruct model ends a turn at any of the three eos.
LLAMA_3_1_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
    "max_position_embeddings": 131072, "tie_word_embeddings": False,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
    "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16",
}
SHAPES = {"llama-3.1-8b": LLAMA_3_1_8B}
SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
DTYPE_NAMES = {"bf16": torch.bfloat16, "fp32": torch.float32}
INDEX_FILE = "model.safetensors.index.json"  # written last: a directory without it is unfinished
HUB_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size "5GB"
CHUNK_ELEMENTS = 1 << 22  # random numbers drawn per slice of rows (16 MB in float32)


def hf_tensor_shapes(hf_config: dict) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape, in the checkpoint's order; the shapes come from model.py itself (on meta)."""
    cfg = ModelConfig.from_hf(hf_config)
    with torch.device("meta"):
        model = Transformer(cfg)
    shapes = {}
    for name, p in model.state_dict().items():
        if name == "lm_head.weight":
            if not cfg.tie_word_embeddings:  # a tied checkpoint stores the embedding only
                shapes[name] = tuple(p.shape)
        else:
            shapes[f"model.{name}"] = tuple(p.shape)
    return shapes


def plan_shards(shapes: dict[str, tuple[int, ...]], itemsize: int, max_shard_bytes: int) -> list[list[str]]:
    """Consecutive tensors per shard, a new shard whenever the next tensor would pass max_shard_bytes (as HF does)."""
    shards, size = [[]], 0
    for name, shape in shapes.items():
        nbytes = itemsize * math.prod(shape)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def random_rows(name: str, shape: tuple[int, ...], g: torch.Generator, std: float, norm_std: float):
    """The tensor's values a slice of rows at a time (float32): weights ~ N(0, std), norms ~ 1 + N(0, norm_std)."""
    mean, std = (1.0, norm_std) if name.endswith("norm.weight") else (0.0, std)
    rows, per_row = shape[0], math.prod(shape[1:])
    step = max(1, CHUNK_ELEMENTS // per_row)
    buffer = torch.empty(min(step, rows) * per_row)  # reused: fresh pages cost more than the random numbers
    for start in range(0, rows, step):
        n = min(step, rows - start)
        yield buffer[:n * per_row].view(n, *shape[1:]).normal_(mean, std, generator=g)


def write_shard(file: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, seeds: dict[str, int],
                std: float, norm_std: float) -> None:
    """One safetensors file: the 8-byte header length, the JSON header, then each tensor's bytes in header order."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        nbytes = itemsize * math.prod(shape)
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    tmp = file.with_name(f".{file.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, shape in shapes.items():
            g = torch.Generator().manual_seed(seeds[name])
            for rows in random_rows(name, shape, g, std, norm_std):
                f.write(rows.to(dtype).contiguous().view(torch.uint8).numpy())  # little-endian, as safetensors
    tmp.replace(file)


def is_complete(out_dir: str | Path, hf_config: dict, dtype: torch.dtype) -> bool:
    """True if out_dir already holds this config's checkpoint in this dtype, every file at its full size."""
    out_dir = Path(out_dir)
    index, config = out_dir / INDEX_FILE, out_dir / "config.json"
    if not config.is_file() or json.loads(config.read_text()) != _config_json(hf_config, dtype):
        return False
    shapes = hf_tensor_shapes(hf_config)
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
    else:
        weight_map = {name: "model.safetensors" for name in shapes}
    if set(weight_map) != set(shapes):
        return False
    itemsize = torch.empty(0, dtype=dtype).element_size()
    sizes = {}
    for name, file in weight_map.items():
        sizes[file] = sizes.get(file, 0) + itemsize * math.prod(shapes[name])
    return all((out_dir / file).is_file() and (out_dir / file).stat().st_size > size for file, size in sizes.items())


def _config_json(hf_config: dict, dtype: torch.dtype) -> dict:
    return {**hf_config, "torch_dtype": str(dtype).removeprefix("torch.")}


def write_random_checkpoint(out_dir: str | Path, hf_config: dict, *, dtype: torch.dtype = torch.bfloat16,
                            std: float = 0.02, norm_std: float = 0.1, seed: int = 0,
                            max_shard_bytes: int = HUB_SHARD_BYTES) -> Path:
    """Write a random-weight HF checkpoint of `hf_config` (a config.json dict) into out_dir; returns out_dir.

    Sharded as the hub shards (`model-0000k-of-0000n.safetensors` + index) unless it fits one shard, then a single
    `model.safetensors`. Each tensor draws from its own seed (seed, position), so the values do not depend on the
    sharding. The index (or the single file) is written last.
    """
    out_dir = Path(out_dir)
    if dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"dtype {dtype} is not one of {', '.join(map(str, SAFETENSORS_DTYPES))}")
    shapes = hf_tensor_shapes(hf_config)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    seeds = {name: seed * 1_000_003 + i for i, name in enumerate(shapes)}
    shards = plan_shards(shapes, itemsize, max_shard_bytes)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (INDEX_FILE, "model.safetensors"):  # a directory is complete again only when the last file lands
        (out_dir / stale).unlink(missing_ok=True)
    (out_dir / "config.json").write_text(json.dumps(_config_json(hf_config, dtype), indent=2) + "\n")
    if len(shards) == 1:
        write_shard(out_dir / "model.safetensors", shapes, dtype, seeds, std, norm_std)
        return out_dir
    weight_map = {}
    for k, names in enumerate(shards, start=1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        write_shard(out_dir / file, {n: shapes[n] for n in names}, dtype, seeds, std, norm_std)
        weight_map.update({n: file for n in names})
    total = itemsize * sum(math.prod(s) for s in shapes.values())
    write_atomic(out_dir / INDEX_FILE, json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                  indent=2) + "\n")
    return out_dir


def write_random_copy(model_dir: str | Path, out_dir: str | Path, *, seed: int = 0,
                      dtype: torch.dtype = torch.float32) -> Path:
    """A random-weight copy of a model directory: its config.json and tokenizer files, weights drawn with `seed` at
    the usual initialisation scale (N(0, initializer_range), default 0.02; norm weights 1). Reused if complete."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    hf = json.loads((model_dir / "config.json").read_text())
    extra = [f for f in sorted(model_dir.iterdir()) if f.is_file() and f.name != "config.json" and f.name != INDEX_FILE
             and not f.name.endswith(".safetensors")]  # tokenizer, generation config
    if not (is_complete(out_dir, hf, dtype) and all((out_dir / f.name).is_file() for f in extra)):
        write_random_checkpoint(out_dir, hf, dtype=dtype, std=hf.get("initializer_range", 0.02), norm_std=0.0,
                                seed=seed)
        for f in extra:
            write_atomic(out_dir / f.name, f.read_bytes())
    return out_dir


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="directory to write (created if missing)")
    p.add_argument("--shape", choices=SHAPES, default="llama-3.1-8b", help="the config to copy")
    p.add_argument("--like", type=Path, default=None, help="a model directory to copy instead of --shape: its "
                   "config.json and tokenizer, fp32 weights at its initializer_range (other options ignored)")
    p.add_argument("--layers", type=int, default=None, help="override num_hidden_layers (a shallower model)")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="bf16")
    p.add_argument("--std", type=float, default=0.02, help="standard deviation of the weight matrices")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-shard-gb", type=float, default=HUB_SHARD_BYTES / 1e9, help="shard size limit, GB (1e9)")
    args = p.parse_args(argv)
    if args.like is not None:
        print(f"wrote {write_random_copy(args.like, args.out, seed=args.seed)}")
        return
    hf = dict(SHAPES[args.shape])
    if args.layers is not None:
        hf["num_hidden_layers"] = args.layers
    t0 = time.time()
    write_random_checkpoint(args.out, hf, dtype=DTYPE_NAMES[args.dtype], std=args.std, seed=args.seed,
                            max_shard_bytes=int(args.max_shard_gb * 1e9))
    size = sum(f.stat().st_size for f in args.out.glob("*.safetensors"))
    print(f"wrote {args.out} ({size / 1e9:.2f} GB, {args.dtype}) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
