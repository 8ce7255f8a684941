"""Layer scoring and the co-localization analysis (METHOD.md sections 4.1-4.4b).

    python sensitivity.py [--model DIR] [--out DIR] [--calib file|auto] [--sens-dist cosine|l2|rel-l2] ...
    python sensitivity.py --multiverse [--calib-seeds 0,1,2,3,4] [--n-pairs 15]    # all 48 readings at once
    python sensitivity.py --multiverse --random-weights     # the same on a random-weight copy of --model (a null)

S_l (`sensitivity_score`): how far apart layer l's residual stream ends up for prompt + correct vs prompt + incorrect
completion, averaged over calibration pairs. I_l (`rope_influence`): the norm of the gradient of the mean completion
NLL w.r.t. layer l's identity-initialised GARFA `log_scale` (or a central finite difference). Then Spearman(S, I)
over layers with p-values that allow for smooth profiles, with depth held fixed, top-k sets, a BCa interval over
pairs, reference rankings, a verdict. Every reading comes from one hidden-state pass per calibration set (`hidden_pass`,
tested equal to the definitions). Scores are cached per (weights, options) under runs/.cache.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from tqdm import tqdm

from garfa import apply_garfa
from model import ModelConfig, Transformer, rope_cos_sin, sequence_nll
from prepare import ensure_model
from support import multiverse_report, report
from support.batching import right_pad
from support.calibration import EncodedPair, draw_pairs, encode_pairs, read_pairs
from support.cli import Parser, add_model_options, add_options, comma_ints, from_args, option, resolve_dtype, run
from support.files import (CACHE_DIR, CONFIG_FILE, DEFAULT_MODEL_DIR, ROOT, RUNS_DIR, UserError, claim_output,
                           model_fingerprint, read_json, write_atomic, write_json)
from support.layer_references import block_influence, layer_drop, logit_lens_margin, reference_spearman
from support.stats import ALPHA, NULL_SURROGATES, colocalization, spearman_rows
from support.tasks import CHAT_MODES, SKILLS
from support.tokenizer import Tokenizer

SCORES_VERSION = "4"  # bump when a score's definition changes, so cached scores are recomputed
CALIB_FILE = ROOT / "calibration_pairs.json"
READINGS = ("sens_pool", "sens_repr", "sens_dist", "sens_control", "influence")  # what the multiverse crosses (4.4b)
FD_BATCH = 1  # pairs per finite-difference batch (2 rows: at +eps and -eps); 1 measured fastest on 2 CPU cores
LAYER_DROP_CALIB = ("file",)  # sets scored with the layer-drop reference, 30% of a set's time (METHOD.md 4.4)
NULL_SEED = 0  # one surrogate draw for every variant, so the joint test keeps the variants' dependence
RANDOM_WEIGHTS_SEED = 0  # --random-weights: the one random copy of a model


@dataclass(frozen=True)
class ScoreOptions:
    calib: str = option("file", "calibration pairs: the shipped calibration_pairs.json, or drawn from training data",
                        ("file", "auto"))
    n_pairs: int = option(15, "pairs drawn by --calib auto")
    sens_pool: str = option("last", "pooling of the completion tokens: the last one, or their mean", ("last", "mean"))
    sens_repr: str = option("output", "representation: the stream after block l, or its update h_l - h_{l-1}",
                            ("output", "delta"))
    sens_dist: str = option("cosine", "distance of the two streams: 1 - cosine, Euclidean (which grows with the "
                            "residual norm, i.e. with depth), or Euclidean over the mean norm",
                            ("cosine", "l2", "rel-l2"))
    sens_control: str = option("off", "control for \"two different strings\": subtract the distance of the incorrect "
                               "completion to a second incorrect one", ("off", "on"))
    influence: str = option("grad", "RoPE-influence estimator: gradient norm w.r.t. GARFA log_scale, or central "
                            "finite difference", ("grad", "fd"))
    fd_eps: float = option(0.05, "log-frequency step of --influence fd")
    k: int | None = option(None, "top-k layers per score (default: ceil(L / 4))", type=int)
    bootstrap: int = option(1000, "resamples over pairs for the 95% BCa interval of r_s")
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

    def resolve_k(self, n_layers: int) -> int:
        """k for a model of n_layers layers; a --k beyond the model is a mistake, not something to clamp."""
        if self.k is not None and self.k > n_layers:
            raise UserError(f"--k {self.k}: the model has {n_layers} layers; pass --k {n_layers} or fewer")
        return self.k or math.ceil(n_layers / 4)


CHOICES = {f.name: f.metadata["choices"] for f in fields(ScoreOptions) if f.metadata["choices"]}


def add_score_args(group, skip: tuple[str, ...] = ()) -> None:
    """The scoring options on an argparse parser or group; the caller may own some (train.py: --seed, --chat)."""
    add_options(group, ScoreOptions, skip=skip)


def options_from_args(args, **overrides) -> ScoreOptions:
    return from_args(ScoreOptions, args, **overrides)


# ----------------------------------------------------------------------------------------------------------------
# Calibration pairs (4.1): the shipped file, or pairs drawn from the training mixture

def calibration_pairs(options: ScoreOptions) -> list[dict]:
    """The shipped pairs, or --n-pairs drawn from the training mixture shuffled by --seed."""
    if options.calib == "auto":
        from data import training_mixture

        return draw_pairs(training_mixture(options.seed), options.n_pairs, options.seed)
    return read_pairs(CALIB_FILE)


# ----------------------------------------------------------------------------------------------------------------
# Small pure functions

def pool_hidden(h: torch.Tensor, start: int, end: int, pool: str) -> torch.Tensor:
    """h (..., T, D), completion at positions [start, end) -> (..., D): its last token or its mean."""
    return h[..., end - 1, :] if pool == "last" else h[..., start:end, :].mean(-2)


def distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """(..., D), (..., D) -> (...): 1 - cos(a, b), ||a - b||_2, or ||a - b|| / mean(||a||, ||b||) (rel-l2, the
    scale-free l2), in float32. Identical vectors are at distance 0 even when zero (a block whose update is zero for
    both sequences)."""
    a, b = a.float(), b.float()
    same = (a == b).all(-1)
    if kind == "cosine":
        cos = F.cosine_similarity(a, b, dim=-1)
        return torch.where(same, torch.zeros_like(cos), 1 - cos)
    if kind == "l2":
        return (a - b).norm(dim=-1)
    if kind == "rel-l2":
        scale = (a.norm(dim=-1) + b.norm(dim=-1)) / 2
        return torch.where(same, torch.zeros_like(scale), (a - b).norm(dim=-1) / scale)
    raise ValueError(f"unknown distance {kind!r}; valid: {', '.join(CHOICES['sens_dist'])}")


def influence_from_per_pair(per_pair: np.ndarray, method: str) -> np.ndarray:
    """(..., P, L, n_kv) gradients -> ||mean over pairs||_2, or (..., P, L) differences -> |mean over pairs|:
    both are functions of the mean over pairs, so a bootstrap over pairs only re-averages these arrays."""
    if method == "grad":
        return np.linalg.norm(per_pair.mean(axis=-3), axis=-1)
    return np.abs(per_pair.mean(axis=-2))


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


# ----------------------------------------------------------------------------------------------------------------
# The two definitions, as METHOD.md 4.2 and 4.3 write them

def stream_profile(model: Transformer, tokens: list[int], start: int, pool: str, repr_: str) -> torch.Tensor:
    """(L, D): the pooled residual stream after each block (output) or each block's own update (delta)."""
    x = torch.tensor([tokens], device=model.embed_tokens.weight.device)
    _, blocks = model.hidden_states(x, output_hidden_states=True)
    h = torch.stack([pool_hidden(s[0].float(), start, len(tokens), pool) for s in [model.embed_tokens(x)] + blocks])
    return h[1:] - h[:-1] if repr_ == "delta" else h[1:]  # h_{-1}, the stream entering block 0, is the embedding


