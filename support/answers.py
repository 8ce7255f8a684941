"""Answer checking: the one home of how a free-form answer is read and judged against the gold answer.

MATH (`compare_math`) reads both answers into a small structure, compares the pieces exactly where it can and leaves
only the rest to a symbolic proof (sympy, with LaTeX read by latex2sympy2-extended; both load only when needed, and
nothing here imports torch). GSM/MGSM (`extract_number`, `compare_number`) read one number and compare it exactly:
the number a text states as its answer ("the answer is", "answer:", "####", \\boxed{}) wins over numbers after it.
MATH's own `answer`-field forms read as its solutions' do. The rules, in the order they apply, each chosen against
a measured false positive or false negative:

1. Numbers (integers, fractions, mixed `1\\frac{4}{5}` = 9/5, decimals) are exact `Fraction`s: 1000001 != 1000000,
   0.3333333 != 1/3. One tolerance: an irrational prediction must round to a decimal gold at its stated places
   (`\\sqrt{2}` = 1.41, `\\pi` = 3.14).
2. Commas: `1,234` is one number only when it is the whole answer (so `5,100` reads as 5100); `{,}`, `,\\!` and
   `, \\!` are separators anywhere; any other comma separates items (`10, 200` is a list). `1 2` equals only itself.
3. Tuples and intervals compare in order, brackets included; `\\{a, b\\}` sets, bare lists `a, b`, unions and
   `a \\pm b` (the two values) order-free. A one-column `pmatrix` is a tuple, a one-element set its element. A
   single backslash between a matrix's rows (MATH's answer field: `6\\3\\0`) is a row break.
4. Labels (decided): `x = 5` equals `5`, but two one-letter labels must agree (`y = 5` != `x = 5`, also `x \\in`):
   MATH names lines and planes by them. Equations are equal when one is a nonzero multiple of the other.
5. Units (decided), degree marks and bases (`52_8`) on one side only are ignored (golds often omit the unit the
   question fixes); on both they must agree (`5\\text{ m}` != `5\\text{ cm}`). Plurals, "square X" = "X^2" and
   "cubic X" = "X^3".
6. Percent (decided) and currency signs are dropped, not divided out: `50\\%` = `50` != `0.5`.
7. A wholly `\\text{...}` answer compares case-insensitively; a choice may drop its parentheses (`C` = `(C)`);
   `\\text{A, C}`, a list of choice letters, is the list `A, C`.
8. The rest must be proved equal by sympy (`simplify(a - b) == 0`), never numerically. Letters are positive reals
   (`a\\sqrt{b}` = `\\sqrt{a^2 b}`; the price: `|x|` = `x`), `i` is imaginary, decimals are exact fractions. An
   unevaluated sum, product, integral or limit is refused ("guard").

Time limit: the symbolic step runs in a daemon thread (no signals: safe from any thread), abandoned and scored
unequal after `SYMBOLIC_TIMEOUT_S`. A thread cannot interrupt a huge C-level power, so a size guard on the
unevaluated tree first refuses answers like `9^{9^{9^{9}}}` or `(10^6)!`.

`how` records the route to a verdict: "string" (same normalised text), "exact-number", "decimal" (rule 1's
tolerance), "symbolic", "structure" (different kinds or sizes), "label", "unit", "none" (no prediction),
"unparsed" (unreadable; GSM: not a number), "guard" (too large), "error" (sympy failed) or "timeout".
"""
from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, replace
from decimal import Decimal
from fractions import Fraction
from itertools import accumulate

SYMBOLIC_TIMEOUT_S = 5.0  # per symbolic check; a MATH-500 gold takes ~10 ms
MAX_ANSWER_CHARS = 1000  # longer answers are only compared as text (int() refuses > 4300 digits)
MAX_DIGITS = 10_000  # the guard refuses a number sympy would have to write with more digits than this
CHECKS = ("string", "exact-number", "decimal", "symbolic")  # how an equal verdict can be reached, cheapest first
FAILURES = ("structure", "label", "unit", "unparsed", "guard", "error", "timeout")
RANK = {how: i for i, how in enumerate(CHECKS + FAILURES)}
NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
UNICODE = {"\u2212": "-", "\u00d7": "\\times ", "\u00b7": "\\cdot ", "\u03c0": "\\pi ", "\u221e": "\\infty ",
           "\u00b0": "\\text{\u00b0}"}
