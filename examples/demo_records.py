"""The real-model demo's task: a person's record pulled out of a sentence, in a strict format.

    "Since 2011, Maria Lopez has worked as a nurse in Lisbon."
    -> "name: Maria Lopez; city: Lisbon; year: 2011; job: nurse"

Told only "Extract name, city, year and job.", the base model repeats or paraphrases the
sentence (0 of 64 held-out rows in the format); LoRA teaches the format in about a minute of
CPU training. The held-out rows
share nothing with the training rows but the format: their names, cities, years, jobs and
sentence templates never appear in training, so exact match on them measures the skill, not
recall of rows seen in training.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tune.data import split_source

# The task's system prompt (it replaces SmolLM2's default one, "You are a helpful AI assistant
# named SmolLM, ..."): the instruction, before and after fine-tuning alike.
SYSTEM_PROMPT = "Extract name, city, year and job."

FIRST_NAMES = [
    "Maria", "James", "Aiko", "Omar", "Elena", "Lucas", "Priya", "Jonas", "Fatima", "Mateo",
    "Chloe", "Ivan", "Amara", "Noah", "Ingrid", "Diego", "Leila", "Tomas", "Grace", "Kenji",
    "Sofia", "Pavel", "Nadia", "Felix", "Hana", "Samuel", "Yara", "Oscar", "Mei", "Andre",
    "Zara", "Luca", "Alice", "Rafael", "Emma", "Hugo", "Olga", "Ethan", "Lina", "Victor",
]  # fmt: skip
LAST_NAMES = [
    "Lopez", "Smith", "Tanaka", "Haddad", "Rossi", "Meyer", "Sharma", "Berg", "Khan", "Silva",
    "Martin", "Petrov", "Okafor", "Brown", "Larsen", "Garcia", "Nasser", "Novak", "Kim", "Sato",
    "Costa", "Dubois", "Ahmed", "Weber", "Park", "Evans", "Moreau", "Jensen", "Chen", "Santos",
    "Fischer", "Ali", "Murphy", "Russo", "Nguyen", "Kowalski", "Wright", "Horvat", "Ito", "Reyes",
]  # fmt: skip
CITIES = [
    "Lisbon", "Oslo", "Nairobi", "Toronto", "Osaka", "Lima", "Vienna", "Cairo", "Dublin", "Perth",
    "Seoul", "Prague", "Bogota", "Munich", "Hanoi", "Denver", "Porto", "Accra", "Krakow", "Quito",
    "Madrid", "Helsinki", "Mumbai", "Boston", "Athens", "Santiago", "Zurich", "Manila", "Lyon",
    "Chicago", "Tunis", "Glasgow", "New York", "Cape Town", "Buenos Aires", "Hong Kong", "Rome",
    "San Diego", "Tel Aviv", "Kuala Lumpur",
]  # fmt: skip
JOBS = [
    "nurse", "teacher", "baker", "pilot", "chef", "lawyer", "plumber", "architect", "dentist",
    "engineer", "librarian", "farmer", "journalist", "pharmacist", "electrician", "accountant",
    "photographer", "carpenter", "translator", "veterinarian", "firefighter", "designer",
    "mechanic", "surgeon", "tailor", "economist", "florist", "geologist", "police officer",
    "software developer", "bus driver", "data analyst", "social worker", "web designer",
    "flight attendant", "sound engineer", "real estate agent", "music teacher", "night guard",
    "museum curator", "tour guide", "truck driver", "bank teller", "marine biologist",
    "yoga instructor", "radio host", "school nurse", "game designer", "city planner",
    "lab technician", "personal trainer", "art director",
]  # fmt: skip
YEARS = list(range(1971, 2025))
T = TypeVar("T")

# {name} {city} {year} {job}; {a_job}: the job with its article ("an engineer").
TRAIN_TEMPLATES = [
    "{name} moved to {city} in {year} to work as {a_job}.",
    "In {year}, {name} started a new job as {a_job} in {city}.",
    "{name}, {a_job}, has lived in {city} since {year}.",
    "Since {year}, {name} has worked as {a_job} in {city}.",
    "{name} took a job as {a_job} in {city} back in {year}.",
    "The {job} {name} arrived in {city} in {year}.",
    "Records show that {name} settled in {city} in {year} and worked as {a_job}.",
    "{year}: {name} relocates to {city}, hired as {a_job}.",
    "{name} ({job}) has been based in {city} since {year}.",
    "It was in {year} that {name} began working as {a_job} in {city}.",
    "After {year}, {name} worked in {city} as {a_job}.",
    "{city} has been home to {name}, {a_job}, since {year}.",
]
HELD_OUT_TEMPLATES = [
    "{name} was hired as {a_job} in {city} in {year}.",
    "In {city}, {name} has worked as {a_job} since {year}.",
    "Back in {year}, {name} left for {city} to become {a_job}.",
    "{A_job} named {name} moved to {city} in {year}.",
]


def record(name: str, city: str, year: int, job: str) -> str:
    """The answer: ``name: ...; city: ...; year: ...; job: ...``.

    A space after each colon: values are then the same tokens as in the sentence (" Lisbon"),
    where ``city=Lisbon`` would spell them in other tokens ("Lis", "bon") that a 135M model
    copies poorly.
    """
    return f"name: {name}; city: {city}; year: {year}; job: {job}"


@dataclass(frozen=True)
class Pools:
    """The values one split draws from."""

    first_names: list[str]
    last_names: list[str]
    cities: list[str]
    years: list[int]
    jobs: list[str]
    templates: list[str]


def _held_out_every(values: list[T], every: int, held_out: bool) -> list[T]:
    """Every ``every``-th value (``held_out``) or the others."""
    return [v for i, v in enumerate(values) if (i % every == every - 1) == held_out]


def pools(held_out: bool) -> Pools:
    """The training or held-out values: every 4th name, city, year and job is held out."""
    return Pools(
        first_names=_held_out_every(FIRST_NAMES, 4, held_out),
        last_names=_held_out_every(LAST_NAMES, 4, held_out),
        cities=_held_out_every(CITIES, 4, held_out),
        years=_held_out_every(YEARS, 4, held_out),
        jobs=_held_out_every(JOBS, 4, held_out),
        templates=HELD_OUT_TEMPLATES if held_out else TRAIN_TEMPLATES,
    )


def _rows(count: int, p: Pools, rng: random.Random, split: str) -> list[dict[str, Any]]:
    """``count`` distinct rows drawn from ``p``."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str, int, str, int]] = set()
    while len(rows) < count:
        key = (
            f"{rng.choice(p.first_names)} {rng.choice(p.last_names)}", rng.choice(p.cities),
            rng.choice(p.years), rng.choice(p.jobs), rng.randrange(len(p.templates)),
        )  # fmt: skip
        if key in seen:
            continue
        seen.add(key)
        name, city, year, job, t = key
        a_job = ("an " if job[0] in "aeiou" else "a ") + job
        sentence = p.templates[t].format(
            name=name, city=city, year=year, job=job, a_job=a_job, A_job=a_job.capitalize()
        )
        rows.append({
            "question": sentence, "answer": record(name, city, year, job),
            "split": split, "template": t,
        })  # fmt: skip
    return rows


