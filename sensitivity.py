"""Layer scoring and the co-localization analysis (METHOD.md sections 4.1-4.4b).

    python sensitivity.py [--model DIR] [--out DIR] [--calib file|auto] [--sens-dist cosine|l2] ...
    python sensitivity.py --multiverse [--calib-seeds 0,1,2,3,4] [--n-pairs 15]    # all 16 readings at once

S_l (sensitivity): how far apart layer l's residual stream ends up for prompt + correct vs prompt + incorrect
completion, averaged over calibration pairs. I_l (RoPE influence): the norm of the gradient of the mean completion
NLL w.r.t. layer l's identity-initialised GARFA `log_scale` (or a central finite difference). Then Spearman(S, I)
over layers, also with depth held fixed, top-k sets, their overlap and depth, a bootstrap over pairs, a verdict.
Scores are cached per (weights, options) under runs/.cache, so train.py and repeated runs score once.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from tqdm import tqdm

from support import report
from support.cli import Parser, add_model_options, add_options, comma_ints, from_args, option, resolve_dtype, run
from support.files import (CACHE_DIR, DEFAULT_MODEL_DIR, ROOT, RUNS_DIR, UserError, claim_output, model_fingerprint, read_json,
                   write_atomic, write_json)
from garfa import apply_garfa
from model import Transformer, rope_cos_sin, sequence_nll
from support.batching import right_pad
from prepare import ensure_model
from support.stats import partial_spearman, spearman_rows
from support.tasks import CHAT_MODES, FAMILIES, LETTERS, SKILLS, SOURCE_SKILL, SOURCES, encode_prompt, uses_chat
from support.tokenizer import Tokenizer

SCORES_VERSION = "2"  # bump when a score's definition changes, so cached scores are recomputed
CALIB_FILE = ROOT / "calibration_pairs.json"
AUTO_MAX_CHARS = 500  # auto pairs keep short completions, so scoring stays fast
CODE_MUTATIONS = ((" <= ", " < "), (" < ", " <= "), (" >= ", " > "), (" > ", " >= "), (" == ", " != "),
                  (" != ", " == "), (" + ", " - "), (" - ", " + "), (" and ", " or "), ("True", "False"))
ALPHA = 0.05  # significance level of the verdict
READINGS = ("sens_pool", "sens_repr", "sens_dist", "influence")  # the choices the multiverse crosses (4.4b)
FD_BATCH = 1  # pairs per finite-difference batch (2 rows: at +eps and -eps); 1 measured fastest on 2 CPU cores


@dataclass(frozen=True)
class ScoreOptions:
    calib: str = option("file", "calibration pairs: the shipped calibration_pairs.json, or drawn from training data",
                        ("file", "auto"))
    n_pairs: int = option(15, "pairs drawn by --calib auto")
    sens_pool: str = option("last", "pooling of the completion tokens: the last one, or their mean", ("last", "mean"))
    sens_repr: str = option("output", "representation: the stream after block l, or its update h_l - h_{l-1}",
                            ("output", "delta"))
    sens_dist: str = option("cosine", "distance of the two streams: 1 - cosine, or Euclidean (which grows with the "
                            "residual norm, i.e. with depth)", ("cosine", "l2"))
    influence: str = option("grad", "RoPE-influence estimator: gradient norm w.r.t. GARFA log_scale, or central "
                            "finite difference", ("grad", "fd"))
    fd_eps: float = option(0.05, "log-frequency step of --influence fd")
    k: int | None = option(None, "top-k layers per score (default: ceil(L / 4))", type=int)
    bootstrap: int = option(1000, "resamples over pairs for the 95% interval of r_s")
    seed: int = option(0, "which pairs --calib auto draws, and the bootstrap draws")
    chat: str = option("auto", "chat template where a family uses it (math, gsm) and the checkpoint has one",
                       CHAT_MODES)

    def __post_init__(self):
        for f in fields(self):
            valid = f.metadata["choices"]
            if valid and getattr(self, f.name) not in valid:
                raise UserError(f"--{f.name.replace('_', '-')} {getattr(self, f.name)!r}; valid: {', '.join(valid)}")
        if self.n_pairs < 2 or self.bootstrap < 0 or self.fd_eps <= 0 or (self.k is not None and self.k < 1):
            raise UserError(f"need --n-pairs >= 2, --bootstrap >= 0, --fd-eps > 0, --k >= 1; got {self}")


CHOICES = {f.name: f.metadata["choices"] for f in fields(ScoreOptions) if f.metadata["choices"]}


def add_score_args(group, skip: tuple[str, ...] = ()) -> None:
    """The scoring options on an argparse parser or group; the caller may own some (train.py: --seed, --chat)."""
    add_options(group, ScoreOptions, skip=skip)


def options_from_args(args, **overrides) -> ScoreOptions:
    return from_args(ScoreOptions, args, **overrides)


# ----------------------------------------------------------------------------------------------------------------
# Calibration pairs (4.1): the shipped file, or pairs drawn from the training mixture

def mutate_answer(item: dict, rng: np.random.Generator) -> str | None:
    """A wrong version of a training item's completion, or None if this item has no simple mutation."""
    text, family = item["completion"], SOURCES[item["source"]]
    if family == "mc":
        wrong = rng.choice([i for i in range(len(item["choices"])) if i != item["answer"]])
        return f" {LETTERS[wrong]}"
    if family in ("math", "gsm"):  # change the final integer answer by a small nonzero amount
        pattern = r"\\boxed\{(-?\d+)\}" if family == "math" else r"The answer is (-?\d+)\.$"
        m = next(reversed(list(re.finditer(pattern, text))), None)  # the last one
        if m is None:
            return None
        wrong = int(m.group(1)) + int(rng.choice([-2, -1, 1, 2]))
        return text[:m.start(1)] + str(wrong) + text[m.end(1):]
    for old, new in (CODE_MUTATIONS[i] for i in rng.permutation(len(CODE_MUTATIONS))):
        if old in text:  # flip one comparison, operator or constant of the reference solution
            return text.replace(old, new, 1)
    return None