LABEL = re.compile(r"([a-zA-Z]|\\[a-zA-Z]+)(_\w|_\{\w+\})?(\([a-zA-Z]\))?(?:=|\\in(?![a-zA-Z]))")
MATRIX = re.compile(r"\\begin\{[pbB]?matrix\}(.*)\\end\{[pbB]?matrix\}")
MATRIX_ENV = re.compile(r"\\begin\{([pbBvV]?matrix)\}.*?\\end\{\1\}")
MINUS = "-\u2212"  # ASCII hyphen-minus and the Unicode minus sign
CURRENCY = "$\u20ac\u00a3"
NUMBER = (rf"(?<![\w.])(?:[{MINUS}]?[{CURRENCY}]?|[{CURRENCY}][{MINUS}])"  # -$5, $-5, −5; not the 3 of "5-3"
          rf"(?:\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.\d+)?(?:/\d+)?|(?<![\w.])[{MINUS}]?\.\d+")
SENTENCE_END = re.compile(r"\n|[!?]|\.(?!\d)")  # a full stop, not the point of 3.5
STATED = re.compile(r"answer\s*(?:is\b|:|=)|####|\\boxed\s*\{", re.IGNORECASE)  # a GSM answer stated as such
LEAD = re.compile(r"(?:\s|[:=*$({\[]|\\[$(\[]|\\(?:boxed|textbf|text|mathbf)\b)*")  # markup before its number
OPENS_MORE = r"\s*(?:[-+*/^\u00d7\u00f7x]\s*\(?\d|(?:dozens?|hundreds?|thousands?|millions?|billions?)\b)"


# ----------------------------------------------------------------------------------------------------------------
# \boxed{} (it defines MATH's gold answers: data.py reads the gold from the solution with this function)

def _closing(s: str, opening: str = "([{", closing: str = ")]}") -> int | None:
    """Index where the bracket opening s[0] closes ("(a+5)(b+2)": 4), None when it never does."""
    depths = list(accumulate(1 if ch in opening else -1 if ch in closing else 0 for ch in s))
    return depths.index(0) if 0 in depths else None


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), nested braces included; None if absent or unclosed."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start + (6 if text.startswith("\\boxed", start) else 5):]
    if not (braced := rest.lstrip()).startswith("{"):  # "\boxed 5"
        match = re.match(r"\s+([^\s$]+)", rest)
        return match.group(1) if match else None
    end = _closing(braced, "{", "}")
    return None if end is None else braced[1:end]


# ----------------------------------------------------------------------------------------------------------------
# Normalisation: one canonical string per answer

def _squeeze_spaces(s: str) -> str:
    """Spaces dropped except between two digits ("1 2" is not 12) and after a command ("\\cot x" is not "\\cotx")."""
    def keep(m: re.Match) -> str:
        before, after = m.group(1) or "", m.group(2)
        return before + " " * ((before[:1] == "\\" and after.isalpha()) or (before.isdigit() and after.isdigit()))

    return re.sub(r"(\\[a-zA-Z]+|[^ ])? (?=(.?))", keep, re.sub(r"\s+", " ", s).strip())


