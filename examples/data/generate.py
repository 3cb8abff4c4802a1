"""Generate the bundled example task: pull a person's name, age, city and country out of a sentence as JSON.

Why this task: the answer is checkable automatically (parse the JSON, compare the fields); the base
SmolLM2-135M-Instruct does not answer in the required exact form (it chats, echoes the sentence,
invents extra people); and the country is *not* in the sentence: the model must know where the city
is and write it the way this task's users want ("USA", "UK", "Korea"). Three examples in a prompt
show the JSON form but cannot teach that convention for 48 cities; 400 training rows can. (A first
version without the country field was learned almost as well by 3-shot prompting as by fine-tuning,
97.5% vs 100%, which made a poor lesson about when fine-tuning is worth it.)

No validation sentence occurs in the training data (the split is checked); names and cities come
from shared pools, so name, age and city have to be read from the sentence. A held-out name/city
pool was tried first and mostly measured how the 135M model copies rare tokens ("Sibiu" -> "Sibi"),
not whether it learned the task.

One row in five of the training data is ordinary chat (capitals, sums, opposites) answered in
plain prose, so the tuned model learns "JSON when asked to extract", not "JSON always": without
them a LoRA run made the model answer "What is the capital of France?" with a JSON object.

Run: ``python examples/data/generate.py`` (fixed seed; rewrites train.jsonl and val.jsonl here).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 1234
N_TRAIN, N_GENERAL, N_VAL = 400, 100, 40
INSTRUCTION = (
    "Extract the person's name, age, city and country from the text. "
    "Answer with JSON only, keys name, age, city, country."
)

FIRST_NAMES = """Alice Bruno Chloe Dmitri Elena Farid Grace Hiro Ines Jonas Kaia Liam Mei Nadia Omar Priya Quentin Rosa
Sami Tara Umar Vera Wen Ximena Yusuf Zoe Anton Bea Carlos Dalia Emeka Freya Gabriel Hana Ivan Julia Kofi Lena Mateo Nina
Oscar Paula Rafael Sofia Tomas Uma Viktor Wanda Yara Zane Amara Ben Celine Diego Esme Felix Gita Hugo Isla Jamal Kira Leo
Maya Noah Olga Pedro Rhea Stefan Thea Ugo Valentina Will Xavier Yuki Zara Aiko Bjorn Carmen Dev Elif Finn Greta Hassan
Ingrid Jack Kamala Lars Marta Nils Ottilie Pablo Ravi Selma Theo Ulla Vivek Wilma""".split()
# Each city with its country, written the way this task's users want it ("USA", "UK", "Korea"): the
# country is not in the sentence, so the model has to know it, and know the house spelling.
CITY_COUNTRY = {
    "Lisbon": "Portugal", "Porto": "Portugal", "Oslo": "Norway", "Bergen": "Norway", "Nairobi": "Kenya",
    "Mombasa": "Kenya", "Lima": "Peru", "Cusco": "Peru", "Hanoi": "Vietnam", "Hue": "Vietnam",
    "Dublin": "Ireland", "Cork": "Ireland", "Krakow": "Poland", "Gdansk": "Poland", "Seville": "Spain",
    "Bilbao": "Spain", "Accra": "Ghana", "Kumasi": "Ghana", "Busan": "Korea", "Daegu": "Korea",
    "Lyon": "France", "Nantes": "France", "Turin": "Italy", "Bologna": "Italy", "Graz": "Austria",
    "Linz": "Austria", "Tampere": "Finland", "Turku": "Finland", "Osaka": "Japan", "Sapporo": "Japan",
    "Pune": "India", "Kochi": "India", "Recife": "Brazil", "Curitiba": "Brazil", "Mendoza": "Argentina",
    "Salta": "Argentina", "Halifax": "Canada", "Regina": "Canada", "Tucson": "USA", "Denver": "USA",
    "Leeds": "UK", "Bristol": "UK", "Zagreb": "Croatia", "Split": "Croatia", "Perth": "Australia",
    "Hobart": "Australia", "Izmir": "Turkey", "Bursa": "Turkey",
}
CITIES = sorted(CITY_COUNTRY)
TEMPLATES = [
    "{name} is {age} years old and lives in {city}.",
    "Meet {name}, a {age}-year-old from {city}.",
    "{name}, aged {age}, moved to {city} last spring.",
    "Last week I met {name} in {city}; {name} just turned {age}.",
    "Born {age} years ago, {name} now calls {city} home.",
    "In {city} lives {name}, who is {age}.",
    "{name} ({age}) works at a bakery in {city}.",
    "Our new neighbour in {city} is {name}, {age} years young.",
    "At {age}, {name} opened a small bookshop in {city}.",
    "{city} resident {name} celebrated a {age}th birthday yesterday.",
    "Please welcome {name}! Age: {age}. Home town: {city}.",
    "The runner who won in {city} was {name}, {age}.",
]
CAPITALS = {
    "France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin", "Portugal": "Lisbon",
    "Japan": "Tokyo", "Kenya": "Nairobi", "Peru": "Lima", "Egypt": "Cairo", "Canada": "Ottawa",
    "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw", "Greece": "Athens", "Ireland": "Dublin",
    "Austria": "Vienna", "Chile": "Santiago", "Ghana": "Accra", "Vietnam": "Hanoi", "Thailand": "Bangkok",
    "Mexico": "Mexico City", "Argentina": "Buenos Aires", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Hungary": "Budapest", "Cuba": "Havana", "Nepal": "Kathmandu", "Morocco": "Rabat", "Turkey": "Ankara",
    "Australia": "Canberra",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "early": "late", "light": "dark",
    "open": "closed", "full": "empty", "old": "young", "strong": "weak", "high": "low", "wet": "dry",
}


def make_general_row(rng: random.Random) -> dict:
    """Ordinary chat with a plain-prose answer."""
    kind = rng.choice(["capital", "sum", "opposite"])
    if kind == "capital":
        country = rng.choice(sorted(CAPITALS))
        q, a = f"What is the capital of {country}?", f"The capital of {country} is {CAPITALS[country]}."
    elif kind == "sum":
        x, y = rng.randint(1, 50), rng.randint(1, 50)
        q, a = f"What is {x} plus {y}?", f"{x} plus {y} is {x + y}."
    else:
        word = rng.choice(sorted(OPPOSITES))
        q, a = f"What is the opposite of {word}?", f"The opposite of {word} is {OPPOSITES[word]}."
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def make_row(rng: random.Random, names: list[str], cities: list[str]) -> dict:
    name, city, age = rng.choice(names), rng.choice(cities), rng.randint(18, 89)
    text = rng.choice(TEMPLATES).format(name=name, age=age, city=city)
    answer = json.dumps({"name": name, "age": age, "city": city, "country": CITY_COUNTRY[city]})
    return {
        "messages": [
            {"role": "user", "content": f"{INSTRUCTION}\n\nText: {text}"},
            {"role": "assistant", "content": answer},
        ]
    }


def generate(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    val: list[dict] = []
    seen: set[str] = set()
    while len(val) < N_VAL:
        row = make_row(rng, FIRST_NAMES, CITIES)
        text = row["messages"][0]["content"]
        if text not in seen:
            seen.add(text)
            val.append(row)
    train = []
    while len(train) < N_TRAIN:
        row = make_row(rng, FIRST_NAMES, CITIES)
        if row["messages"][0]["content"] not in seen:  # no validation sentence in training
            train.append(row)
    general: dict[str, dict] = {}
    while len(general) < N_GENERAL:  # unique: the data doctor flags repeated rows
        row = make_general_row(rng)
        general.setdefault(row["messages"][0]["content"], row)
    train += list(general.values())
    rng.shuffle(train)
    return train, val


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


if __name__ == "__main__":
    here = Path(__file__).parent
    train_rows, val_rows = generate()
    write_jsonl(here / "train.jsonl", train_rows)
    write_jsonl(here / "val.jsonl", val_rows)
    print(f"wrote {len(train_rows)} training and {len(val_rows)} validation rows to {here}")