def auto_pairs(n: int, seed: int) -> list[dict]:
    """n pairs from the training mixture (evaluation items already removed and checked there), families in turn."""
    from data import training_mixture

    rng, mixture = np.random.default_rng(seed), training_mixture(seed)  # shuffled by the seed
    pool = {f: [x for x in mixture if SOURCES[x["source"]] == f and len(x["completion"]) <= AUTO_MAX_CHARS]
            for f in FAMILIES}
    pairs, families = [], list(pool)
    while len(pairs) < n:
        family = families[len(pairs) % len(families)]
        if not pool[family]:
            raise UserError(f"--calib auto: ran out of usable {family} training items after {len(pairs)} pairs")
        item = pool[family].pop(0)
        wrong = mutate_answer(item, rng)
        if wrong is not None and wrong != item["completion"]:
            pairs.append(dict(skill=SOURCE_SKILL[item["source"]], prompt=item["prompt"], correct=item["completion"],
                              incorrect=wrong, source=item["source"], id=item["id"]))
    return pairs


def calibration_pairs(options: ScoreOptions) -> list[dict]:
    if options.calib == "auto":
        return auto_pairs(options.n_pairs, options.seed)
    pairs = read_json(CALIB_FILE)
    for i, p in enumerate(pairs):
        if not {"skill", "prompt", "correct", "incorrect"} <= set(p) or p["skill"] not in SKILLS:
            raise UserError(f"{CALIB_FILE}: pair {i} needs skill (one of {', '.join(SKILLS)}), prompt, correct, "
                            f"incorrect; got {sorted(p)}")
    return pairs


EncodedPair = NamedTuple("EncodedPair", [("prompt", list[int]), ("correct", list[int]), ("incorrect", list[int])])


def encode_pairs(tok: Tokenizer, pairs: list[dict], chat: str = "auto") -> list[EncodedPair]:
    """Token ids, the prompt formatted exactly as evaluation formats its family (chat template for math and gsm)."""
    out = []
    for p in pairs:
        prompt = encode_prompt(tok, p["prompt"], uses_chat(tok, SKILLS[p["skill"]], chat))
        enc = EncodedPair(prompt, tok.encode(p["correct"], bos=False), tok.encode(p["incorrect"], bos=False))
        if not (enc.prompt and enc.correct and enc.incorrect):
            raise UserError(f"calibration pair {p['prompt'][:40]!r}: prompt and completions need >= 1 token each")
        out.append(enc)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Small pure functions

def pool_hidden(h: torch.Tensor, start: int, end: int, pool: str) -> torch.Tensor:
    """h (..., T, D), completion at positions [start, end) -> (..., D): its last token or its mean."""
    return h[..., end - 1, :] if pool == "last" else h[..., start:end, :].mean(-2)


def distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """(..., D), (..., D) -> (...): 1 - cos(a, b) or ||a - b||_2, in float32. Identical vectors are at cosine
    distance 0 even when zero (a block whose update is zero for both sequences)."""
    a, b = a.float(), b.float()
    if kind == "cosine":
        cos = F.cosine_similarity(a, b, dim=-1)
        return torch.where((a == b).all(-1), torch.zeros_like(cos), 1 - cos)
    if kind == "l2":
        return (a - b).norm(dim=-1)
    raise ValueError(f"unknown distance {kind!r}; valid: {', '.join(CHOICES['sens_dist'])}")


def top_k(scores, k: int) -> list[int]:
    """The k highest-scoring layers (ties to the shallower layer), sorted."""
    return sorted(np.argsort(-np.asarray(scores), kind="stable")[:k].tolist())


def jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def mean_depth(layers, n_layers: int) -> float:
    """Mean relative depth l / (L - 1) of a layer set: 0 = first layer, 1 = last."""
    return float(np.mean([layer / max(n_layers - 1, 1) for layer in layers])) if layers else float("nan")


def verdict(r: float, p: float) -> str:
    return "no significant relation" if not p < ALPHA or r == 0 else "anti-localized" if r < 0 else "co-localized"


def influence_from_per_pair(per_pair: np.ndarray, method: str) -> np.ndarray:
    """(..., P, L, n_kv) gradients -> ||mean over pairs||_2, or (..., P, L) differences -> |mean over pairs|:
    both are functions of the mean over pairs, so a bootstrap over pairs only re-averages these arrays."""
    if method == "grad":
        return np.linalg.norm(per_pair.mean(axis=-3), axis=-1)
    return np.abs(per_pair.mean(axis=-2))


# ----------------------------------------------------------------------------------------------------------------
# The scores: every S reading from one pass of hidden states (4.2), I from identity GARFA on every layer (4.3)

@torch.inference_mode()
def hidden_distances(model: Transformer, encoded: list[EncodedPair]) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """{(pool, repr): {"cosine", "l2", "norm"}}, each (P, L): both distances of s+ vs s- and the mean norm of the
    pooled states, for all eight S readings from one forward pass per pair. Pooling is linear, so delta pools first:
    pool(h_l) - pool(h_{l-1}), where h_{-1} is the embedding output (the stream entering block 0)."""
    device, out = model.embed_tokens.weight.device, {}
    for pair in tqdm(encoded, desc="sensitivity", leave=False, dynamic_ncols=True):
        rows = [pair.prompt + pair.correct, pair.prompt + pair.incorrect]
        tokens = right_pad(rows).to(device)
        _, blocks = model.hidden_states(tokens, output_hidden_states=True)
        states = [model.embed_tokens(tokens)] + blocks  # L + 1 tensors (2, T, D)
        for pool in CHOICES["sens_pool"]:
            pooled = [torch.stack([pool_hidden(h[i].float(), len(pair.prompt), len(rows[i]), pool) for h in states])
                      for i in range(2)]  # 2 x (L + 1, D), float32: the default model's stream reaches ~2.4e4
            for repr_ in CHOICES["sens_repr"]:
                a, b = (x[1:] - x[:-1] if repr_ == "delta" else x[1:] for x in pooled)  # (L, D)
                d = out.setdefault((pool, repr_), {"cosine": [], "l2": [], "norm": []})
                d["cosine"].append(distance(a, b, "cosine"))
                d["l2"].append(distance(a, b, "l2"))
                d["norm"].append((a.norm(dim=-1) + b.norm(dim=-1)) / 2)
    return {key: {name: torch.stack(v).cpu().numpy().astype(np.float64) for name, v in d.items()}
            for key, d in out.items()}


@contextmanager
def identity_garfa(model: Transformer):
    """GARFA at log_scale = 0 on every layer for the duration; the caller's model comes back as it was."""
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    layers = apply_garfa(model, range(model.config.n_layers))  # raises if some layer already has GARFA
    try:
        yield [model.layers[i].self_attn.rope_freqs.log_scale for i in layers]
    finally:
        for i in layers:
            model.layers[i].self_attn.rope_freqs = None
        for name, p in model.named_parameters():
            p.requires_grad_(trainable[name])