def normalize_math(answer: str) -> str:
    """One canonical string: spacing, \\left, \\dfrac, braces, degrees, %, $, separators normalised; units kept."""
    s = answer.replace("\\$", "").replace("$", "").strip()
    s = re.sub(r"(?<!\\)\.$", "", s)  # a sentence's full stop (before "58,500." is read)
    s = s.translate(str.maketrans(UNICODE))
    s = re.sub(r"(?<=\d)(?:\{,\}|,\s*\\!)\s*(?=\d{3}(?!\d))", "", s)  # 8{,}880, 11,\! 111, 111, \! 111
    if m := THOUSANDS.match(s):  # 58,500 or 1,000\text{ cm}: the whole answer is one number (rule 2)
        if "," not in s[m.end():] and re.match(r"$|\s*\\text|\s+[a-zA-Z]", s[m.end():]):
            s = m.group().replace(",", "") + s[m.end():]
    s = re.sub(r"\\(?:left|right|[bB]igg?[lr]?|displaystyle)(?![a-zA-Z])|(?<!\\)\\!", "", s)
    s = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", s)
    s = re.sub(r"\\(?:mbox|mathrm|textbf|textit|textrm|textnormal)(?![a-zA-Z])", r"\\text", s)
    s = MATRIX_ENV.sub(lambda m: re.sub(r"(?<!\\)\\(?=[\s\d.+-])", r"\\\\", m.group()), s)  # MATH's field: "6\3\0"
    s = re.sub(r"\\text\{\s*(\(?[A-Z]\)?(?:\s*,\s*\(?[A-Z]\)?)+)\s*\}", lambda m: re.sub(r"[()]", "", m.group(1)), s)
    s = re.sub(r"(?<!\\)\\[,;: ]|\\q?quad(?![a-zA-Z])|~", " ", s)  # not the row break \\ of a matrix
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\degree(?![a-zA-Z])|\\text\{\s*degrees?\s*\}|(?<=[\d}])\s*degrees?$",
               r"\\text{°}", s)
    s = re.sub(r"\\?%", "", s)
    s = re.sub(r",?\s*\\text\{\s*(?:and|or)\s*\}\s*", ", ", s)  # "1, 2, \text{ and } 3"
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)  # \frac12, \frac 59
    s = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", s)  # \frac9{19}
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*(\d)", r"\\frac\1{\2}", s)  # \frac{270}7
    s = re.sub(r"\\sqrt\s*([a-zA-Z0-9])", r"\\sqrt{\1}", s)  # \sqrt8, \sqrt x
    s = re.sub(r"([\^_])\s*\{\s*([a-zA-Z0-9])\s*\}", r"\1\2", s)  # x^{2} -> x^2, 52_{8} -> 52_8
    return _squeeze_spaces(s)


# ----------------------------------------------------------------------------------------------------------------
# Structure: an answer is a scalar, an ordered tuple/interval, an order-free set, or an equation

@dataclass(frozen=True)
class Answer:
    kind: str  # "scalar" | "tuple" | "set" | "equation"
    text: str = ""  # scalar: canonical text without unit or label; equation: "lhs=rhs"
    unit: str = ""  # _unit_key() of the unit, degree mark ("°") or base ("base8")
    label: str = ""  # "x" of "x = 5" / "x \in [2, 5)"
    brackets: str = ""  # tuple: "()", "[)", "matrix", "row"; set: "pm" for the two values of a \pm
    items: tuple[Answer, ...] = ()


def split_top(s: str, sep: str) -> list[str]:
    """`s` cut at each `sep` outside (), [] and {} (an interval's mismatched brackets still balance)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if depth == 0 and s.startswith(sep, i) and not (sep[-1].isalpha() and s[i + len(sep):][:1].isalpha()):
            parts.append(s[start:i])
            start = i = i + len(sep)
        else:
            depth += 1 if s[i] in "([{" else -1 if s[i] in ")]}" else 0
            i += 1
    return parts + [s[start:]]


def _unit_key(unit: str) -> str:
    """"square inches", "inches^2" and "inch^2" agree; so do "cubic m" and "m^3", "cents" and "cent"."""
    u = unit.lower().replace(" ", "")
    power = "^2" if u.startswith("square") else "^3" if u.startswith("cubic") else u[-2:] * bool(re.search(r"\^\d$", u))
    u = re.sub(r"(?<=ch|sh|ss)es$|(?<=[^s])s$", "", re.sub(r"^square|^cubic|\^\d$", "", u))
    return u + power


def _set(parts: list[str]) -> Answer:
    """An order-free collection; the two values of an item's \\pm join the collection itself."""
    items = []
    for p in parts:
        x = parse_answer(p)
        items.extend(x.items if x.kind == "set" and x.brackets == "pm" else [x])
    return Answer("set", items=tuple(items))


