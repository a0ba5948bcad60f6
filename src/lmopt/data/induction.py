"""Instruction-induction tasks generated from the embedded Shakespeare vocabulary (no hand-labelled data).

Tasks in the style of Honovich et al.'s instruction induction: the answer is a deterministic function of the
input, so the only question is whether the prompt makes the model compute it. Closed answer sets are
classification tasks (scored by label log-probability); the others are exact-match generation tasks.

* ``second_letter``: the second letter of a word (26 labels);
* ``word_length``: the number of letters of a word (labels "4" … "10");
* ``spell``: the letters of a word separated by spaces ("tide" → "t i d e");
* ``larger_animal``: the larger of two animals ("cat, horse" → "horse"), from a fixed list ordered by
  typical adult body mass (written for this project).

The first- and last-letter tasks are :func:`lmopt.data.loaders.load_letter_task`. Choose benchmark tasks by
the spread of a model's accuracy across random prompts: a task on which every prompt scores the same (at
chance, or perfectly) cannot separate prompt optimisers.
"""

from __future__ import annotations

import random
import re

from .task import Example, Task

LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")
LENGTHS = tuple(str(n) for n in range(4, 11))
# smallest to largest typical adult body mass
ANIMALS = ("ant", "bee", "fly", "spider", "frog", "mouse", "sparrow", "rat", "squirrel", "rabbit", "cat", "fox",
           "dog", "goat", "sheep", "wolf", "deer", "pig", "lion", "tiger", "bear", "horse", "cow", "camel",
           "giraffe", "rhinoceros", "elephant", "whale")
KINDS = ("second_letter", "word_length", "spell", "larger_animal")


def _first_token(text: str) -> str:
    m = re.search(r"[A-Za-z0-9]+", text)
    return m.group(0).lower() if m else ""


def _spelled(text: str) -> str:
    """The first line reduced to its letters, space-separated ("t-i-d-e." → "t i d e")."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    return " ".join(re.findall(r"[a-z]", line.lower()))


def _words(min_len: int, max_len: int) -> list[str]:
    from .loaders import shakespeare_text

    return sorted(set(re.findall(rf"\b[a-z]{{{min_len},{max_len}}}\b", shakespeare_text())))


def load_induction_task(kind: str, size: int = 300, seed: int = 0) -> Task:
    """One of :data:`KINDS` with ``size`` examples drawn with ``seed`` (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"unknown induction task {kind!r}; choose one of {', '.join(KINDS)} "
                         "(first_letter and last_letter are load_letter_task)")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    rng = random.Random(f"{kind}:{seed}")
    common = dict(name=kind, template="{instruction}\n{exemplars}{input} ->", exemplar_template="{input} -> {target}\n")
    if kind == "larger_animal":
        pairs = [(a, b) for a in ANIMALS for b in ANIMALS if a != b]
        if size > len(pairs):
            raise ValueError(f"only {len(pairs)} distinct animal pairs; lower size={size}")
        chosen = rng.sample(pairs, size)
        examples = [Example(f"{a}, {b}", a if ANIMALS.index(a) > ANIMALS.index(b) else b) for a, b in chosen]
        return Task(examples=examples, instruction="Write the larger of the two animals.", max_new_tokens=4,
                    parser=_first_token, description=f"larger of two animals, {size} pairs (seed {seed})", **common)
    if kind == "word_length":
        by_len = {n: _words(n, n) for n in range(4, 11)}
        per = -(-size // len(by_len))  # balanced over the lengths, so a constant answer scores 1/7
        short = [n for n, ws in by_len.items() if len(ws) < per]
        if short:
            raise ValueError(f"too few words of length {short}; lower size={size}")
        examples = [Example(w, str(n)) for n, ws in by_len.items() for w in rng.sample(ws, per)]
        rng.shuffle(examples)
        return Task(examples=examples[:size], labels=LENGTHS, instruction="Write the number of letters in the word.",
                    max_new_tokens=3, parser=_first_token, description=f"length of {size} words (seed {seed})",
                    **common)
    words = _words(4, 9)
    chosen = rng.sample(words, size)
    if kind == "second_letter":
        return Task(examples=[Example(w, w[1]) for w in chosen], labels=LETTERS,
                    instruction="Write the second letter of the word.", max_new_tokens=3, parser=_first_token,
                    description=f"second letter of {size} words (seed {seed})", **common)
    return Task(examples=[Example(w, " ".join(w)) for w in chosen], instruction="Spell the word letter by letter.",
                max_new_tokens=24, parser=_spelled, description=f"spelling of {size} words (seed {seed})", **common)