def completion_batch(encoded: list[EncodedPair], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows prompt + correct, right-padded (B, T), and the mask of their completion tokens (B, T)."""
    mask = right_pad([[False] * len(p.prompt) + [True] * len(p.correct) for p in encoded], False, torch.bool)
    return right_pad([p.prompt + p.correct for p in encoded]).to(device), mask.to(device)


def completion_nll(model: Transformer, encoded: list[EncodedPair]) -> torch.Tensor:
    """Mean NLL over each pair's correct-completion tokens, shape (P,)."""
    nll, count = sequence_nll(model, *completion_batch(encoded, model.embed_tokens.weight.device))
    return nll / count


@torch.inference_mode()
def fd_per_pair(model: Transformer, encoded: list[EncodedPair], eps: float) -> np.ndarray:
    """(L_p(+eps) - L_p(-eps)) / (2 eps) per pair and layer, (P, L): all of layer l's frequencies times exp(+-eps),
    i.e. GARFA's rotation tables at log_scale = +-eps on every KV head of l, bit for bit.

    Blocks below l do not see a change at l, so one unperturbed pass gives the stream entering each block and only
    blocks l..L-1 run again, the +eps and -eps rows in one batch: (L + 1) / 2 forward passes' worth of blocks per
    sign instead of L. Pairs go in length order, FD_BATCH at a time (more pairs per batch only add padding).
    """
    L, device, inv_freq = model.config.n_layers, model.embed_tokens.weight.device, model.inv_freq.float()
    per_pair = np.zeros((len(encoded), L))
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].prompt) + len(encoded[i].correct))
    for first in tqdm(range(0, len(order), FD_BATCH), desc="influence (fd)", leave=False, dynamic_ncols=True):
        batch = order[first:first + FD_BATCH]
        (tokens, mask), B = completion_batch([encoded[i] for i in batch], device), len(batch)
        target = mask[:, 1:].repeat(2, 1)  # (2B, T - 1): position t predicts token t + 1
        row_of = torch.arange(2 * B, device=device)[:, None].expand_as(target)[target]  # (N,)
        positions = torch.arange(tokens.shape[1], device=device)[None]  # (1, T)
        _, blocks = model.hidden_states(tokens, output_hidden_states=True)
        entering = [model.embed_tokens(tokens)] + blocks[:-1]  # the stream entering each block, (B, T, D)
        shared = [t.expand(2 * B, -1, -1, -1) for t in rope_cos_sin(positions, inv_freq[None])]  # (2B, 1, T, hd)
        tables = [rope_cos_sin(positions, inv_freq[None] * torch.tensor(sign * eps).exp()) for sign in (1, -1)]
        perturbed = [torch.cat([t[i].expand(B, -1, -1, -1) for t in tables]) for i in range(2)]  # cos, sin
        for layer in range(L):
            x = entering[layer].repeat(2, 1, 1)  # (2B, T, D): rows at +eps, then the same rows at -eps
            for j in range(layer, L):
                x = model.layers[j](x, positions, inv_freq, perturbed if j == layer else shared)
            h = model.norm(x)[:, :-1][target]  # (N, D): one lm_head product for every target of the batch
            nll = F.cross_entropy(model.lm_head(h).float(), tokens.repeat(2, 1)[:, 1:][target], reduction="none")
            nll = (torch.zeros(2 * B, device=device).index_add(0, row_of, nll) / target.sum(-1)).double()  # (2B,)
            per_pair[batch, layer] = ((nll[:B] - nll[B:]) / (2 * eps)).cpu().numpy()
    return per_pair


def influence_per_pair(model: Transformer, encoded: list[EncodedPair], method: str, eps: float = 0.05) -> np.ndarray:
    """grad: dL_p / d log_scale_l per pair, (P, L, n_kv), one backward per pair; fd: fd_per_pair, (P, L)."""
    if method == "fd":
        return fd_per_pair(model, encoded, eps)
    grads = []
    with identity_garfa(model) as scales:
        for pair in tqdm(encoded, desc="influence (grad)", leave=False, dynamic_ncols=True):
            with torch.enable_grad():
                g = torch.autograd.grad(completion_nll(model, [pair]).sum(), scales)  # L x (n_kv,)
            grads.append(torch.stack(g).float().cpu().numpy())
    return np.stack(grads).astype(np.float64)


# ----------------------------------------------------------------------------------------------------------------
# The co-localization analysis (4.4)

