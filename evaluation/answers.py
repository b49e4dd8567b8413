"""Answer extraction: the final answer a model gave, normalised so that equal answers compare equal.

Numbers: the number after the last "答え:" (or full-width "答え："), else the last number in the text. Text is
NFKC-normalised first, so full-width digits, "，", "．", "＋", "－" read as their ASCII forms; the minus sign "−"
(U+2212) reads as "-". Thousands separators go ("１，２００" == "1,200" == "1200"). Numbers compare by VALUE:
"1200.0" and "1200" agree, "0.50" and ".5" agree, "-0" is "0" (a model that writes "1200.0" did answer 1200).
A sign counts only where it is not part of an expression: in "7-2=5" the numbers are 7, 2 and 5.
Text answers: the text after the last "答え:" marker (to the end of its line), NFKC-normalised and stripped.
Equation answers (for prompts that are an expression ending in "=", replied to as "14+5=19"): the number written
right after the reply's FIRST "=" (spaces allowed, and one "答え:" marker between them: "14+5=答え: 19" reads 19);
None where the reply has no "=" or no number right after it. So "20-2=18=12" reads 18 (the first result, not the
last number) and a chatty reply ending on the right number ("The number 12 is…") gives no answer. Equation answers
compare as numbers, by value, like number answers. `extract(text, answer_type)` picks the rule (ANSWER_TYPES).

Optionally the reply must be in Japanese (`require_japanese=True`), as Sakana counts MGSM-JA: a reply in English with
the right number then gives no answer. A reply is Japanese when it holds kana (hiragana or katakana: kanji alone
could be Chinese) and at least half of its letters are Japanese script (kana and kanji); digits, punctuation and
symbols are not letters, so "答え: 42" alone is Japanese and "The answer is 42. 答え: 42" is not.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation

from merging.errors import TaskSetError

_MARKER = re.compile(r"答え\s*[:：]")
# After NFKC ("＝" is "="): the first "=", then spaces and at most one "答え:" marker before the number.
_FIRST_EQUALS = re.compile(r"=\s*(?:答え\s*:\s*)?")
ANSWER_TYPES = ("number", "text", "equation")  # how a task's replies are read (evaluation.tasks: "answer_type")
NUMERIC_TYPES = ("number", "equation")  # the answer types whose answers compare as numbers
# Grouped thousands first (1,200,000), then plain digits; optional decimals; a sign only where it does not follow
# a digit or a Latin letter (so "3-2" is 3 and 2, while "気温は-5度" is -5).
_NUMBER = re.compile(
    r"(?:(?<![0-9A-Za-z.])[+-])?(?:(?:\d{1,3}(?:,\d{3})+(?![0-9])|\d+)(?:\.\d+)?|(?<![0-9])\.\d+)"
)
_EXTRA_MINUS = str.maketrans({"−": "-", "‐": "-", "–": "-", "﹣": "-"})
# After NFKC, so half-width katakana has become full-width. ー (U+30FC) and 々 (U+3005) count as Japanese script.
_KANA = re.compile(r"[\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff]")
_JAPANESE_SCRIPT = re.compile(r"[\u3005\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff]")
JAPANESE_SHARE = 0.5  # the least share of a reply's letters in Japanese script


def normalize_text(text: str) -> str:
    """NFKC (full-width to ASCII forms) with the Unicode minus signs read as "-"."""
    return unicodedata.normalize("NFKC", text).translate(_EXTRA_MINUS)


def canonical_number(token: str) -> str | None:
    """A number's canonical string: no separators, no "+", no trailing fractional zeros ("1,200.50" -> "1200.5")."""
    cleaned = normalize_text(str(token)).strip().replace(",", "").replace(" ", "")
    if not re.fullmatch(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", cleaned):
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _numbers(text: str) -> list[str]:
    return [m.group(0) for m in _NUMBER.finditer(text)]


def japanese_share(text: str) -> float:
    """The share of the text's letters (Unicode category L*, after NFKC) written in Japanese script; 0 without
    letters."""
    letters = [c for c in normalize_text(text) if unicodedata.category(c).startswith("L")]
    if not letters:
        return 0.0
    return sum(1 for c in letters if _JAPANESE_SCRIPT.match(c)) / len(letters)


def is_japanese_reply(text: str | None) -> bool:
    """Whether a reply is written in Japanese: it holds kana, and at least JAPANESE_SHARE of its letters are
    Japanese script."""
    if not text:
        return False
    return bool(_KANA.search(normalize_text(text))) and japanese_share(text) >= JAPANESE_SHARE


def extract_answer(text: str | None, *, require_japanese: bool = False) -> str | None:
    """The canonical number the text answers, or None where it holds no number (or, with `require_japanese`, where
    the reply is not in Japanese: is_japanese_reply)."""
    if not text or (require_japanese and not is_japanese_reply(text)):
        return None
    normalized = normalize_text(text)
    markers = list(_MARKER.finditer(normalized))
    if markers:
        after = _numbers(normalized[markers[-1].end():])
        if after:
            return canonical_number(after[0])
    found = _numbers(normalized)
    return canonical_number(found[-1]) if found else None


def extract_equation_answer(text: str | None) -> str | None:
    """The canonical number written right after the text's first "=" (after spaces and an optional "答え:"), or None
    where the text has no "=" or no number follows it: "14+5=19" and "14 + 5 = 19" give "19", "3-5=-2" gives "-2",
    "20-2=18=12" gives "18", "14+5=答え: 19" gives "19", "14+5=" and "14+5=nineteen" give None."""
    if not text:
        return None
    normalized = normalize_text(text)
    equals = _FIRST_EQUALS.search(normalized)
    number = _NUMBER.match(normalized, equals.end()) if equals else None
    return canonical_number(number.group(0)) if number else None


def extract_text_answer(text: str | None) -> str | None:
    """The text after the last "答え:" marker up to the end of its line (the whole first line without a marker),
    normalised; None where that is empty."""
    if not text:
        return None
    normalized = normalize_text(text)
    markers = list(_MARKER.finditer(normalized))
    rest = normalized[markers[-1].end():] if markers else normalized
    lines = [line.strip() for line in rest.strip().splitlines()]
    return lines[0] if lines and lines[0] else None


def answer_body(answer: object) -> str:
    """An expected answer without its "答え:" marker, if it was written with one ("答え: 7" -> "7")."""
    text = normalize_text(str(answer))
    markers = list(_MARKER.finditer(text))
    return (text[markers[-1].end():] if markers else text).strip()


def is_numeric_answer(answer: object) -> bool:
    """Whether an expected answer is a number (then answers are compared by value, else as text)."""
    if isinstance(answer, bool):
        return False
    if isinstance(answer, (int, float)):
        return True
    return isinstance(answer, str) and canonical_number(answer_body(answer)) is not None


def expected_answer(answer: object, answer_type: str) -> str | None:
    """The canonical form of an expected answer from a task file ("答え: 1,200" and 1200 give "1200"; numbers for
    the number and equation types, text otherwise)."""
    if answer is None:
        return None
    body = answer_body(answer)
    return canonical_number(body) if _checked(answer_type) in NUMERIC_TYPES else body


def extract(text: str | None, answer_type: str, *, require_japanese: bool = False) -> str | None:
    """The reply's answer by the task's answer type: extract_answer ("number"), extract_text_answer ("text") or
    extract_equation_answer ("equation"); with `require_japanese` a reply not in Japanese gives None."""
    rule = {"number": extract_answer, "text": extract_text_answer, "equation": extract_equation_answer}[
        _checked(answer_type)]
    if require_japanese and not is_japanese_reply(text):
        return None
    return rule(text)


def _checked(answer_type: str) -> str:
    if answer_type not in ANSWER_TYPES:
        raise TaskSetError(f"Unknown answer type {answer_type!r}: use one of {', '.join(ANSWER_TYPES)}.")
    return answer_type