def parse_answer(s: str) -> Answer:
    """The structure of a canonical answer string (rules 3-5 of the module docstring)."""
    for sep in ("\\cup", ","):
        if len(parts := split_top(s, sep)) > 1:
            return _set(parts)
    if (m := LABEL.match(s)) and len(s) > m.end() and "=" not in s[m.end():]:
        return replace(parse_answer(s[m.end():]), label=s[:m.end()].removesuffix("=").removesuffix("\\in"))
    if m := MATRIX.fullmatch(s):
        rows = [split_top(r, "&") for r in split_top(m.group(1), "\\\\") if r]
        if all(len(r) == 1 for r in rows):  # a column vector reads as a tuple
            return Answer("tuple", brackets="()", items=tuple(parse_answer(r[0]) for r in rows))
        return Answer("tuple", brackets="matrix", items=tuple(
            Answer("tuple", brackets="row", items=tuple(parse_answer(x) for x in r)) for r in rows))
    if s.startswith("\\{") and s.endswith("\\}") and _closing(s[1:]) == len(s) - 2:
        return _set(split_top(s[2:-2], ","))
    if s[:1] in "([" and s[-1:] in ")]" and _closing(s) == len(s) - 1 and len(parts := split_top(s[1:-1], ",")) > 1:
        return Answer("tuple", brackets=s[0] + s[-1], items=tuple(parse_answer(p) for p in parts))
    for sign, ops in (("\\pm", "+-"), ("\\mp", "-+")):
        if len(parts := split_top(s, sign)) == 2 and all(parts):  # 1 \pm \sqrt{19}: the two values
            return Answer("set", brackets="pm", items=tuple(parse_answer(op.join(parts)) for op in ops))
    if len(parts := split_top(s, "=")) == 2 and all(parts):
        return Answer("equation", s)
    return _scalar(s)


def _scalar(s: str) -> Answer:
    """A single value with its trailing unit (rule 5) split off."""
    if m := re.fullmatch(r"(.+?)\\text\{([^{}]*)\}(\^\d)?", s):  # 864\text{ inches}^2, 30\text{°}
        return Answer("scalar", m.group(1), _unit_key(m.group(2) + (m.group(3) or "")))
    if m := re.fullmatch(r"(\d+)_(\d|\{\d+\})", s):  # 52_8: the base is a unit of the digits
        return Answer("scalar", m.group(1), "base" + m.group(2).strip("{}"))
    if m := re.fullmatch(rf"({NUM}) ?([a-zA-Z]{{2,}}(?: [a-zA-Z]+)*)", s):  # "10 inches" without \text
        return Answer("scalar", m.group(1), _unit_key(m.group(2)))
    return Answer("scalar", s)


def exact_number(s: str) -> Fraction | None:
    """The exact value of a canonical scalar that is an integer, decimal, fraction or mixed number, else None."""
    if re.fullmatch(NUM, s):
        return Fraction(s)
    m = (re.fullmatch(rf"([+-]?)()\\frac\{{({NUM})\}}\{{({NUM})\}}", s) or re.fullmatch(rf"()()({NUM})/({NUM})", s)
         or re.fullmatch(r"([+-]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}", s))  # or mixed: 1\frac{4}{5} = 9/5
    if m and Fraction(m.group(4)) != 0:
        return (-1 if m.group(1) == "-" else 1) * (int(m.group(2) or 0) + Fraction(m.group(3)) / Fraction(m.group(4)))
    return None


def _word(s: str) -> str:
    """The lower-cased text of a word answer: \\text{Evelyn} -> "evelyn", \\text{(C)} and (C) -> "c"."""
    m = re.fullmatch(r"\\text\{([^{}]*)\}", s)
    return re.sub(r"^\(([a-z])\)$", r"\1", (m.group(1) if m else s).strip().lower())


# ----------------------------------------------------------------------------------------------------------------
# Symbolic step: latex2sympy2-extended reads the LaTeX, sympy proves equality; size guard + thread time limit

def with_time_limit(fn, seconds: float) -> tuple[bool, object]:
    """(True, fn()), or (False, None) when fn, run in a daemon thread, outlives `seconds` (Python cannot stop a
    thread: it is abandoned). No signals, so safe from any thread. fn's exceptions propagate."""
    box = []

    def run():
        try:
            box.append((True, fn()))
        except BaseException as error:  # handed to the caller below, not swallowed
            box.append((False, error))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    ok, result = box[0] if box else (None, None)  # ok is None: fn still runs
    if ok is False:
        raise result
    return ok is True, result


