"""answers.py: every case of the checker audit in both directions, the decided ambiguities, an exactness property
on random numbers in several LaTeX forms, MATH-500's golds against themselves and their rewrites, the size guard
and time limit from a worker thread, and the GSM number reader."""
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import pytest

from support import answers
from support.answers import (compare_math, compare_number, extract_boxed, extract_number, math_equal, number_equal,
                     with_time_limit)
from data import load_benchmark


def both_ways(pred: str, gold: str) -> tuple[bool, bool]:
    return math_equal(pred, gold), math_equal(gold, pred)


# ----------------------------------------------------------------------------------------------------------------
# \boxed{}: today's reading (it defines MATH's gold answers)

@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{1}{\\sqrt{2}}}.", "\\frac{1}{\\sqrt{2}}"),  # nested braces
    ("first \\boxed{1}, then \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # the last one; escaped braces balance
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\fbox{7}", "7"), ("$\\boxed 5$", "5"), ("no box here", None), ("cut off \\boxed{\\frac{1}{2}", None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


# ----------------------------------------------------------------------------------------------------------------
# The audit's cases

@pytest.mark.parametrize("pred, gold", [
    ("1000001", "1000000"), ("11111111101", "11,111,111,100"), ("11111111101", "11,\\! 111,\\! 111,\\! 100"),
    ("3.1415926", "3.14159265"), ("0.3333333", "\\frac{1}{3}"), ("0.3333333", "1/3"), ("0.142857", "\\frac{1}{7}"),
    ("2.0000001", "2"), ("0.33", "\\frac13"),
    ("10, 200", "10200"), ("5, 100", "5100"), ("45^\\circ, 135^\\circ", "45135"), ("1 2", "12"),
])
def test_audit_false_positives_are_rejected(pred, gold):
    assert both_ways(pred, gold) == (False, False)


@pytest.mark.parametrize("pred, gold", [
    ("a\\sqrt{b}", "\\sqrt{a^2 b}"), ("4i+3", "3+4i"), ("-5i+6", "6 - 5i"), ("52_{8}", "52_8"), ("\\pi k", "k\\pi"),
    ("k\\cdot\\pi", "k\\pi"), ("\\{3, 1, 2\\}", "\\{1, 2, 3\\}"), ("3, 1, 2", "1, 2, 3"), ("-2, 1", "1,-2"),
    ("1\\frac{4}{5}", "\\frac{9}{5}"), ("137 \\frac{1}{2}", "\\frac{275}{2}"), ("x^{2}", "x^2"), ("2^{10}", "1024"),
    ("\\sqrt8", "2\\sqrt2"), ("\\frac{\\sqrt6}3", "\\frac{\\sqrt{6}}{3}"), ("\\sqrt{242}", "11\\sqrt2"),
])
def test_audit_false_negatives_are_accepted(pred, gold):
    assert both_ways(pred, gold) == (True, True)


@pytest.mark.parametrize("pred, gold, equal", [
    ("y = 5", "x = 5", False), ("x = 5", "5", True),  # labels must agree only when both have one
    ("5\\text{ m}", "5\\text{ cm}", False), ("10\\text{ inches}", "10", True),  # units likewise
    ("864\\text{ square inches}", "864 \\mbox{ inches}^2", True), ("5.4", "5.4 \\text{ cents}", True),
    ("50\\%", "50", True), ("50\\%", "0.5", False),  # the percent sign is dropped, not divided out
    ("30", "30^\\circ", True), ("30^{\\circ}", "30 degrees", True), ("31^\\circ", "30^\\circ", False),
    ("2516", "2516_8", True), ("2516_9", "2516_8", False), ("1358", "2516_8", False),  # 1358 = 2516_8 in base 10
])
def test_decided_ambiguities(pred, gold, equal):
    assert both_ways(pred, gold) == (equal, equal)


def test_a_decimal_gold_is_met_by_an_irrational_that_rounds_to_it_and_only_then():
    assert math_equal("\\sqrt{2}", "1.41") and math_equal("\\pi", "3.14") and math_equal("7\\pi", "21.99")
    assert not math_equal("\\sqrt{3}", "1.41")
    assert not math_equal("3.14", "\\pi") and not math_equal("1.41", "\\sqrt{2}")  # the gold is exact
    assert not math_equal("1.414", "1.41") and not math_equal("\\frac{1}{3}", "0.33")  # rationals are exact
    assert math_equal("18.9", "\\$18.90") and not math_equal("18.904", "\\$18.90")


@pytest.mark.parametrize("pred, gold, equal", [
    ("(9,36) \\cup (0,9)", "(0,9) \\cup (9,36)", True), ("(1,2)", "[1,2]", False), ("(3,4]", "(3,4)", False),
    ("(2,1)", "(1,2)", False), ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
    ("[-2,7]", "x \\in [-2,7]", True), ("1+\\sqrt{19}, 1-\\sqrt{19}", "1 \\pm \\sqrt{19}", True),
    ("1+\\sqrt{19}", "1 \\pm \\sqrt{19}", False), ("-2, 1+\\sqrt5, 1-\\sqrt5", "\\{1\\pm\\sqrt{5},-2\\}", True),
    ("1, 2", "1, 2, 2", False), ("7, -2, \\text{ and } -5", "7,-2,-5", True),
    ("\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\end{pmatrix}", "\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}", True),
    ("\\begin{pmatrix} 2/3 \\\\ -1/3 \\end{pmatrix}", "\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}", False),
    ("\\begin{pmatrix} 0 & -1 \\\\ -1 & 0 \\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", False),
    ("-5x+7y-11z-4=0", "5x - 7y + 11z + 4 = 0", True), ("5x-7y+11z-4=0", "5x - 7y + 11z + 4 = 0", False),
    ("2x - y + 3 = 0", "y = 2x + 3", True), ("y = 3 + 2x", "y = 2x + 3", True), ("y = 2x - 3", "y = 2x + 3", False),
])
def test_structures(pred, gold, equal):
    assert both_ways(pred, gold) == (equal, equal)


@pytest.mark.parametrize("pred, gold, equal", [
    ("C", "\\text{(C)}", True), ("B", "\\text{(C)}", False), ("evelyn", "\\text{Evelyn}", True),
    ("Navin", "\\text{Evelyn}", False), ("ab+2a+5b+10", "(a+5)(b+2)", True), ("(a+5)(b+3)", "(a+5)(b+2)", False),
    ("\\frac{\\cos x}{\\sin x}", "\\cot x", True), ("\\tan x", "\\cot x", False), ("3r^2", "3R^2", False),
    ("\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{3}}{3}", True), ("0.577350", "\\frac{\\sqrt{3}}{3}", False),
    ("-q+p", "p - q", True), ("q-p", "p - q", False), ("\\infty", "-\\infty", False),
])
def test_words_and_expressions(pred, gold, equal):
    assert math_equal(pred, gold) == equal


def test_compare_math_records_the_forms_and_how():
    assert compare_math("\\dfrac{1}{2}", "\\frac12") == dict(pred_norm="\\frac{1}{2}", gold_norm="\\frac{1}{2}",
                                                             equal=True, how="string")
    assert compare_math(None, "5") == dict(pred_norm=None, gold_norm="5", equal=False, how="none")
    hows = {(p, g): compare_math(p, g)["how"] for p, g in [
        ("0.5", "\\frac12"), ("\\sqrt{2}", "1.41"), ("\\sqrt8", "2\\sqrt2"), ("5\\text{ m}", "5\\text{ cm}"),
        ("y=5", "x=5"), ("(1,2)", "[1,2]")]}
    assert list(hows.values()) == ["exact-number", "decimal", "symbolic", "unit", "label", "structure"]


# ----------------------------------------------------------------------------------------------------------------
# Exactness as a property: equal exactly when the values are equal, whatever the form

def latex_forms(x: Fraction) -> list[str]:
    """x written the ways MATH answers write numbers (decimals only when x terminates)."""
    a, b = x.numerator, x.denominator
    sign = "-" if a < 0 else ""
    if b == 1:
        forms = [str(a), f"{a}.0", f"\\frac{{{2 * a}}}{{2}}"]
        forms += [f"{a:,}", f"{a:,}".replace(",", "{,}")] if abs(a) >= 1000 else []
    else:
        forms = [f"\\frac{{{a}}}{{{b}}}", f"{sign}\\dfrac{{{abs(a)}}}{{{b}}}", f"{a}/{b}",
                 f"\\frac{{{3 * a}}}{{{3 * b}}}"]
        forms += [f"{sign}{abs(a) // b}\\frac{{{abs(a) % b}}}{{{b}}}"] if abs(a) > b else []
    places = next((k for k in range(40) if 10 ** k % b == 0), None)
    if places:
        digits = str(abs(a) * 10 ** places // b).rjust(places + 1, "0")
        forms.append(f"{sign}{digits[:-places]}.{digits[-places:]}")
    return forms


def random_value(rng: random.Random) -> Fraction:
    kind = rng.choice(["int", "big", "fraction", "decimal"])
    if kind == "int":
        return Fraction(rng.randint(-999, 999))
    if kind == "big":
        return Fraction(rng.randint(-10 ** 12, 10 ** 12))
    if kind == "fraction":
        return Fraction(rng.randint(-5000, 5000), rng.randint(2, 999))
    return Fraction(rng.randint(-10 ** 6, 10 ** 6), 10 ** rng.randint(1, 6))


def test_numbers_are_equal_exactly_when_their_values_are():
    rng = random.Random(0)
    for _ in range(300):
        x = random_value(rng)
        y = rng.choice([x, x, x + 1, x - 1, x + Fraction(1, 10 ** 7), x * (1 + Fraction(1, 10 ** 6)),
                        x + Fraction(1, rng.randint(2, 10 ** 9)), random_value(rng)])
        fx, fy = rng.choice(latex_forms(x)), rng.choice(latex_forms(y))
        assert both_ways(fx, fy) == (x == y, x == y), (fx, fy)


# ----------------------------------------------------------------------------------------------------------------
# MATH-500: the golds

@pytest.fixture(scope="module")
def math500_golds() -> list[str]:
    return [x["answer"] for x in load_benchmark("math500")]


def rewrites(gold: str) -> list[str]:
    """Forms of the same answer: \\dfrac, spacing, math delimiters, \\left/\\right, a full stop."""
    spaced = re.sub(r",(?!\d{3}(?!\d)|\\!)", ", ", gold).replace("+", " + ").replace("=", " = ")  # not 58,500
    paren = f"\\left({gold[1:-1]}\\right)" if gold.startswith("(") and gold.endswith(")") else gold
    return [gold.replace("\\frac", "\\dfrac"), spaced, f"${gold}$", paren, f"{gold}."]


def test_math500_golds_equal_themselves_and_their_rewrites(math500_golds):
    assert len(math500_golds) == 500
    for gold in math500_golds:
        assert math_equal(gold, gold), gold
        for form in rewrites(gold):
            result = compare_math(form, gold)
            assert result["equal"], (form, gold, result)


def test_math500_integer_golds_reject_their_neighbours(math500_golds):
    integers = [g for g in math500_golds if g.lstrip("-").isdigit()]
    assert len(integers) > 250
    for gold in integers:
        n = int(gold)
        assert not math_equal(str(n + 1), gold) and not math_equal(f"{n}.000001", gold), gold


# ----------------------------------------------------------------------------------------------------------------
# The guard and the time limit

@pytest.mark.parametrize("pred", ["9^{9^{9^{9}}}", "(10^{6})!", "10^{10^{5}}", "\\binom{100000}{50000}",
                                  "(x+1)^{100000}"])
def test_huge_answers_are_refused_quickly_from_a_worker_thread(pred):
    start = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:  # evaluation may grade from any thread: no signals involved
        result = pool.submit(compare_math, pred, "5").result()
    assert time.perf_counter() - start < 2.0
    assert not result["equal"] and result["how"] in ("guard", "unparsed")


def test_the_size_guard_allows_ordinary_powers():
    assert math_equal("2^{100}", str(2 ** 100)) and math_equal("10!", "3628800") and math_equal("(x+1)^{2}",
                                                                                                 "x^2+2x+1")


def test_with_time_limit_abandons_a_slow_call_and_passes_errors_on():
    start = time.perf_counter()
    assert with_time_limit(lambda: time.sleep(2), 0.05) == (False, None)
    assert time.perf_counter() - start < 1.0
    assert with_time_limit(lambda: 7, 1.0) == (True, 7)
    with pytest.raises(ZeroDivisionError):
        with_time_limit(lambda: 1 / 0, 1.0)


def test_a_symbolic_check_past_its_time_limit_is_scored_unequal(monkeypatch):
    monkeypatch.setattr(answers, "SYMBOLIC_TIMEOUT_S", 0.05)
    monkeypatch.setattr(answers, "symbolic_equal", lambda pred, gold: (time.sleep(1), (True, "symbolic"))[1])
    assert compare_math("\\sqrt8", "2\\sqrt2") == dict(pred_norm="\\sqrt{8}", gold_norm="2\\sqrt{2}", equal=False,
                                                        how="timeout")


# ----------------------------------------------------------------------------------------------------------------
# GSM / MGSM

@pytest.mark.parametrize("text, expected", [
    ("The answer is 30 - 2 * 4 = 22.", "22"),  # the result after "=", not the first number
    ("The answer is 3 dozen, or 36.", "36"),  # the final number of the sentence
    ("He is short. The answer is -$5.", "-5"), ("The answer is $-5.", "-5"),  # the sign before the currency
    ("The answer is \u22125.", "-5"),  # Unicode minus
    ("The answer is 3.5.", "3.5"),  # the full stop does not eat the decimal point
    ("5 apples cost $1,250.50 in all. The answer is 1,250.5.", "1250.5"),
    ("The answer is -3.5. Then 7 more things.", "-3.5"),  # the answer sentence wins over the last number
    ("we get 12, then 15", "15"), ("the slope is -0.25", "-0.25"), ("5-3=2", "2"), ("The answer is: $18", "18"),
    ("no digits", None), ("1,000,000 people", "1000000"), ("it is .5", ".5"), ("So she pays $18.00.", "18.00"),
    ("The answer is 12\nThen 99", "12"), ("The answer is unclear, but 7 is likely", "7"),
])
def test_extract_number(text, expected):
    assert extract_number(text) == expected


@pytest.mark.parametrize("text, gold, equal", [
    ("The answer is 12. Some might say 15, but 12 is right.", "12", True),
    ("The answer is 12. Some might say 15, but 12 is right.", "15", False),
    ("#### 30\nA naive reading gives 40.", "30", True), ("#### 30\nA naive reading gives 40.", "40", False),
    ("The final answer is 7, not 8.", "7", True), ("The final answer is 7, not 8.", "8", False),
    ("\\boxed{9}. (10 if you count the teacher.)", "9", True), ("\\boxed{9}. (10 with the teacher.)", "10", False),
    ("Answer: 100. A common mistake is 1000.", "100", True), ("Answer: 100. A common mistake is 1000.", "1000", False),
    ("Final answer: 45\nCheck: 45 + 15 = 60, 60 / 3 = 20.", "45", True),
    ("Final answer: 45\nCheck: 45 + 15 = 60, 60 / 3 = 20.", "20", False),
    ("The answer is -4 degrees; it was 6 at noon.", "-4", True), ("The answer is -4 degrees; it was 6.", "6", False),
    ("The answer is 25%, that is 50 of 200 students.", "25", True),
    ("The answer is 25%, i.e. 50 of 200.", "200", False),
    ("The answer is **21** miles. Next week he plans 28.", "21", True),
    ("The answer is $\\boxed{84}$ since 12 * 7 = 84, against 80 last week.", "84", True),
    ("I think the answer is 17.\nWait: 9 + 9 = 18. The answer is 18.", "18", True),  # the last statement counts
    ("I think the answer is 17.\nWait: 9 + 9 = 18. The answer is 18.", "17", False),
    ("The answer is:\n\n$1,250", "1250", True), ("The answer is 2.5, so rounding gives 3.", "3", False),
])
def test_a_stated_answer_wins_over_later_numbers(text, gold, equal):
    assert number_equal(extract_number(text), gold) == equal


@pytest.mark.parametrize("pred, gold, equal", [
    # MATH's own answer field: matrix rows cut by a single backslash
    ("\\begin{pmatrix}6\\3\\0\\end{pmatrix}", "\\begin{pmatrix} 6 \\\\ 3 \\\\ 0 \\end{pmatrix}", True),
    ("\\begin{pmatrix}2&0\\-3&5\\end{pmatrix}", "\\begin{pmatrix} 2 & 0 \\\\ -3 & 5 \\end{pmatrix}", True),
    ("\\begin{pmatrix} 1 & 2 \\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
    ("\\begin{pmatrix}2&0\\-3&5\\end{pmatrix}", "\\begin{pmatrix} 2 & 0 \\\\ 3 & 5 \\end{pmatrix}", False),
    ("\\begin{pmatrix}6\\3\\0\\end{pmatrix}", "\\begin{pmatrix} 6 & 3 & 0 \\end{pmatrix}", False),
    # letter lists wrapped in \text{}
    ("\\text{A,D}", "A, D", True), ("\\text{B, E, G}", "B,E,G", True), ("\\text{(A), (C)}", "A, C", True),
    ("\\text{A,C}", "A, D", False), ("\\text{A,C}", "A", False), ("\\text{A, C}", "\\text{A, C, E}", False),
    # \mbox units with a power, on one side only or on both
    ("144 \\mbox{ m}^3", "144", True), ("15\\mbox{ cm}^2", "15\\text{ square cm}", True),
    ("8\\text{ cubic feet}", "8\\mbox{ feet}^3", True), ("144 \\mbox{ m}^3", "144 \\mbox{ m}^2", False),
    ("144 \\mbox{ m}^3", "145", False),
    # a thousands separator with a space after the comma
    ("111, \\! 111, \\! 111", "111111111", True), ("111, \\! 111, \\! 111", "111111112", False),
    ("111, \\! 111, \\! 111", "111, 111, 111", False),
])
def test_math_answer_field_forms(pred, gold, equal):
    assert both_ways(pred, gold) == (equal, equal)


def test_numbers_compare_exactly():
    assert number_equal("18.00", "18") and number_equal(".25", "0.25") and number_equal("7/2", "3.5")
    assert number_equal("-$5", "-5") and number_equal("\u22125", "-5") and number_equal("1,234", "1234")
    assert not number_equal("1000001", "1000000") and not number_equal("0.30000000000000004", "0.3")
    assert not number_equal(None, "5") and not number_equal("five", "5")
    assert compare_number("18.00", "18") == dict(pred_norm="18", gold_norm="18", equal=True, how="exact-number")
    with pytest.raises(ValueError, match="not a number"):
        compare_number("5", "five")
