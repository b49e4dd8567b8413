"""evaluation.answers: extracting and normalising final answers, full-width forms included."""

from __future__ import annotations

import pytest

from evaluation.answers import (
    ANSWER_TYPES,
    canonical_number,
    expected_answer,
    extract,
    extract_answer,
    extract_equation_answer,
    extract_text_answer,
    is_japanese_reply,
    japanese_share,
)
from merging.errors import TaskSetError

CASES = [
    # the number after the marker wins over later numbers
    ("答え: 42", "42"),
    ("答え：42", "42"),
    ("答え: 42 (途中で 7 を使いました)", "42"),
    ("3+4=7 なので 答え: 7", "7"),
    ("途中式 12×3=36。答え： 36個", "36"),
    ("答え : 15", "15"),
    ("答え:15\n別解: 16", "15"),
    ("最初の答え: 3、見直して 答え: 4", "4"),
    # full-width digits, separators and signs
    ("答え：１２", "12"),
    ("答え：１，２００円", "1200"),
    ("答え: 1,200円", "1200"),
    ("答え: 1200", "1200"),
    ("答え: １２００．０", "1200"),
    ("答え: 1200.0", "1200"),
    ("答え：－５", "-5"),
    ("答え: −5", "-5"),
    ("答え：＋７", "7"),
    ("気温は－３度です", "-3"),
    ("合計は 1,234,567 円", "1234567"),
    ("答え: 3.50", "3.5"),
    ("答え: ３．１４", "3.14"),
    ("答え: 0.0", "0"),
    ("答え: -0", "0"),
    ("答え: .5", "0.5"),
    # no marker: the last number in the text
    ("りんごが 3 個とみかんが 5 個", "5"),
    ("7-2=5", "5"),
    ("1,2,3", "3"),
    ("1,2345", "2345"),
    ("x2 = 10", "10"),
    ("令和5年は2023年", "2023"),
    # a marker with no number after it falls back to the last number
    ("5 と 6 を足します。答え: わかりません", "6"),
    # nothing numeric
    ("わかりません", None),
    ("", None),
    ("答え: 三", None),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_there_are_enough_cases():
    assert len(CASES) >= 30
    assert sum(any("\uff01" <= ch <= "\uff5e" for ch in text) for text, _ in CASES) >= 8  # full-width forms


def test_none_text_has_no_answer():
    assert extract_answer(None) is None


@pytest.mark.parametrize(
    ("a", "b"), [("１，２００", "1200"), ("1200.0", "1200"), ("+3", "3"), ("－２", "-2"), ("0.50", ".5")]
)
def test_equal_values_have_one_canonical_form(a, b):
    assert canonical_number(a) == canonical_number(b) is not None


def test_canonical_number_rejects_text():
    assert canonical_number("abc") is None
    assert canonical_number("1.2.3") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("答え: olleh", "olleh"),
        ("答え：ｄｃｂａ\n次の問題", "dcba"),
        ("  abc  ", "abc"),
        ("答え: ", None),
        ("", None),
    ],
)
def test_extract_text_answer(text, expected):
    assert extract_text_answer(text) == expected


def test_extract_picks_the_mode_and_expected_answers_normalise_the_same_way():
    assert extract("答え: 1,200", "number") == expected_answer(1200, "number") == "1200"
    assert extract("答え: ＡＢＣ", "text") == expected_answer("ABC", "text") == "ABC"
    assert expected_answer(None, "number") is None
    assert expected_answer("答え: 1,200", "number") == "1200"  # zoo files write answers with the marker
    assert expected_answer("答え: ejd", "text") == "ejd"


# --- the optional "reply must be in Japanese" rule (as Sakana counts MGSM-JA) --------------------------------------