@torch.inference_mode()
def sensitivity_score(model: Transformer, encoded: list[EncodedPair], pool: str = "last", repr_: str = "output",
                      dist: str = "cosine", control: str = "off") -> np.ndarray:
    """S_l (METHOD.md 4.2): the mean over pairs of dist(h_l(prompt + correct), h_l(prompt + incorrect)); with the
    control on, minus dist(h_l(prompt + incorrect), h_l(prompt + incorrect2)). Shape (L,)."""
    S = []
    for p in encoded:
        plus, minus = (stream_profile(model, p.prompt + c, len(p.prompt), pool, repr_)
                       for c in (p.correct, p.incorrect))
        d = distance(plus, minus, dist)
        if control == "on":
            d = d - distance(minus, stream_profile(model, p.prompt + p.incorrect2, len(p.prompt), pool, repr_), dist)
        S.append(d)
    return torch.stack(S).mean(0).cpu().numpy().astype(np.float64)


def rope_influence(model: Transformer, encoded: list[EncodedPair], method: str = "grad",
                   eps: float = 0.05) -> np.ndarray:
    """I_l (METHOD.md 4.3): GARFA at identity on every layer, loss = the mean over pairs of the mean NLL of the correct
    completion. grad: ||d loss / d log_scale_l||_2 over layer l's KV heads; fd: |loss(+eps) - loss(-eps)| / (2 eps)
    with all of layer l's log_scales at +-eps. Shape (L,)."""
    with identity_garfa(model) as scales:
        if method == "grad":
            with torch.enable_grad():
                grads = torch.autograd.grad(completion_nll(model, encoded).mean(), scales)
            return np.array([g.double().norm().item() for g in grads])
        I = []
        with torch.no_grad():
            for scale in scales:
                loss = []
                for sign in (1, -1):
                    scale.fill_(sign * eps)
                    loss.append(completion_nll(model, encoded).double().mean().item())
                scale.zero_()
                I.append(abs(loss[0] - loss[1]) / (2 * eps))
        return np.array(I)


