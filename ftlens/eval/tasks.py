"""Locally generated evaluation tasks with known evidence (fixed seeds, no downloads).

Every example is a dict ``{id, task, prompt, target, answer, evidence, n_prompt_tokens}``;
``evidence`` is a list of ``[start, end)`` character ranges in ``prompt`` that the answer
needs (known by construction).  Targets are *teacher-forced reference chains*: a
``<think>...</think>`` reasoning chain that walks through the evidence, then one answer line.
(The default 135M model is rarely correct on these tasks, so its greedy generations are not
used as targets; :func:`ftlens.eval.cases.greedy_agreement` measures how often it would have been.)

Tasks (RULER-like where named so):

- ``needle_single``: one "special magic number" needle in filler text;
- ``needle_multikey``: the needle plus distractor needles with other keys (RULER ``niah_multikey``);
- ``needle_multivalue``: several values for one key, all needed (RULER ``niah_multivalue``);
- ``vartrack``: chains of ``VAR X = VAR Y`` assignments with a distractor chain (RULER ``vt``);
- ``twohop``: "A lives in C" + "C is in K" with distractor facts;
- ``arith``: a small word problem with distractor sentences and a worked chain of thought.

Needles take a prompt length in tokens (512 / 1024 / 2048 / 4096 in the benchmark); the other
tasks use the filler to reach ``length`` too.  Only a tokenizer is needed here; the model side
of an example (its token sequence and evidence positions) is :mod:`ftlens.eval.cases`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable

NAMES = ["Alice", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas",
         "Kemal", "Lena", "Marek", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Sven", "Tamar",
         "Ugo", "Vera", "Wim", "Ximena", "Yusuf", "Zofia"]
CITIES = ["Valdoria", "Brennick", "Oskaro", "Tullmere", "Quenstad", "Marrowick", "Feldhaven",
          "Corvana", "Ilspring", "Dunmarsh", "Pellacre", "Zorvik", "Ambergate", "Hollin", "Rusktown"]
COUNTRIES = ["Norveria", "Kaldonia", "Estravia", "Lumeria", "Teskara", "Volmark", "Ardenia",
             "Sorvania", "Pelagos", "Quilland"]
KEYS = ["apple", "river", "lantern", "falcon", "meadow", "copper", "violin", "harbor", "pepper",
        "glacier", "orchid", "compass", "thunder", "marble", "saddle", "walnut", "beacon", "ember"]
SUBJ = ["The farmer", "A young student", "The old sailor", "My neighbour", "The baker", "A tourist",
        "The teacher", "The engineer", "A small child", "The painter", "The doctor", "A traveller"]
VERB = ["carried", "painted", "noticed", "repaired", "described", "collected", "bought", "cleaned",
        "measured", "photographed", "sold", "borrowed"]
ADJ = ["green", "heavy", "quiet", "wooden", "bright", "ancient", "narrow", "soft", "broken", "tall"]
NOUN = ["basket", "bridge", "chair", "window", "garden", "bicycle", "letter", "clock", "fence", "boat"]
PLACE = ["near the market", "in the morning", "after lunch", "by the lake", "at the station",
         "before the storm", "on the hill", "in the village", "during the festival", "at noon"]

TASKS = ("needle_single", "needle_multikey", "needle_multivalue", "vartrack", "twohop", "arith")
LENGTHS = (512, 1024, 2048, 4096)


def _filler(rng: random.Random) -> str:
    return f"{rng.choice(SUBJ)} {rng.choice(VERB)} the {rng.choice(ADJ)} {rng.choice(NOUN)} {rng.choice(PLACE)}."


def _number(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _assemble(
    tokenizer: Any, rng: random.Random, head: str, facts: list[tuple[str, bool]], question: str, length: int
) -> tuple[str, list[list[int]]]:
    """Filler sentences with ``facts`` inserted at random depths; ``(prompt, evidence chars)``.

    ``facts``: ``(sentence, is_evidence)`` kept in their given order.  Filler is added until the
    prompt reaches ``length`` tokens (approximately: sentence counts are additive to +-1 token).
    """
    fixed = _count(tokenizer, head + " " + " ".join(f for f, _ in facts) + "\n" + question) + 2
    budget = max(0, length - fixed)
    filler: list[str] = []
    used = 0
    while True:
        s = _filler(rng)
        c = _count(tokenizer, " " + s)
        if used + c > budget:
            break
        filler.append(s)
        used += c
    slots = sorted(rng.sample(range(len(filler) + 1), k=len(facts))) if len(filler) + 1 >= len(facts) \
        else list(range(len(facts)))
    parts: list[tuple[str, bool]] = []
    fi = 0
    for j, (fact, is_ev) in enumerate(facts):
        while fi < slots[j] and fi < len(filler):
            parts.append((filler[fi], False))
            fi += 1
        parts.append((fact, is_ev))
    parts += [(f, False) for f in filler[fi:]]
    text = head
    evidence: list[list[int]] = []
    for sent, is_ev in parts:
        text += " "
        if is_ev:
            evidence.append([len(text), len(text) + len(sent)])
        text += sent
    text += "\n" + question
    return text, evidence


def _needle(kind: str) -> Callable[[Any, random.Random, int], dict[str, Any]]:
    def make(tokenizer: Any, rng: random.Random, length: int) -> dict[str, Any]:
        keys = rng.sample(KEYS, 4)
        key = keys[0]
        head = "Some special magic numbers are hidden in the following text. Memorize them."
        if kind == "multivalue":
            values = [_number(rng) for _ in range(3)]
            facts = [(f"One of the special magic numbers for {key} is: {v}.", True) for v in values]
            question = f"What are all the special magic numbers for {key} mentioned in the text?"
            said = " ".join(f"One special magic number for {key} is {v}." for v in values)
            answer = ", ".join(values)
            target = f"<think>{said}</think>\nThe special magic numbers for {key} are {answer}."
        else:
            value = _number(rng)
            facts = [(f"The special magic number for {key} is: {value}.", True)]
            if kind == "multikey":
                facts += [(f"The special magic number for {k} is: {_number(rng)}.", False) for k in keys[1:]]
                rng.shuffle(facts)
            question = f"What is the special magic number for {key} mentioned in the text?"
            target = (f"<think>The text says the special magic number for {key} is {value}.</think>\n"
                      f"The special magic number for {key} is {value}.")
            answer = value
        prompt, evidence = _assemble(tokenizer, rng, head, facts, question, length)
        return {"prompt": prompt, "target": target, "answer": answer, "evidence": evidence}

    return make


def _vartrack(tokenizer: Any, rng: random.Random, length: int, chain_len: int = 4) -> dict[str, Any]:
    pool = [a + b for a in "ABCDEFGHJKLMNPQRSTUVWXYZ" for b in "ABCDEFGHJKLMNPQRSTUVWXYZ" if a != b]
    names = [f"{n}{rng.randrange(10)}" for n in rng.sample(pool, chain_len + 3)]
    chain, decoy = names[:chain_len], names[chain_len:]
    value, other = _number(rng, 5), _number(rng, 5)
    facts = [(f"VAR {chain[0]} = {value}.", True)] + \
        [(f"VAR {chain[i]} = VAR {chain[i - 1]}.", True) for i in range(1, len(chain))]
    dfacts = [(f"VAR {decoy[0]} = {other}.", False)] + \
        [(f"VAR {decoy[i]} = VAR {decoy[i - 1]}.", False) for i in range(1, len(decoy))]
    # interleave the two chains, each kept in order
    merged, i, j = [], 0, 0
    while i < len(facts) or j < len(dfacts):
        if j >= len(dfacts) or (i < len(facts) and rng.random() < 0.5):
            merged.append(facts[i]); i += 1  # noqa: E702
        else:
            merged.append(dfacts[j]); j += 1  # noqa: E702
    head = "Memorize and track the chain(s) of variable assignments hidden in the following text."
    question = f"Find all variables that are assigned the value {value} in the text above."
    steps = " ".join(f"{chain[i]} = {chain[i - 1]}." for i in range(1, len(chain)))
    think = f"{chain[0]} = {value}. {steps}"
    answer = " ".join(chain)
    target = f"<think>{think}</think>\nAnswer: {answer}"
    prompt, evidence = _assemble(tokenizer, rng, head, merged, question, length)
    return {"prompt": prompt, "target": target, "answer": answer, "evidence": evidence}


def _twohop(tokenizer: Any, rng: random.Random, length: int) -> dict[str, Any]:
    people = rng.sample(NAMES, 3)
    cities = rng.sample(CITIES, 3)
    countries = rng.sample(COUNTRIES, 3)
    who, city, country = people[0], cities[0], countries[0]
    facts = [(f"{who} lives in {city}.", True), (f"{city} is a city in {country}.", True)]
    facts += [(f"{p} lives in {c}.", False) for p, c in zip(people[1:], cities[1:])]
    facts += [(f"{c} is a city in {k}.", False) for c, k in zip(cities[1:], countries[1:])]
    rng.shuffle(facts)
    head = "Read the following text about people and places."
    question = f"In which country does {who} live?"
    target = (f"<think>{who} lives in {city}. {city} is a city in {country}. "
              f"So {who} lives in {country}.</think>\n{who} lives in {country}.")
    prompt, evidence = _assemble(tokenizer, rng, head, facts, question, length)
    return {"prompt": prompt, "target": target, "answer": country, "evidence": evidence}


def _arith(tokenizer: Any, rng: random.Random, length: int) -> dict[str, Any]:
    who = rng.choice(NAMES)
    noun = rng.choice(["apples", "marbles", "stamps", "pencils", "coins"])
    boxes, per, gone = rng.randrange(2, 9), rng.randrange(2, 9), rng.randrange(1, 9)
    total = boxes * per
    facts = [
        (f"{who} has {boxes} boxes of {noun}.", True),
        (f"Each box holds {per} {noun}.", True),
        (f"{who} gives away {gone} {noun}.", True),
    ]
    other = rng.choice([n for n in NAMES if n != who])
    facts.insert(rng.randrange(0, 4), (f"{other} has {rng.randrange(2, 30)} {noun} in a bag.", False))
    head = "Solve the word problem hidden in the following text."
    question = f"How many {noun} does {who} have left?"
    target = (f"<think>{who} has {boxes} boxes with {per} {noun} each, so {boxes} * {per} = {total} {noun}. "
              f"{who} gives away {gone}, so {total} - {gone} = {total - gone}.</think>\n"
              f"The answer is {total - gone}.")
    prompt, evidence = _assemble(tokenizer, rng, head, facts, question, length)
    return {"prompt": prompt, "target": target, "answer": str(total - gone), "evidence": evidence}


MAKERS: dict[str, Callable[[Any, random.Random, int], dict[str, Any]]] = {
    "needle_single": _needle("single"),
    "needle_multikey": _needle("multikey"),
    "needle_multivalue": _needle("multivalue"),
    "vartrack": _vartrack,
    "twohop": _twohop,
    "arith": _arith,
}


def seed_tag(seed: int) -> str:
    """Dataset file-name suffix for a seed: '' for the default seed 0, else '-seed{seed}'."""
    return f"-seed{seed}" if seed else ""


def make_examples(task: str, tokenizer: Any, n: int, length: int, seed: int = 0, **kw: Any) -> list[dict[str, Any]]:
    """``n`` examples of ``task`` at ``length`` prompt tokens; seed = ``seed`` + example index.

    Extra keywords go to the task maker (``vartrack``: ``chain_len``, default 4)."""
    if task not in MAKERS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    out = []
    for i in range(n):
        tag = "".join(f":{k}={v}" for k, v in sorted(kw.items()))
        rng = random.Random(f"{task}:{length}:{seed + i}{tag}")
        ex = MAKERS[task](tokenizer, rng, length, **kw)
        for a, b in ex["evidence"]:
            assert 0 <= a < b <= len(ex["prompt"])
        ex.update(id=f"{task}-{length}-{seed + i}{tag}", task=task, length=length, target_kind="teacher-forced",
                  n_prompt_tokens=_count(tokenizer, ex["prompt"]))
        out.append(ex)
    return out


def write_jsonl(examples: list[dict[str, Any]], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8")
    return p


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
