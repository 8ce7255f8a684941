"""Layer scoring and the co-localization analysis (SPEC sections 4.1-4.4).

    python sensitivity.py [--model DIR] [--out DIR] [--calib file|auto] [--sens-dist cosine|l2] ...

S_l (sensitivity): how far apart layer l's residual stream ends up for prompt + correct vs prompt + incorrect
completion, averaged over calibration pairs. I_l (RoPE influence): the norm of the gradient of the mean completion
NLL w.r.t. layer l's identity-initialised GARFA `log_scale` (or a central finite difference). Then Spearman(S, I)
over layers, top-k sets, their overlap and depth, a bootstrap over pairs, a verdict and one figure. Results are
cached per (weights, options) under runs/.cache, so train.py and repeated runs score once.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from scipy import stats

from evaluate import LETTERS, encode_prompt, uses_chat
from garfa import apply_garfa
from model import Tokenizer, Transformer, right_pad, sequence_nll
from prepare import CACHE_DIR, DEFAULT_MODEL_DIR, ROOT, RUNS_DIR, ensure_model, write_atomic

SCORES_VERSION = "1"  # bump when a score's definition changes, so cached scores are recomputed
CALIB_FILE = ROOT / "calibration_pairs.json"
SKILLS = {"knowledge_mc": "mc", "science_mc": "mc", "code": "code", "competition_math": "math",
          "grade_school_math": "gsm", "science_reasoning": "mc"}  # skill -> prompt family (evaluate.FAMILIES)
SOURCE_SKILL = {"mmlu": "knowledge_mc", "arc_easy": "science_reasoning", "openbookqa": "science_reasoning",
                "sciq": "science_reasoning", "math": "competition_math", "gsm8k": "grade_school_math", "mbpp": "code"}
AUTO_MAX_CHARS = 500  # auto pairs keep short completions, so scoring stays fast
CODE_MUTATIONS = ((" <= ", " < "), (" < ", " <= "), (" >= ", " > "), (" > ", " >= "), (" == ", " != "),
                  (" != ", " == "), (" + ", " - "), (" - ", " + "), (" and ", " or "), ("True", "False"))
SCORE_BATCH = 16  # sequences per forward pass of the finite-difference influence
ALPHA = 0.05  # significance level of the verdict
CHOICES = dict(calib=("file", "auto"), sens_pool=("last", "mean"), sens_repr=("output", "delta"),
               sens_dist=("cosine", "l2"), influence=("grad", "fd"), chat=("auto", "off"))


@dataclass(frozen=True)
class ScoreOptions:
    calib: str = "file"
    n_pairs: int = 15  # pairs drawn by --calib auto
    sens_pool: str = "last"
    sens_repr: str = "output"
    sens_dist: str = "cosine"
    influence: str = "grad"
    fd_eps: float = 0.05
    k: int | None = None  # None -> ceil(L / 4)
    bootstrap: int = 1000
    seed: int = 0
    chat: str = "auto"  # chat template where evaluation uses it (math, gsm) and the checkpoint has one

    def __post_init__(self):
        for key, valid in CHOICES.items():
            if getattr(self, key) not in valid:
                raise ValueError(f"ScoreOptions.{key} = {getattr(self, key)!r}; valid: {', '.join(valid)}")
        if self.n_pairs < 2 or self.bootstrap < 0 or self.fd_eps <= 0 or (self.k is not None and self.k < 1):
            raise ValueError(f"need n_pairs >= 2, bootstrap >= 0, fd_eps > 0, k >= 1; got {self}")


def add_score_args(group) -> None:
    """The scoring options on an argparse parser or group (--seed, --model, --out belong to the caller)."""
    group.add_argument("--calib", choices=CHOICES["calib"], default="file",
                       help="calibration pairs: the shipped calibration_pairs.json, or drawn from training data")
    group.add_argument("--n-pairs", type=int, default=15, help="pairs drawn by --calib auto")
    group.add_argument("--sens-pool", choices=CHOICES["sens_pool"], default="last",
                       help="pool the completion tokens: last token or mean")
    group.add_argument("--sens-repr", choices=CHOICES["sens_repr"], default="output",
                       help="residual stream after the block, or the block's own update h_l - h_{l-1}")
    group.add_argument("--sens-dist", choices=CHOICES["sens_dist"], default="cosine",
                       help="1 - cosine, or Euclidean (grows with depth: see the confound line)")
    group.add_argument("--influence", choices=CHOICES["influence"], default="grad",
                       help="gradient norm w.r.t. GARFA log_scale, or central finite difference")
    group.add_argument("--fd-eps", type=float, default=0.05, help="log-frequency step of --influence fd")
    group.add_argument("--k", type=int, default=None, help="top-k layers per score (default ceil(L/4))")
    group.add_argument("--bootstrap", type=int, default=1000, help="resamples over pairs for the 95%% CI")


def options_from_args(args) -> ScoreOptions:
    chat = getattr(args, "chat", "auto")  # train.py's --no-chat gives a bool, our --chat a mode
    chat = chat if isinstance(chat, str) else ("auto" if chat else "off")
    return ScoreOptions(calib=args.calib, n_pairs=args.n_pairs, sens_pool=args.sens_pool, sens_repr=args.sens_repr,
                        sens_dist=args.sens_dist, influence=args.influence, fd_eps=args.fd_eps, k=args.k,
                        bootstrap=args.bootstrap, seed=args.seed, chat=chat)


# ----------------------------------------------------------------------------------------------------------------
# Calibration pairs (4.1): the shipped file, or pairs drawn from the training mixture

def mutate_answer(item: dict, rng: np.random.Generator) -> str | None:
    """A wrong version of a training item's completion, or None if this item has no simple mutation."""
    text, family = item["completion"], item["family"]
    if family == "mc":
        wrong = rng.choice([i for i in range(len(item["choices"])) if i != item["answer"]])
        return f" {LETTERS[wrong]}"
    if family in ("math", "gsm"):  # change the final integer answer by a small nonzero amount
        pattern = r"\\boxed\{(-?\d+)\}" if family == "math" else r"The answer is (-?\d+)\.$"
        found = list(re.finditer(pattern, text))
        if not found:
            return None
        m = found[-1]
        wrong = int(m.group(1)) + int(rng.choice([-2, -1, 1, 2]))
        return text[:m.start(1)] + str(wrong) + text[m.end(1):]
    for old, new in (CODE_MUTATIONS[i] for i in rng.permutation(len(CODE_MUTATIONS))):
        if old in text:  # flip one comparison, operator or constant of the reference solution
            return text.replace(old, new, 1)
    return None