# ----------------------------------------------------------------------------------------------------------------
# The fast path: every S reading and two reference rankings from one pass of hidden states per pair

@torch.inference_mode()
def hidden_pass(model: Transformer, encoded: list[EncodedPair]) -> dict:
    """{"S": {(pool, repr, dist, control): (P, L)}, "norm": {(pool, repr): (P, L)}, "logit_lens": (P, L),
    "block_influence": (P, L)}: every S reading from one forward pass of each pair's three rows (prompt + correct,
    + incorrect, + incorrect2). Pooling is linear, so delta pools first: pool(h_l) - pool(h_{l-1}). The logit-lens
    gain at l is the margin after block l minus the one entering it; Block Influence is 1 - cos(h_in, h_out)."""
    device, out = model.embed_tokens.weight.device, {"S": {}, "norm": {}, "logit_lens": [], "block_influence": []}
    for pair in tqdm(encoded, desc="sensitivity", leave=False, dynamic_ncols=True):
        rows = [pair.prompt + c for c in (pair.correct, pair.incorrect, pair.incorrect2)]
        tokens = right_pad(rows).to(device)
        _, blocks = model.hidden_states(tokens, output_hidden_states=True)
        states = [model.embed_tokens(tokens)] + blocks  # L + 1 tensors (3, T, D)
        for pool in CHOICES["sens_pool"]:  # float32: the default model's stream reaches ~2.4e4
            pooled = torch.stack([torch.stack([pool_hidden(h[i].float(), len(pair.prompt), len(rows[i]), pool)
                                               for h in states]) for i in range(3)])  # (3, L + 1, D)
            for repr_ in CHOICES["sens_repr"]:
                plus, minus, minus2 = pooled[:, 1:] - pooled[:, :-1] if repr_ == "delta" else pooled[:, 1:]  # (L, D)
                out["norm"].setdefault((pool, repr_), []).append((plus.norm(dim=-1) + minus.norm(dim=-1)) / 2)
                for dist in CHOICES["sens_dist"]:
                    d = distance(plus, minus, dist)
                    out["S"].setdefault((pool, repr_, dist, "off"), []).append(d)
                    out["S"].setdefault((pool, repr_, dist, "on"), []).append(d - distance(minus, minus2, dist))
        out["logit_lens"].append(logit_lens_margin(model, states, pair).diff())
        out["block_influence"].append(block_influence(states, len(rows[0])))
    numpy = lambda v: torch.stack(v).cpu().numpy().astype(np.float64)
    return {"S": {k: numpy(v) for k, v in out["S"].items()}, "norm": {k: numpy(v) for k, v in out["norm"].items()},
            "logit_lens": numpy(out["logit_lens"]), "block_influence": numpy(out["block_influence"])}


