"""Built-in examples: a needle question with a short reasoning chain."""

from __future__ import annotations

NEEDLE_PROMPT = (
    "Read the notes, then answer the question.\n"
    "Note 1: The library opens at 9 am on weekdays.\n"
    "Note 2: Maria's locker code is 4817.\n"
    "Note 3: The cafeteria serves tomato soup on Fridays.\n"
    "Note 4: The bus to the stadium leaves from platform 6.\n"
    "Question: What is Maria's locker code?"
)

NEEDLE_TARGET = (
    "<think>The question asks for Maria's locker code. Note 2 is about Maria's locker, "
    "and it says the code is 4817.</think>\n"
    "Maria's locker code is 4817."
)

#: the evidence the answer needs, a substring of NEEDLE_PROMPT
NEEDLE_EVIDENCE = "4817"
