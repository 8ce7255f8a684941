"""train.py's runs as data: the Job one invocation decided, and the config.json that claims its run directory (with
the keys a --resume must match), and the layer sets stable over calibration draws. It never imports a method
file: the option classes and the scoring function come in as values."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from support import dist
from support.files import provenance
from support.stats import stable_top_k

STABLE_DRAWS, STABLE_RESAMPLES = 4, 200  # auto calibration draws beside the run's pairs; pair resamples per draw
RESUME_KEYS = ("arm", "model", "seeds", "dtype", "chat", "train", "eval", "scores", "controls", "layer_sets")


@dataclass(frozen=True)
class Job:
    """Everything one invocation of train.py decided, built once in its main."""
    model_dir: Path
    train: Any  # train.TrainOptions
    eval: Any  # evaluate.EvalOptions
    scores: Any  # sensitivity.ScoreOptions
    seeds: tuple[int, ...]
    device: str
    dtype: Any  # torch.dtype
    chat: str
    eval_batch_size: int
    resume: bool
    restart: bool
    previous: bool
    compile: bool = False
    controls: bool = False
    layer_sets: str = "single"


def run_config(arm_text: str, job: Job) -> dict:
    """config.json of a run: every setting (RESUME_KEYS must match on --resume), where it ran, and its provenance."""
    return {"arm": arm_text, "model": str(job.model_dir), "seeds": list(job.seeds), "dtype": str(job.dtype),
            "chat": job.chat, "train": asdict(job.train), "eval": asdict(job.eval), "scores": asdict(job.scores),
            "controls": job.controls, "layer_sets": job.layer_sets, "device": job.device,
            "processes": dist.world_size(), "compile": job.compile, **provenance()}


def stable_layer_sets(options, score, reduce: dict) -> dict:
    """Top-k of S and of I by how often each layer enters the top-k over calibration draws (the run's pairs plus
    STABLE_DRAWS --calib auto draws, `score(options)` giving each draw's scores.json dict) and STABLE_RESAMPLES
    bootstrap resamples of each draw's pairs, `reduce[key]` turning resampled per-pair arrays into layer scores."""
    draws = [options] + [replace(options, calib="auto", seed=options.seed + d) for d in range(1, STABLE_DRAWS + 1)]
    found = [score(o) for o in draws]
    sets = {key: stable_top_k([f["per_pair"][key] for f in found], found[0]["k"], fn, STABLE_RESAMPLES)
            for key, fn in reduce.items()}
    return {"sens_layers": sets["sensitivity"].pop("layers"), "rope_layers": sets["influence"].pop("layers"),
            "stable": {"draws": [f"{o.calib} seed {o.seed}" for o in draws], "resamples": STABLE_RESAMPLES, **sets,
                       "single_draw": {key: found[0][key] for key in ("sens_layers", "rope_layers")}}}