def analyze(S, I, k: int, per_pair_S: np.ndarray, per_pair_I: np.ndarray, method: str, n_boot: int,
            seed: int) -> dict:
    """Spearman(S, I) with a bootstrap-over-pairs 95% interval, its partial version with depth held fixed,
    top-k sets, their overlap and depth, a verdict."""
    S, I = np.asarray(S, dtype=np.float64), np.asarray(I, dtype=np.float64)
    L, P = len(S), len(per_pair_S)
    r, p = stats.spearmanr(S, I)
    ci = [float("nan"), float("nan")]
    if n_boot:
        idx = np.random.default_rng(seed).integers(0, P, size=(n_boot, P))  # resampled pair indices
        boot = spearman_rows(per_pair_S[idx].mean(axis=1), influence_from_per_pair(per_pair_I[idx], method))
        ci = np.nanpercentile(boot, [2.5, 97.5]).tolist() if np.isfinite(boot).any() else ci
    partial_r, partial_p = partial_spearman(S, I, np.arange(L))
    sens, rope = top_k(S, k), top_k(I, k)
    return {"spearman": {"r": float(r), "p": float(p), "ci95": [float(c) for c in ci]}, "k": k,
            "partial_depth": {"r": partial_r, "p": partial_p, "verdict": verdict(partial_r, partial_p)},
            "sens_layers": sens, "rope_layers": rope,
            "jaccard": jaccard(sens, rope), "depth": {"sens": mean_depth(sens, L), "rope": mean_depth(rope, L)},
            "verdict": verdict(r, p)}


def score_layers(model: Transformer, tok: Tokenizer, readings: list[ScoreOptions]) -> list[dict]:
    """Both scores and their analysis, the scores.json dict (METHOD.md 5, without "model"), for each reading of one
    calibration set: they differ only in READINGS and share one hidden-state pass and one influence per method."""
    t0, first = time.time(), readings[0]
    if len({replace(o, **{c: getattr(first, c) for c in READINGS}) for o in readings}) > 1:
        raise ValueError("score_layers: the readings must share calibration set, seed, k and bootstrap")
    pairs = calibration_pairs(first)
    encoded = encode_pairs(tok, pairs, first.chat)
    dists = hidden_distances(model, encoded)
    per_I = {m: influence_per_pair(model, encoded, m, first.fd_eps) for m in sorted({o.influence for o in readings})}
    L = model.config.n_layers
    k, depth = min(first.k or math.ceil(L / 4), L), np.arange(L)
    results = []
    for o in readings:
        d = dists[o.sens_pool, o.sens_repr]
        S, I = d[o.sens_dist].mean(0), influence_from_per_pair(per_I[o.influence], o.influence)
        result = {"sensitivity": S.tolist(), "influence": I.tolist()} | analyze(
            S, I, k, d[o.sens_dist], per_I[o.influence], o.influence, o.bootstrap, o.seed)
        with np.errstate(invalid="ignore"):  # the l2 variant grows with the residual norm, i.e. with depth (4.2)
            result["depth_confound"] = {f"{name}_vs_depth_r": float(stats.spearmanr(d[name].mean(0), depth)[0])
                                        for name in ("l2", "cosine", "norm")}
        results.append(result | {"options": asdict(o), "n_pairs": len(pairs), "skills": [p["skill"] for p in pairs],
                                 "per_pair": {"sensitivity": d[o.sens_dist].tolist(),
                                              "influence": per_I[o.influence].tolist()},
                                 "seconds": round(time.time() - t0, 1)})
    return results


# ----------------------------------------------------------------------------------------------------------------
# The cache: one file per (weights, dtype, options, calibration file)

def scores_key(model_dir: str | Path, model: Transformer, options: ScoreOptions) -> str:
    calib = hashlib.sha256(CALIB_FILE.read_bytes()).hexdigest() if options.calib == "file" else "auto"
    key = {"version": SCORES_VERSION, "model": model_fingerprint(model_dir), "options": asdict(options),
           "dtype": str(model.embed_tokens.weight.dtype), "calib": calib}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def load_or_score(model_dir: str | Path, model: Transformer, tok: Tokenizer,
                  readings: list[ScoreOptions]) -> list[dict]:
    """score_layers, computing only the readings not already in the cache."""
    paths = [CACHE_DIR / f"scores-{scores_key(model_dir, model, o)}.json" for o in readings]
    todo = [i for i, path in enumerate(paths) if not path.is_file()]
    if todo:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        for i, result in zip(todo, score_layers(model, tok, [readings[i] for i in todo])):
            write_json(paths[i], result)
    if len(todo) < len(readings):
        print(f"scores: {len(readings) - len(todo)} of {len(readings)} reading(s) reused from {CACHE_DIR}")
    return [read_json(path) for path in paths]