def auto_pairs(n: int, seed: int) -> list[dict]:
    """n pairs from the training mixture (evaluation items already removed and checked there), families in turn."""
    from data import FAMILY, training_mixture

    rng, mixture = np.random.default_rng(seed), training_mixture(seed)  # shuffled by the seed
    pool = {f: [x for x in mixture if x["family"] == f and len(x["completion"]) <= AUTO_MAX_CHARS]
            for f in ("mc", "math", "gsm", "code")}
    pairs, families = [], list(pool)
    while len(pairs) < n:
        family = families[len(pairs) % len(families)]
        if not pool[family]:
            raise ValueError(f"--calib auto: ran out of usable {family} training items after {len(pairs)} pairs")
        item = pool[family].pop(0)
        wrong = mutate_answer(item, rng)
        if wrong is not None and wrong != item["completion"]:
            assert FAMILY[item["source"]] == family
            pairs.append(dict(skill=SOURCE_SKILL[item["source"]], prompt=item["prompt"], correct=item["completion"],
                              incorrect=wrong, source=item["source"], id=item["id"]))
    return pairs


def calibration_pairs(options: ScoreOptions) -> list[dict]:
    if options.calib == "auto":
        return auto_pairs(options.n_pairs, options.seed)
    pairs = json.loads(CALIB_FILE.read_text())
    for i, p in enumerate(pairs):
        if set(p) < {"skill", "prompt", "correct", "incorrect"} or p["skill"] not in SKILLS:
            raise ValueError(f"{CALIB_FILE}: pair {i} needs skill (one of {', '.join(SKILLS)}), prompt, correct, "
                             f"incorrect; got {sorted(p)}")
    return pairs