@pytest.mark.parametrize("text, japanese", [
    ("りんごは全部で12個です。答え: 12", True),
    ("答え: 42", True),  # the marker alone: its letters are all Japanese script, え is kana
    ("ﾘﾝｺﾞは3個です", True),  # half-width katakana reads as kana
    ("合計は12個になります", True),
    ("The answer is 42. 答え: 42", False),  # 2 of 13 letters Japanese
    ("所以答案是42", False),  # Chinese: kanji without kana
    ("We have 3 apples, so the answer is 3. ですから", False),
    ("42", False),  # no letters at all
    ("", False),
    (None, False),
])
def test_is_japanese_reply(text, japanese):
    assert is_japanese_reply(text) is japanese


def test_japanese_share_counts_letters_only():
    assert japanese_share("答え: 42!") == 1.0
    assert japanese_share("ab答え") == 0.5
    assert japanese_share("123 + 4") == 0.0


@pytest.mark.parametrize("text, plain, japanese_only", [
    ("りんごは3個あります。答え：５", "5", "5"),
    ("The answer is 42. 答え: 42", "42", None),  # right number, English reply: it does not count
    ("所以答案是42", "42", None),
])
def test_extract_answer_can_require_a_japanese_reply(text, plain, japanese_only):
    assert extract_answer(text) == plain  # off by default: the rule is unchanged
    assert extract_answer(text, require_japanese=True) == japanese_only
    assert extract(text, "number", require_japanese=True) == japanese_only


def test_extract_text_answers_can_require_a_japanese_reply_too():
    assert extract("答え: 東京", "text", require_japanese=True) == "東京"
    assert extract("答え: Tokyo", "text") == "Tokyo"
    assert extract("The capital is Tokyo.", "text", require_japanese=True) is None


# --- equation answers: the number right after the reply's first "=" ------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("14+5=19", "19"),
    ("14 + 5 = 19", "19"),  # spaces around "="
    ("14+5=   19 apples", "19"),
    ("14+5=\n19", "19"),  # whitespace includes a line break
    ("１４＋５＝１９", "19"),  # full-width "＝" and digits (NFKC)
    ("3-5=-2", "-2"),  # a negative result: the sign right after "=" is the number's
    ("3-5=−2", "-2"),  # the Unicode minus sign too
    ("1/2=0.5", "0.5"),
    ("7/2=3.50", "3.5"),  # compared by value: canonical form
    ("600+600=1,200", "1200"),
    ("20-2=18=12", "18"),  # the FIRST "=": the computed result, not the rambling after it
    ("14+5=19. So 14+5 is not 20", "19"),
    ("14+5=答え: 19", "19"),  # one answer marker between "=" and the number is skipped
    ("14+5=答え：１９", "19"),
    ("14+5=", None),  # nothing after "="
    ("14+5= nineteen", None),  # a non-number follows
    ("14+5=x, and x is 19", None),
    ("The number 12 is a special number", None),  # no "=": a chatty reply ending on the right number
    ("答え: 19", None),  # the number rule's marker alone is not an equation
    ("", None),
    (None, None),
])
def test_extract_equation_answer(text, expected):
    assert extract_equation_answer(text) == expected


def test_equation_and_number_rules_differ_where_the_equation_rule_matters():
    assert (extract("20-2=18=12", "equation"), extract("20-2=18=12", "number")) == ("18", "12")
    chatty = "十四-二= The number 12 is a special number"
    assert (extract(chatty, "equation"), extract(chatty, "number")) == (None, "12")
    assert expected_answer("答え: 19", "equation") == expected_answer(19, "number") == "19"  # numbers, by value


def test_equation_answers_can_require_a_japanese_reply():
    assert extract("14+5=19", "equation") == "19"
    assert extract("14+5=19", "equation", require_japanese=True) is None  # no kana: not a Japanese reply
    assert extract("十四たす五=19です", "equation", require_japanese=True) == "19"


def test_an_unknown_answer_type_is_refused_by_name():
    assert ANSWER_TYPES == ("number", "text", "equation")
    with pytest.raises(TaskSetError, match="'numbers'.*number, text, equation"):
        extract("1+1=2", "numbers")
    with pytest.raises(TaskSetError, match="'eq'"):
        expected_answer("2", "eq")