def records(num_train: int, num_held_out: int, seed: int = 0) -> list[dict[str, Any]]:
    """Training then held-out rows: ``{"question", "answer", "split", "template"}``.

    Held-out rows use only held-out names (first and last), cities, years, jobs and templates.

    Args:
        num_train: training rows.
        num_held_out: held-out rows.
        seed: sampling seed.
    """
    rng = random.Random(seed)
    train = _rows(num_train, pools(held_out=False), rng, "train")
    return train + _rows(num_held_out, pools(held_out=True), rng, "held_out")


def as_chat(row: dict[str, Any]) -> dict[str, Any]:
    """One chat conversation (the ``messages`` column of ``data.format=chat``)."""
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": row["answer"]},
        ],
        "split": row["split"],
    }


def write_chat_data(rows: list[dict[str, Any]], path: Path, seed: int) -> float:
    """Write ``rows`` as chats (JSON lines) so that the recipe holds out exactly the held-out rows.

    The ``sft`` recipe holds out a seeded random fraction of a local file
    (``data.validation_fraction``, ``data.seed``). Which positions it picks depends only on the
    number of rows and the seed, so the held-out rows are written at those positions; the
    split is then checked on the written file.

    Args:
        rows: training and held-out rows (``records``).
        path: the JSON-lines file to write.
        seed: ``data.seed`` of the run.

    Returns:
        The ``data.validation_fraction`` that holds out exactly the held-out rows.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    held = [r for r in rows if r["split"] == "held_out"]
    train = [r for r in rows if r["split"] == "train"]
    # Half a row under the count: the split rounds the held-out size up.
    fraction = (len(held) - 0.5) / len(rows)

    def write(lines: list[dict[str, Any]]) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(line) + "\n" for line in lines)

    write([{"position": i} for i in range(len(rows))])  # where does the split put its rows?
    _, probe = split_source(str(path), "train", None, fraction, seed)
    assert probe is not None
    held_positions = set(probe["position"])
    held_iter, train_iter = iter(held), iter(train)
    write([
        as_chat(next(held_iter) if i in held_positions else next(train_iter))
        for i in range(len(rows))
    ])  # fmt: skip
    _, val = split_source(str(path), "train", None, fraction, seed)
    if val is None or len(val) != len(held) or set(val["split"]) != {"held_out"}:
        raise RuntimeError(f"{path}: the recipe's hold-out split is not the held-out rows")
    return fraction