def digits_bound(expr) -> float:
    """Bound on the digits of the numbers sympy meets evaluating the unevaluated `expr`: x^e has |e| times x's
    digits, n! and binomial(n, k) fewer than n (log10 n + 1); symbols and constants count as one digit."""
    import sympy
    if isinstance(expr, sympy.Rational):
        return float(len(str(max(abs(expr.p), expr.q))))
    growth = (sympy.factorial, sympy.factorial2, sympy.subfactorial, sympy.binomial, sympy.gamma, sympy.RisingFactorial,
              sympy.FallingFactorial)
    if isinstance(expr, sympy.Pow) or isinstance(expr, growth):
        arg = expr.exp if isinstance(expr, sympy.Pow) else max(expr.args, key=digits_bound)
        if (d := digits_bound(arg)) > 15:
            return math.inf
        n = abs(float(arg)) if isinstance(arg, sympy.Rational) else 10.0 ** d
        per = digits_bound(expr.base) if isinstance(expr, sympy.Pow) else math.log10(n + 1) + 1
        return n * per + 1
    return sum(digits_bound(a) for a in expr.args) + 1


def to_sympy(s: str) -> tuple[object, str]:
    """(expression, "") for a canonical scalar, or (None, why) with why "unparsed" or "guard" (rule 8)."""
    # latex2sympy misreads digits split by a space ("1 2" reads as 3) and evaluates a large \binom while parsing
    if re.search(r"\d \d", s) or re.search(r"\\[dt]?binom\{(?!\d{1,4}\})", s) or "\\choose" in s:
        return None, "unparsed"
    import sympy
    from latex2sympy2_extended import NormalizationConfig, latex2sympy
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig

    # decimals become exact fractions, so 3.1415926 is not pi and 0.5x is x/2
    latex = re.sub(r"(\d*)\.(\d+)", lambda m: f"\\frac{{{int(m.group(1) + m.group(2))}}}{{1{'0' * len(m.group(2))}}}",
                   re.sub(r"\\text\{([^{}]*)\}", r"\1", s))
    try:
        expr = latex2sympy(latex, normalization_config=NormalizationConfig(
            basic_latex=True, units=False, malformed_operators=True, nits=False, boxed="none", equations=False),
            conversion_config=ConversionConfig(lowercase_symbols=False))
    except Exception:  # the parser signals malformed LaTeX with bare Exception: the verdict records "unparsed"
        return None, "unparsed"
    if not isinstance(expr, sympy.Expr):  # a set, relation or matrix the structure step did not split
        return None, "unparsed"
    # refused before anything evaluates: a sum, product, integral or limit is no final answer, and has no size bound
    if expr.has(sympy.Sum, sympy.Product, sympy.Integral, sympy.Limit, sympy.Derivative) or (
            digits_bound(expr) > MAX_DIGITS):
        return None, "guard"
    names = {x: sympy.I if x.name == "i" else sympy.Symbol(x.name, positive=True) for x in expr.free_symbols}
    return expr.xreplace(names).doit(), ""


def sympy_equal(a, b) -> bool:
    """True only when sympy proves a == b; numeric values at two fixed points may reject, never accept (rule 8)."""
    import sympy
    if a == b or (a - b) == 0:
        return True
    letters = sorted(a.free_symbols | b.free_symbols, key=lambda x: x.name)
    for k in (0, 4):
        point = {x: sympy.Rational(7 + 3 * i + k, 5 + 2 * i + k) for i, x in enumerate(letters)}
        x, y = a.xreplace(point).evalf(30), b.xreplace(point).evalf(30)
        if all(v.is_number and v.is_finite for v in (x, y)) and abs(x - y) > 1e-15 * max(1, abs(x), abs(y)):
            return False
    return sympy.simplify(a - b) == 0


