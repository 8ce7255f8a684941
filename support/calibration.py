"""Calibration pairs (METHOD.md 4.1) as data: each is a prompt, its correct completion and two incorrect ones.

The second incorrect completion is wrong the same way as the first (another distractor letter, another nearby final
integer, another mutation of the reference code): `sensitivity.py --sens-control on` subtracts the distance of the two
incorrect completions, which is what is left once "two different strings" is accounted for.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from support.files import UserError, read_json
from support.tasks import FAMILIES, LETTERS, SKILLS, SOURCE_SKILL, SOURCES, encode_prompt, uses_chat

AUTO_MAX_CHARS = 500  # drawn pairs keep short completions, so scoring stays fast
CODE_MUTATIONS = ((" <= ", " < "), (" < ", " <= "), (" >= ", " > "), (" > ", " >= "), (" == ", " != "),
                  (" != ", " == "), (" + ", " - "), (" - ", " + "), (" and ", " or "), ("True", "False"))
COMPLETIONS = ("correct", "incorrect", "incorrect2")


class EncodedPair(NamedTuple):
    prompt: list[int]
    correct: list[int]
    incorrect: list[int]
    incorrect2: list[int]


def wrong_answers(item: dict, rng: np.random.Generator, n: int = 2) -> list[str]:
    """Up to n distinct wrong versions of a training item's completion: other distractor letters, other nearby final
    integers, other mutations of the reference code."""
    text, family = item["completion"], SOURCES[item["source"]]
    if family == "mc":
        wrong = rng.permutation([i for i in range(len(item["choices"])) if i != item["answer"]])[:n]
        return [f" {LETTERS[i]}" for i in wrong]
    if family in ("math", "gsm"):  # change the final integer answer by a small nonzero amount
        pattern = r"\\boxed\{(-?\d+)\}" if family == "math" else r"The answer is (-?\d+)\.$"
        m = next(reversed(list(re.finditer(pattern, text))), None)  # the last one
        if m is None:
            return []
        return [text[:m.start(1)] + str(int(m.group(1)) + int(d)) + text[m.end(1):]
                for d in rng.permutation([-2, -1, 1, 2])[:n]]
    wrong = []
    for old, new in (CODE_MUTATIONS[i] for i in rng.permutation(len(CODE_MUTATIONS))):
        if old in text and text.replace(old, new, 1) not in wrong + [text]:  # flip one comparison, operator, constant
            wrong.append(text.replace(old, new, 1))
    return wrong[:n]


def draw_pairs(mixture: list[dict], n: int, seed: int) -> list[dict]:
    """n pairs from a shuffled training mixture (evaluation items already removed there), families in turn."""
    rng = np.random.default_rng(seed)
    pool = {f: [x for x in mixture if SOURCES[x["source"]] == f and len(x["completion"]) <= AUTO_MAX_CHARS]
            for f in FAMILIES}
    pairs, families = [], list(pool)
    while len(pairs) < n:
        family = families[len(pairs) % len(families)]
        if not pool[family]:
            raise UserError(f"--calib auto: ran out of usable {family} training items after {len(pairs)} pairs")
        item = pool[family].pop(0)
        wrong = wrong_answers(item, rng)
        if len(wrong) == 2:
            pairs.append(dict(skill=SOURCE_SKILL[item["source"]], prompt=item["prompt"], correct=item["completion"],
                              incorrect=wrong[0], incorrect2=wrong[1], source=item["source"], id=item["id"]))
    return pairs


def read_pairs(path: Path) -> list[dict]:
    """The shipped pairs, each checked for its skill and its three completions."""
    pairs = read_json(path)
    for i, p in enumerate(pairs):
        if not {"skill", "prompt", *COMPLETIONS} <= set(p) or p["skill"] not in SKILLS:
            raise UserError(f"{path}: pair {i} needs skill (one of {', '.join(SKILLS)}), prompt, "
                            f"{', '.join(COMPLETIONS)}; got {sorted(p)}")
    return pairs


def encode_pairs(tok, pairs: list[dict], chat: str = "auto") -> list[EncodedPair]:
    """Token ids, the prompt formatted exactly as evaluation formats its family (chat template for math and gsm)."""
    out = []
    for p in pairs:
        prompt = encode_prompt(tok, p["prompt"], uses_chat(tok, SKILLS[p["skill"]], chat))
        enc = EncodedPair(prompt, *(tok.encode(p[c], bos=False) for c in COMPLETIONS))
        if not all(enc):
            raise UserError(f"calibration pair {p['prompt'][:40]!r}: prompt and completions need >= 1 token each")
        out.append(enc)
    return out