def load_or_compute_scores(model_dir: str | Path, model: Transformer, tok: Tokenizer, options: ScoreOptions,
                           out_dir: str | Path | None = None) -> dict:
    """The scores.json dict, computed once per key; with out_dir, scores.json and layer_scores.png land there."""
    result = load_or_score(model_dir, model, tok, [options])[0] | {"model": str(model_dir)}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "scores.json", result)
        write_atomic(out_dir / "layer_scores.png", report.plot_scores(result))
    return result


# ----------------------------------------------------------------------------------------------------------------
# The multiverse (4.4b): every reading on every calibration set

def multiverse(model_dir: Path, model: Transformer, tok: Tokenizer, base: ScoreOptions,
               calib_seeds: tuple[int, ...]) -> dict:
    """One record per (calibration set, reading): the shipped pairs with base.seed, then one auto draw per seed."""
    sets = [("file", replace(base, calib="file"))]
    sets += [(f"auto seed {s}", replace(base, calib="auto", seed=s)) for s in calib_seeds]
    records, start = [], time.time()
    for n, (label, calib) in enumerate(sets, 1):
        t0 = time.time()
        readings = [replace(calib, **dict(zip(READINGS, values))) for values in itertools.product(
            *(CHOICES[c] for c in READINGS))]
        for result in load_or_score(model_dir, model, tok, readings):
            records.append({"calib_set": label} | {k: v for k, v in result.items() if k != "per_pair"})
        print(f"calibration set {n}/{len(sets)} ({label}): {len(readings)} readings in {time.time() - t0:.0f} s")
    about = {f.name: f.metadata["help"].split(":")[0] for f in fields(ScoreOptions) if f.name in READINGS}
    return {"model": str(model_dir), "records": records, "about": about,
            "choices": {c: list(CHOICES[c]) for c in ("calib",) + READINGS}, "seconds": round(time.time() - start, 1)}


# ----------------------------------------------------------------------------------------------------------------
# Command line

def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p, f"HF model directory (default: {DEFAULT_MODEL_DIR.name}, prepared on first use)")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default: runs/sensitivity-<model>, or runs/multiverse-<model>)")
    p.add_argument("--multiverse", action="store_true", help="all 16 readings (--sens-pool x --sens-repr x "
                   "--sens-dist x --influence) on the shipped pairs and one --calib auto draw per --calib-seeds (those five "
                   "options are set by it)")
    p.add_argument("--calib-seeds", type=comma_ints, default="0,1,2,3,4",
                   help="--multiverse auto draws; \"\" for the shipped pairs only (default: %(default)s)")
    add_score_args(p.add_argument_group("layer scoring (METHOD.md 4.1-4.4)"))
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun, rank 0 scores alone (scoring is cheap next to training)
        return
    if args.compile:
        from tools.compiled import check_toolchain, compile_line, compile_model

        check_toolchain(torch.device(args.device))
    model_dir = ensure_model(args.model)
    options = options_from_args(args)
    t0 = time.time()
    model = Transformer.from_pretrained(model_dir, dtype=resolve_dtype(args.dtype, args.device), device=args.device)
    if args.compile:
        compile_model(model)
    tok = Tokenizer.from_pretrained(model_dir)
    kind = "multiverse" if args.multiverse else "layer-score run"
    out = args.out or RUNS_DIR / f"{'multiverse' if args.multiverse else 'sensitivity'}-{model_dir.name}"
    config = {"kind": kind, "model": str(model_dir), "options": asdict(options),
              "calib_seeds": list(args.calib_seeds) if args.multiverse else None}
    # Re-running the same command into the same --out rewrites the same files; other settings need another --out.
    with claim_output(out, config, resume=True, resume_keys=tuple(config), kind=kind):
        if not args.multiverse:
            print(report.scores_summary(load_or_compute_scores(model_dir, model, tok, options, out_dir=out)))
            print(f"-> {out / 'scores.json'}, {out / 'layer_scores.png'} ({time.time() - t0:.0f} s)")
        else:
            print(report.write_multiverse(out, multiverse(model_dir, model, tok, options, args.calib_seeds)))
            print(f"-> {out / 'multiverse.json'}, multiverse.md, multiverse.png ({time.time() - t0:.0f} s)")
    if args.compile:
        print(compile_line())


if __name__ == "__main__":
    run(main)