def symbolic_equal(pred: str, gold: str) -> tuple[bool, str]:
    """(equal, how) for two scalars by sympy; a decimal gold is met by an irrational prediction that rounds to it."""
    a, why = to_sympy(pred)
    b, why = (None, why) if why else to_sympy(gold)
    if why:
        return False, why
    if m := re.fullmatch(r"[+-]?\d*\.(\d+)", gold):  # a decimal gold, with the places it states
        if a.is_Rational:  # rule 1: a rational is exact, even against a decimal gold
            return Fraction(a.p, a.q) == Fraction(gold), "exact-number"
        value = a.evalf(len(m.group(1)) + 30)
        if not (value.is_number and value.is_real):
            return False, "decimal"
        return abs(Fraction(str(value)) - Fraction(gold)) <= Fraction(1, 2 * 10 ** len(m.group(1))), "decimal"
    return sympy_equal(a, b), "symbolic"


def equations_equal(pred: str, gold: str) -> tuple[bool, str]:
    """Two equations are equal when (lhs - rhs) of one is a nonzero constant multiple of the other's."""
    import sympy
    sides = []
    for equation in (pred, gold):
        (lhs, why_l), (rhs, why_r) = (to_sympy(side) for side in equation.split("=", 1))
        if why_l or why_r:
            return False, why_l or why_r
        sides.append(lhs - rhs)
    if sides[1] == 0 or sides[0] == 0:
        return sides[0] == sides[1], "symbolic"
    ratio = sympy.simplify(sides[0] / sides[1])
    return bool(ratio.is_number and ratio.is_finite and ratio != 0), "symbolic"


def _timed(check, pred: str, gold: str) -> tuple[bool, str]:
    import latex2sympy2_extended  # noqa: F401  (the first import takes ~1 s: outside the time limit)
    try:
        finished, result = with_time_limit(lambda: check(pred, gold), SYMBOLIC_TIMEOUT_S)
    except Exception:  # sympy raises many unrelated types on odd input; the verdict records "error"
        return False, "error"
    return result if finished else (False, "timeout")


# ----------------------------------------------------------------------------------------------------------------
# Comparison of two structures

def compare_scalars(pred: Answer, gold: Answer) -> tuple[bool, str]:
    if pred.unit and gold.unit and pred.unit != gold.unit:
        return False, "unit"
    if pred.text == gold.text:
        return True, "string"
    if any(re.fullmatch(r"\\text\{[^{}]*\}", x.text) for x in (pred, gold)):  # a word answer (rule 7)
        return _word(pred.text) == _word(gold.text), "string"
    x, y = exact_number(pred.text), exact_number(gold.text)
    if x is not None and y is not None:
        return x == y, "exact-number"
    return _timed(symbolic_equal, pred.text, gold.text)


def compare_answers(pred: Answer, gold: Answer) -> tuple[bool, str]:
    """(equal, how): for an equal pair the costliest check that was needed (see the module docstring)."""
    if pred.label and gold.label and pred.label != gold.label:
        return False, "label"
    pred, gold = (x.items[0] if x.kind == "set" and len(x.items) == 1 else x for x in (pred, gold))  # \{5\} = 5
    if "equation" in (pred.kind, gold.kind):
        pred, gold = (Answer("equation", f"{x.label}={x.text}") if x.label and x.kind == "scalar" else x
                      for x in (pred, gold))
        if pred.kind != gold.kind:
            return False, "structure"
        return (True, "string") if pred.text == gold.text else _timed(equations_equal, pred.text, gold.text)
    if pred.kind != gold.kind or len(pred.items) != len(gold.items) or (
            pred.kind == "tuple" and pred.brackets != gold.brackets):
        return False, "structure"
    if pred.kind == "scalar":
        return compare_scalars(pred, gold)
    return _match_items(pred.items, gold.items, ordered=pred.kind == "tuple")


def _match_items(pred: tuple[Answer, ...], gold: tuple[Answer, ...], ordered: bool) -> tuple[bool, str]:
    """Every gold item matched to its own predicted item, in its place or (order-free) any unused one. Greedy is
    exact for a transitive equality; where it is not (a unit on one side only) it can miss a match, never invent one."""
    unused, used, tried = list(pred), [], []
    for i, g in enumerate(gold):
        for p in [pred[i]] if ordered else unused:
            equal, how = compare_answers(p, g)
            tried.append(how)
            if equal:
                unused.remove(p)
                used.append(how)
                break
        else:  # a tuple fails with its failing item's reason, a set with the costliest it tried
            return False, how if ordered else max(tried, key=RANK.get, default="structure")
    return True, max(used, key=RANK.get, default="string")