class EncodedPair(NamedTuple):
    prompt: list[int]
    correct: list[int]
    incorrect: list[int]


def encode_pairs(tok: Tokenizer, pairs: list[dict], chat: str = "auto") -> list[EncodedPair]:
    """Token ids, the prompt formatted exactly as evaluation formats its family (chat template for math and gsm)."""
    out = []
    for p in pairs:
        enc = EncodedPair(encode_prompt(tok, p["prompt"], uses_chat(tok, SKILLS[p["skill"]], chat)), tok.encode(p["correct"], bos=False),
                          tok.encode(p["incorrect"], bos=False))
        if not (enc.prompt and enc.correct and enc.incorrect):
            raise ValueError(f"calibration pair {p['prompt'][:40]!r}: prompt and completions need >= 1 token each")
        out.append(enc)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Small pure functions

def pool_hidden(h: torch.Tensor, start: int, end: int, pool: str) -> torch.Tensor:
    """h (..., T, D), completion at positions [start, end) -> (..., D): its last token or its mean."""
    return h[..., end - 1, :] if pool == "last" else h[..., start:end, :].mean(-2)


def distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """(..., D), (..., D) -> (...): 1 - cos(a, b) or ||a - b||_2, in float32.

    Identical vectors are at cosine distance 0 even when zero (a block whose update is zero for both sequences).
    """
    a, b = a.float(), b.float()
    if kind == "cosine":
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
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
    if p < ALPHA and r < 0:
        return "anti-localized"
    if p < ALPHA and r > 0:
        return "co-localized"
    return "no significant relation"


