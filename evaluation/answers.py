"""Answer extraction: the final answer a model gave, normalised so that equal answers compare equal.

Numbers: the number after the last "答え:" (or full-width "答え："), else the last number in the text. Text is
NFKC-normalised first, so full-width digits, "，", "．", "＋", "－" read as their ASCII forms; the minus sign "−"
(U+2212) reads as "-". Thousands separators go ("１，２００" == "1,200" == "1200"). Numbers compare by VALUE:
"1200.0" and "1200" agree, "0.50" and ".5" agree, "-0" is "0" (a model that writes "1200.0" did answer 1200).
A sign counts only where it is not part of an expression: in "7-2=5" the numbers are 7, 2 and 5.
Text answers: the text after the last "答え:" marker (to the end of its line), NFKC-normalised and stripped.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation

_MARKER = re.compile(r"答え\s*[:：]")
# Grouped thousands first (1,200,000), then plain digits; optional decimals; a sign only where it does not follow
# a digit or a Latin letter (so "3-2" is 3 and 2, while "気温は-5度" is -5).
_NUMBER = re.compile(
    r"(?:(?<![0-9A-Za-z.])[+-])?(?:(?:\d{1,3}(?:,\d{3})+(?![0-9])|\d+)(?:\.\d+)?|(?<![0-9])\.\d+)"
)
_EXTRA_MINUS = str.maketrans({"−": "-", "‐": "-", "–": "-", "﹣": "-"})


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


def extract_answer(text: str | None) -> str | None:
    """The canonical number the text answers, or None where it holds no number."""
    if not text:
        return None
    normalized = normalize_text(text)
    markers = list(_MARKER.finditer(normalized))
    if markers:
        after = _numbers(normalized[markers[-1].end():])
        if after:
            return canonical_number(after[0])
    found = _numbers(normalized)
    return canonical_number(found[-1]) if found else None


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


def expected_answer(answer: object, numeric: bool) -> str | None:
    """The canonical form of an expected answer from a task file ("答え: 1,200" and 1200 give "1200")."""
    if answer is None:
        return None
    body = answer_body(answer)
    return canonical_number(body) if numeric else body


def extract(text: str | None, numeric: bool) -> str | None:
    """extract_answer for numeric tasks, extract_text_answer for text tasks."""
    return extract_answer(text) if numeric else extract_text_answer(text)