def compare_math(pred: str | None, gold: str) -> dict:
    """The verdict on a MATH answer, with the normalised forms compared and how it was reached (for the record)."""
    gold_norm = normalize_math(gold)
    if pred is None:
        return dict(pred_norm=None, gold_norm=gold_norm, equal=False, how="none")
    pred_norm = normalize_math(pred)
    if pred_norm == gold_norm:
        return dict(pred_norm=pred_norm, gold_norm=gold_norm, equal=True, how="string")
    if max(len(pred_norm), len(gold_norm)) > MAX_ANSWER_CHARS:
        return dict(pred_norm=pred_norm, gold_norm=gold_norm, equal=False, how="guard")
    equal, how = compare_answers(parse_answer(pred_norm), parse_answer(gold_norm))
    return dict(pred_norm=pred_norm, gold_norm=gold_norm, equal=equal, how=how)


def math_equal(pred: str, gold: str) -> bool:
    return compare_math(pred, gold)["equal"]


# ----------------------------------------------------------------------------------------------------------------
# GSM / MGSM: one number, compared exactly

def clean_number(s: str) -> str:
    """"-$1,250.50" -> "-1250.50"; the Unicode minus becomes "-"."""
    return re.sub(rf"[,{CURRENCY}]", "", s).replace("\u2212", "-")


def extract_number(text: str) -> str | None:
    """The number a text states as its answer, else its last number; commas and currency signs dropped, signs kept.
    A statement is "the answer is", "answer:", "####" or \\boxed{}; the last one counts (a corrected answer), and
    its number wins over any written after it (a check, a comparison, alternatives): the number it opens with,
    or, when it opens with a calculation ("30 - 2 * 4 = 22"), a count ("3 dozen") or words, the first number after
    its sentence's last "=", else the sentence's last number."""
    if stated := list(STATED.finditer(text)):
        rest = text[stated[-1].end():]
        rest = rest[LEAD.match(rest).end():]
        sentence = rest[:end.start()] if (end := SENTENCE_END.search(rest)) else rest
        if (first := re.match(NUMBER, sentence)) and not re.match(OPENS_MORE, sentence[first.end():]):
            return clean_number(first.group())
        result = re.findall(NUMBER, sentence.rsplit("=", 1)[1])[:1] if "=" in sentence else []
        if found := result or re.findall(NUMBER, sentence)[-1:]:
            return clean_number(found[0])
    found = re.findall(NUMBER, text)
    return clean_number(found[-1]) if found else None


def parse_number(s: str) -> Fraction | None:
    """The exact value of "1,234", "-$5", "−5", ".25", "18.00" or "7/2"; None when `s` is not one number."""
    m = re.fullmatch(rf"({NUM})(?:/(\d+))?", clean_number(s.strip()))
    if not m or (m.group(2) and int(m.group(2)) == 0):
        return None
    return Fraction(Decimal(m.group(1))) / int(m.group(2) or 1)


def _number_text(x: Fraction) -> str:
    """7/2 -> "3.5", 1/3 -> "1/3": a terminating value as a decimal, else the fraction."""
    places = next((k for k in range(64) if 10 ** k % x.denominator == 0), None)
    if places is None:
        return f"{x.numerator}/{x.denominator}"
    return format(Decimal(x.numerator * 10 ** places // x.denominator).scaleb(-places), "f")


def compare_number(pred: str | None, gold: str) -> dict:
    """The verdict on a GSM/MGSM answer: exact equality of the two values (18.00 == 18), never a tolerance."""
    y = parse_number(gold)
    if y is None:
        raise ValueError(f"gold answer {gold!r} is not a number; GSM/MGSM golds must be plain numbers")
    x = None if pred is None else parse_number(pred)
    how = "none" if pred is None else "unparsed" if x is None else "exact-number"
    return dict(pred_norm=None if x is None else _number_text(x), gold_norm=_number_text(y), equal=x == y, how=how)


def number_equal(pred: str | None, gold: str) -> bool:
    return compare_number(pred, gold)["equal"]