def influence_from_per_pair(per_pair: np.ndarray, method: str) -> np.ndarray:
    """(..., P, L, n_kv) gradients -> ||mean over pairs||_2, or (..., P, L) differences -> |mean over pairs|.

    Both are functions of the mean over pairs, so a bootstrap over pairs only re-averages these arrays.
    """
    if method == "grad":
        return np.linalg.norm(per_pair.mean(axis=-3), axis=-1)
    return np.abs(per_pair.mean(axis=-2))


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman r of each row pair of (N, L) arrays: Pearson r of average ranks (scipy's definition)."""
    ra, rb = stats.rankdata(a, axis=-1), stats.rankdata(b, axis=-1)
    ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant row has no rank correlation: NaN
        return (ra * rb).sum(-1) / np.sqrt((ra ** 2).sum(-1) * (rb ** 2).sum(-1))


# ----------------------------------------------------------------------------------------------------------------
# The scores: S from two forward passes per pair (4.2), I from identity GARFA on every layer (4.3)

@torch.inference_mode()
def hidden_distances(model: Transformer, encoded: list[EncodedPair], pool: str, repr_: str) -> dict[str, np.ndarray]:
    """Per pair and layer: cosine and l2 distances of s+ vs s-, and the mean norm of the pooled states (P, L).

    Pooling is linear, so the delta repr pools first and differences after: pool(h_l) - pool(h_{l-1}), where
    h_{-1} is the embedding output (the stream before block 0; model.hidden_states returns only block outputs).
    """
    from tqdm import tqdm

    device = model.embed_tokens.weight.device
    out = {"cosine": [], "l2": [], "norm": []}
    for pair in tqdm(encoded, desc="sensitivity", leave=False, dynamic_ncols=True):
        rows = [pair.prompt + pair.correct, pair.prompt + pair.incorrect]
        tokens = right_pad(rows).to(device)
        _, blocks = model.hidden_states(tokens, keep_blocks=True)
        states = [model.embed_tokens(tokens)] + blocks  # L + 1 tensors (2, T, D)
        pooled = [torch.stack([pool_hidden(h[i].float(), len(pair.prompt), len(rows[i]), pool) for h in states])
                  for i in range(2)]  # 2 x (L + 1, D), float32: the default model's stream reaches ~2.4e4
        a, b = (x[1:] - x[:-1] if repr_ == "delta" else x[1:] for x in pooled)  # (L, D)
        out["cosine"].append(distance(a, b, "cosine"))
        out["l2"].append(distance(a, b, "l2"))
        out["norm"].append((a.norm(dim=-1) + b.norm(dim=-1)) / 2)
    return {key: torch.stack(v).cpu().numpy().astype(np.float64) for key, v in out.items()}


def sensitivity_per_pair(model: Transformer, encoded: list[EncodedPair], options: ScoreOptions) -> np.ndarray:
    """d_l(pair), shape (P, L); S_l is its mean over pairs."""
    return hidden_distances(model, encoded, options.sens_pool, options.sens_repr)[options.sens_dist]


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


def completion_nll(model: Transformer, encoded: list[EncodedPair]) -> torch.Tensor:
    """Mean NLL over each pair's correct-completion tokens, shape (P,)."""
    device = model.embed_tokens.weight.device
    rows = [p.prompt + p.correct for p in encoded]
    mask = right_pad([[False] * len(p.prompt) + [True] * len(p.correct) for p in encoded], False, torch.bool)
    nll, count = sequence_nll(model, right_pad(rows).to(device), mask.to(device))
    return nll / count


def influence_per_pair(model: Transformer, encoded: list[EncodedPair], options: ScoreOptions) -> np.ndarray:
    """grad: dL_p / d log_scale_l per pair, (P, L, n_kv); fd: (L_p(+eps) - L_p(-eps)) / (2 eps) per pair, (P, L)."""
    from tqdm import tqdm

    L, eps = model.config.n_layers, options.fd_eps
    with identity_garfa(model) as scales:
        if options.influence == "grad":
            grads = []
            for pair in tqdm(encoded, desc="influence (grad)", leave=False, dynamic_ncols=True):
                with torch.enable_grad():
                    g = torch.autograd.grad(completion_nll(model, [pair]).sum(), scales)  # L x (n_kv,)
                grads.append(torch.stack(g).float().cpu().numpy())
            return np.stack(grads).astype(np.float64)
        per_pair = np.zeros((len(encoded), L))
        with torch.no_grad():
            for layer in tqdm(range(L), desc="influence (fd)", leave=False, dynamic_ncols=True):
                losses = []
                for sign in (1, -1):  # all of layer l's frequencies times exp(+-eps)
                    scales[layer].fill_(sign * eps)
                    losses.append(torch.cat([completion_nll(model, encoded[i:i + SCORE_BATCH])
                                             for i in range(0, len(encoded), SCORE_BATCH)]).double())
                scales[layer].zero_()
                per_pair[:, layer] = ((losses[0] - losses[1]) / (2 * eps)).cpu().numpy()
        return per_pair


# ----------------------------------------------------------------------------------------------------------------
# The co-localization analysis (4.4)

def analyze(S, I, k: int, per_pair_S: np.ndarray, per_pair_I: np.ndarray, method: str, n_boot: int,
            seed: int) -> dict:
    """Spearman(S, I) with a bootstrap-over-pairs 95% interval, top-k sets, their overlap and depth, a verdict."""
    S, I = np.asarray(S, dtype=np.float64), np.asarray(I, dtype=np.float64)
    L, P = len(S), len(per_pair_S)
    r, p = stats.spearmanr(S, I)
    ci = [float("nan"), float("nan")]
    if n_boot:
        idx = np.random.default_rng(seed).integers(0, P, size=(n_boot, P))  # resampled pair indices
        boot = spearman_rows(per_pair_S[idx].mean(axis=1), influence_from_per_pair(per_pair_I[idx], method))
        ci = np.nanpercentile(boot, [2.5, 97.5]).tolist() if np.isfinite(boot).any() else ci
    sens, rope = top_k(S, k), top_k(I, k)
    return {"spearman": {"r": float(r), "p": float(p), "ci95": [float(c) for c in ci]}, "k": k,
            "sens_layers": sens, "rope_layers": rope, "jaccard": jaccard(sens, rope),
            "depth": {"sens": mean_depth(sens, L), "rope": mean_depth(rope, L)}, "verdict": verdict(r, p)}


def compute_scores(model: Transformer, tok: Tokenizer, options: ScoreOptions) -> dict:
    """Both scores on the calibration pairs and their analysis: the scores.json dict (SPEC 5) without "model"."""
    t0 = time.time()
    pairs = calibration_pairs(options)
    encoded = encode_pairs(tok, pairs, options.chat)
    dists = hidden_distances(model, encoded, options.sens_pool, options.sens_repr)
    per_S, per_I = dists[options.sens_dist], influence_per_pair(model, encoded, options)
    S, I = per_S.mean(0), influence_from_per_pair(per_I, options.influence)
    L = model.config.n_layers
    k = min(options.k or math.ceil(L / 4), L)
    result = {"sensitivity": S.tolist(), "influence": I.tolist()}
    result |= analyze(S, I, k, per_S, per_I, options.influence, options.bootstrap, options.seed)
    depth = np.arange(L)
    with np.errstate(invalid="ignore"):  # the l2 variant grows with the residual norm, i.e. with depth (4.2)
        result["depth_confound"] = {name: float(stats.spearmanr(v, depth)[0]) for name, v in (
            ("l2_vs_depth_r", dists["l2"].mean(0)), ("cosine_vs_depth_r", dists["cosine"].mean(0)),
            ("norm_vs_depth_r", dists["norm"].mean(0)))}
    result |= {"options": asdict(options), "n_pairs": len(pairs), "skills": [p["skill"] for p in pairs],
               "per_pair": {"sensitivity": per_S.tolist(), "influence": per_I.tolist()},
               "seconds": round(time.time() - t0, 1)}
    return result


# ----------------------------------------------------------------------------------------------------------------
# The figure

def plot_scores(result: dict) -> bytes:
    """The figure as PNG bytes: both scores per layer, min-max normalised, top-k sets marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def unit(x):
        x = np.asarray(x, dtype=np.float64)
        return (x - x.min()) / (x.max() - x.min()) if x.max() > x.min() else np.zeros_like(x)

    S, I = unit(result["sensitivity"]), unit(result["influence"])
    layers = np.arange(len(S))
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.plot(layers, S, "o-", color="tab:blue", label="sensitivity S (normalised)")
    ax.plot(layers, I, "s-", color="tab:orange", label="RoPE influence I (normalised)")
    ax.scatter(result["sens_layers"], S[result["sens_layers"]], s=160, facecolors="none", edgecolors="tab:blue",
               linewidths=2, label=f"top-{result['k']} S")
    ax.scatter(result["rope_layers"], I[result["rope_layers"]], s=160, marker="D", facecolors="none",
               edgecolors="tab:orange", linewidths=2, label=f"top-{result['k']} I")
    sp = result["spearman"]
    ax.set_title(f"Spearman r_s = {sp['r']:.3f}, p = {sp['p']:.2g} ({result['verdict']})")
    ax.set_xlabel("layer")
    ax.set_ylabel("score, min-max normalised")
    ax.set_xticks(layers[::max(1, len(layers) // 15)])
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    return png.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# The cache: one directory per (weights, dtype, options, calibration file)

def model_fingerprint(model_dir: str | Path) -> str:
    """A short key for a checkpoint's weights that reads kilobytes, not gigabytes.

    sha256 over config.json, the shard index if any, and per *.safetensors file: its name, size, its header (tensor
    names, dtypes, shapes, offsets; the first 8 bytes give its length) and the first and last 1 MiB. The header does
    not change with the values, so the two 1 MiB samples catch re-trained or re-converted weights; an edit that
    touches only the middle of a file and keeps its size is not detected.
    """
    model_dir, h = Path(model_dir), hashlib.sha256()
    for name in ("config.json", "model.safetensors.index.json"):
        if (model_dir / name).is_file():
            h.update(name.encode() + (model_dir / name).read_bytes())
    sample = 1 << 20
    for path in sorted(model_dir.glob("*.safetensors")):
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            h.update(f"{path.name}:{size}".encode() + f.read(min(n, size)))
            f.seek(0)
            h.update(f.read(sample))
            f.seek(max(0, size - sample))
            h.update(f.read(sample))
    return h.hexdigest()[:16]


def scores_key(model_dir: str | Path, model: Transformer, options: ScoreOptions) -> str:
    calib = hashlib.sha256(CALIB_FILE.read_bytes()).hexdigest() if options.calib == "file" else "auto"
    key = {"version": SCORES_VERSION, "model": model_fingerprint(model_dir), "options": asdict(options),
           "dtype": str(model.embed_tokens.weight.dtype), "calib": calib}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def load_or_compute_scores(model_dir: str | Path, model: Transformer, tok: Tokenizer, options: ScoreOptions,
                           out_dir: str | Path | None = None) -> dict:
    """The scores.json dict, computed once per key; with out_dir, scores.json and layer_scores.png land there."""
    cache = CACHE_DIR / f"scores-{scores_key(model_dir, model, options)}"
    if (cache / "scores.json").is_file() and (cache / "layer_scores.png").is_file():
        print(f"scores: reusing {cache}")
        result = json.loads((cache / "scores.json").read_text())
    else:
        result = compute_scores(model, tok, options)
        cache.mkdir(parents=True, exist_ok=True)
        write_atomic(cache / "layer_scores.png", plot_scores(result))
        write_atomic(cache / "scores.json", json.dumps(result, indent=1).encode())  # written last: marks complete
    result["model"] = str(model_dir)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "scores.json", json.dumps(result, indent=1).encode())
        write_atomic(out_dir / "layer_scores.png", (cache / "layer_scores.png").read_bytes())
    return result


# ----------------------------------------------------------------------------------------------------------------
# Command line

def summary(result: dict) -> str:
    sp, d, c = result["spearman"], result["depth"], result["depth_confound"]
    return "\n".join([
        f"Spearman r_s = {sp['r']:.3f}, p = {sp['p']:.3g}, 95% CI [{sp['ci95'][0]:.3f}, {sp['ci95'][1]:.3f}] "
        f"({result['n_pairs']} pairs) -> {result['verdict']}",
        f"top-{result['k']} sensitivity {result['sens_layers']} (mean depth {d['sens']:.2f})",
        f"top-{result['k']} RoPE influence {result['rope_layers']} (mean depth {d['rope']:.2f}); "
        f"Jaccard {result['jaccard']:.2f}",
        f"depth confound: Spearman vs layer index of S_l2 {c['l2_vs_depth_r']:.2f}, S_cosine "
        f"{c['cosine_vs_depth_r']:.2f}, mean pooled-state norm {c['norm_vs_depth_r']:.2f}"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None,
                   help=f"HF model directory (default: {DEFAULT_MODEL_DIR.name}, prepared on first use)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: runs/sensitivity-<model>)")
    p.add_argument("--seed", type=int, default=0, help="auto pairs and bootstrap draws")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--chat", choices=CHOICES["chat"], default="auto",
                   help="chat template for math and gsm prompts when the checkpoint has one")
    add_score_args(p.add_argument_group("layer scoring (SPEC 4.1-4.4)"))
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    model_dir = ensure_model(args.model)
    out = args.out or RUNS_DIR / f"sensitivity-{model_dir.name}"
    t0 = time.time()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = Transformer.from_pretrained(model_dir, dtype=dtype, device=args.device)
    tok = Tokenizer.from_pretrained(model_dir)
    result = load_or_compute_scores(model_dir, model, tok, options_from_args(args), out_dir=out)
    print(summary(result))
    print(f"-> {out / 'scores.json'}, {out / 'layer_scores.png'} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