@torch.inference_mode()
def fd_per_pair(model: Transformer, encoded: list[EncodedPair], eps: float) -> np.ndarray:
    """(L_p(+eps) - L_p(-eps)) / (2 eps) per pair and layer, (P, L): all of layer l's frequencies times exp(+-eps),
    i.e. GARFA's rotation tables at log_scale = +-eps on every KV head of l, bit for bit.

    Blocks below l do not see a change at l, so one unperturbed pass gives the stream entering each block; block j
    then runs once, on the rows of every layer perturbed below it plus layer j's own +eps and -eps rows. Pairs go in
    length order, FD_BATCH at a time (more pairs per batch only add padding)."""
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
        shared = rope_cos_sin(positions, inv_freq[None])  # (1, 1, T, hd) cos, sin
        tables = [rope_cos_sin(positions, inv_freq[None] * torch.tensor(sign * eps).exp()) for sign in (1, -1)]
        perturbed = [torch.cat([t[i].expand(B, -1, -1, -1) for t in tables]) for i in range(2)]  # cos, sin
        x = entering[0][:0]  # (2B l, T, D): the rows of layers 0..l-1, each at +eps then at -eps
        for j, block in enumerate(model.layers):
            x = block(x, positions, inv_freq, [t.expand(len(x), -1, -1, -1) for t in shared]) if j else x
            x = torch.cat([x, block(entering[j].repeat(2, 1, 1), positions, inv_freq, perturbed)])  # + layer j
        for layer in range(L):
            h = model.norm(x[2 * B * layer:2 * B * (layer + 1)])[:, :-1][target]  # (N, D): one lm_head product
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


def layer_drop_per_pair(model: Transformer, encoded: list[EncodedPair]) -> np.ndarray:
    """(P, L): the change in each pair's mean correct-completion NLL when block l is skipped."""
    return np.stack([layer_drop(model, *completion_batch([pair], model.embed_tokens.weight.device))
                     for pair in tqdm(encoded, desc="layer drop", leave=False, dynamic_ncols=True)])


# ----------------------------------------------------------------------------------------------------------------
# The co-localization analysis (4.4): support/stats.py's colocalization, its interval resampling calibration pairs

def analyze(S, I, k: int, per_pair_S: np.ndarray, per_pair_I: np.ndarray, method: str, n_boot: int,
            seed: int) -> dict:
    statistic = lambda idx: spearman_rows(per_pair_S[idx].mean(-2), influence_from_per_pair(per_pair_I[idx], method))
    return colocalization(S, I, k, statistic, len(per_pair_S), n_boot, seed, NULL_SEED)


def score_layers(model: Transformer, tok: Tokenizer, readings: list[ScoreOptions]) -> list[dict]:
    """Both scores and their analysis, the scores.json dict (METHOD.md 5, without "model"), for each reading of one
    calibration set: they differ only in READINGS and share one hidden-state pass and one influence per method."""
    t0, first, L = time.time(), readings[0], model.config.n_layers
    if len({replace(o, **{c: getattr(first, c) for c in READINGS}) for o in readings}) > 1:
        raise ValueError("score_layers: the readings must share calibration set, seed, k and bootstrap")
    k = first.resolve_k(L)
    pairs = calibration_pairs(first)
    encoded = encode_pairs(tok, pairs, first.chat)
    hidden = hidden_pass(model, encoded)
    references = {"logit_lens": hidden["logit_lens"].mean(0), "block_influence": hidden["block_influence"].mean(0)}
    if first.calib in LAYER_DROP_CALIB:
        references["layer_drop"] = layer_drop_per_pair(model, encoded).mean(0)
    per_I = {m: influence_per_pair(model, encoded, m, first.fd_eps) for m in sorted({o.influence for o in readings})}
    family = np.array([SKILLS[p["skill"]] for p in pairs])
    results = []
    for o in readings:
        per_S = hidden["S"][o.sens_pool, o.sens_repr, o.sens_dist, o.sens_control]
        S, I = per_S.mean(0), influence_from_per_pair(per_I[o.influence], o.influence)
        result = {"sensitivity": S.tolist(), "influence": I.tolist()} | analyze(
            S, I, k, per_S, per_I[o.influence], o.influence, o.bootstrap, o.seed)
        with np.errstate(invalid="ignore", divide="ignore"):  # l2 grows with the residual norm, i.e. with depth (4.2)
            confounds = {d: hidden["S"][o.sens_pool, o.sens_repr, d, "off"] for d in CHOICES["sens_dist"]}
            confounds["norm"] = hidden["norm"][o.sens_pool, o.sens_repr]
            result["depth_confound"] = {f"{name}_vs_depth_r": float(stats.spearmanr(x.mean(0), np.arange(L))[0])
                                        for name, x in confounds.items()}
            result["by_family"] = {f: {"sensitivity": per_S[family == f].mean(0).tolist(),
                                       "spearman_r": float(stats.spearmanr(per_S[family == f].mean(0), I)[0])}
                                   for f in sorted(set(family))}
        result["references"] = {name: v.tolist() for name, v in references.items()}
        result["reference_spearman"] = reference_spearman(references, S, I)
        results.append(result | {"options": asdict(o), "n_pairs": len(pairs), "skills": [p["skill"] for p in pairs],
                                 "per_pair": {"sensitivity": per_S.tolist(), "influence": per_I[o.influence].tolist()},
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
    return {"model": model_dir.name, "records": records, "about": about,
            "choices": {c: list(CHOICES[c]) for c in ("calib",) + READINGS}, "seconds": round(time.time() - start, 1),
            "null": {"surrogates": NULL_SURROGATES, "seed": NULL_SEED, "alpha": ALPHA}}


# ----------------------------------------------------------------------------------------------------------------
# Command line

def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p, f"HF model directory (default: {DEFAULT_MODEL_DIR.name}, prepared on first use)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: runs/sensitivity-<model>, or "
                   "runs/multiverse-<model>, with -random-weights appended under --random-weights)")
    p.add_argument("--multiverse", action="store_true", help="all 48 readings (--sens-pool x --sens-repr x "
                   "--sens-dist x --sens-control x --influence) on the shipped pairs and one --calib auto draw per "
                   "--calib-seeds (those six options are set by it)")
    p.add_argument("--calib-seeds", type=comma_ints, default="0,1,2,3,4",
                   help="--multiverse auto draws; \"\" for the shipped pairs only (default: %(default)s)")
    p.add_argument("--random-weights", action="store_true", help="score a random-weight copy of --model (same config "
                   "and tokenizer, fixed seed): the null a real model's multiverse figure shows as a grey band")
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
    options.resolve_k(ModelConfig.from_json(model_dir / "config.json").n_layers)  # a --k beyond the model stops here
    name = f"{'multiverse' if args.multiverse else 'sensitivity'}-{model_dir.name}"
    null_dir = RUNS_DIR / f"{name}-random-weights"  # where the random-weight run writes by default
    out = args.out or (null_dir if args.random_weights else RUNS_DIR / name)
    kind = "multiverse" if args.multiverse else "layer-score run"
    config = {"kind": kind, "model": str(model_dir), "options": asdict(options), "random_weights": args.random_weights,
              "calib_seeds": list(args.calib_seeds) if args.multiverse else None}
    # Re-running the same command into the same --out rewrites the same files; other settings need another --out.
    with claim_output(out, config, (out / CONFIG_FILE).is_file(), resume_keys=tuple(config), kind=kind):
        t0, scored_dir = time.time(), model_dir
        if args.random_weights:  # what the architecture and the metric give without training
            from tools.random_checkpoint import write_random_copy

            scored_dir = write_random_copy(model_dir, CACHE_DIR / f"random-weights-{model_dir.name}-seed"
                                           f"{RANDOM_WEIGHTS_SEED}", seed=RANDOM_WEIGHTS_SEED)
        model = Transformer.from_pretrained(scored_dir, resolve_dtype(args.dtype, args.device), args.device)
        if args.compile:
            compile_model(model)
        tok = Tokenizer.from_pretrained(scored_dir)
        if not args.multiverse:
            print(report.scores_summary(load_or_compute_scores(scored_dir, model, tok, options, out_dir=out)))
            print(f"-> {out / 'scores.json'}, {out / 'layer_scores.png'} ({time.time() - t0:.0f} s)")
        else:
            mv = multiverse(scored_dir, model, tok, options, args.calib_seeds)
            mv |= {"model": model_dir.name, "random_weights": args.random_weights}
            null = null_dir / "multiverse.json"
            if not args.random_weights and null.is_file():
                shown = null.relative_to(ROOT) if null.is_relative_to(ROOT) else null.name
                mv["null_model"] = multiverse_report.null_model_record(read_json(null), str(shown))
            print(multiverse_report.write_multiverse(out, mv))
            print(f"-> {out / 'multiverse.json'}, multiverse.md, multiverse.png, layer_profiles.png "
                  f"({time.time() - t0:.0f} s)")
    if args.compile:
        print(compile_line())


if __name__ == "__main__":
    run(main)
