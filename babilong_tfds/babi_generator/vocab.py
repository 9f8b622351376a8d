"""The words of the generated bAbI worlds: who, where, what, and how it is said.

The names, places, objects and answer words are those of the original tasks (the
answers must fall in `tasks.LABELS`). The wording of the actor tasks is a `Wording`:
`BABI_WORDING` (the default) uses exactly the verbs and sentence openers of the bAbI
en-10k files (qa1..qa13, counted in their train files); `SYNONYM_WORDING` adds a few of our
own with the same sentence structure ('walked to the kitchen'), for stories whose text
differs from the files' (the generator's `synonyms=True`).
"""

from __future__ import annotations

import dataclasses

ROOMS = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
# qa10 and qa14 live in a town rather than a house.
TOWN = ("bedroom", "cinema", "kitchen", "office", "park", "school")
OBJECTS = ("apple", "football", "milk")

HOUSE_ACTORS = ("Mary", "John", "Sandra", "Daniel")
GIVING_ACTORS = ("Bill", "Fred", "Jeff", "Mary")  # qa5
TOWN_ACTORS = ("Fred", "Julie", "Mary", "Bill")  # qa10, qa14
MOTIVATED_ACTORS = ("Sumit", "Yann", "Jason", "Antoine")  # qa20
PRONOUN = {"Mary": "she", "Sandra": "she", "John": "he", "Daniel": "he"}



@dataclasses.dataclass(frozen=True)
class Wording:
    """How the actor tasks say things."""

    move: tuple[str, ...]        # 'Mary went to the kitchen.'
    pick: tuple[str, ...]        # 'Mary got the apple.'
    drop: tuple[str, ...]        # 'Mary dropped the apple.'
    give: tuple[str, ...]        # 'Mary gave the apple to Fred.'
    follow_ups: tuple[str, ...]  # open a sentence continuing the previous one (qa11, qa13)


BABI_WORDING = Wording(
    move=("went", "went back", "journeyed", "travelled", "moved"),
    pick=("got", "grabbed", "took", "picked up"),
    drop=("dropped", "discarded", "left", "put down"),
    give=("gave", "handed", "passed"),
    follow_ups=("Then", "After that", "Afterwards", "Following that"),
)
# bAbI's words and ours, never in the files
SYNONYM_WORDING = Wording(
    move=(*BABI_WORDING.move, "walked", "ran", "headed"),
    pick=(*BABI_WORDING.pick, "collected"),
    drop=(*BABI_WORDING.drop, "set down"),
    give=(*BABI_WORDING.give, "brought"),
    follow_ups=(*BABI_WORDING.follow_ups, "Later"),
)


def wording(synonyms: bool) -> Wording:
    return SYNONYM_WORDING if synonyms else BABI_WORDING


# Every verb either wording may use (to recognise a statement's kind).
MOVE_VERBS = SYNONYM_WORDING.move
PICK_VERBS = SYNONYM_WORDING.pick
DROP_VERBS = SYNONYM_WORDING.drop
GIVE_VERBS = SYNONYM_WORDING.give
FOLLOW_UPS = SYNONYM_WORDING.follow_ups

TIMES = ("yesterday", "this morning", "this afternoon", "this evening")  # qa14, in order

# qa15: species (singular, plural) of the deduction world, and its individuals.
SPECIES = (("cat", "cats"), ("mouse", "mice"), ("sheep", "sheep"), ("wolf", "wolves"))
DEDUCTION_NAMES = ("Gertrude", "Winona", "Emily", "Jessica")

# qa16: the induction world.
ANIMALS = ("frog", "lion", "rhino", "swan")
COLORS = ("gray", "green", "white", "yellow")
INDUCTION_NAMES = ("Bernhard", "Brian", "Greg", "Julius", "Lily")

# qa17: shapes on a plane.
SHAPES = ("triangle", "red square", "blue square", "pink rectangle", "yellow square", "red sphere")
# qa18: containers of different sizes.
BOXES = ("box", "chocolate", "box of chocolates", "suitcase", "chest", "container")

# qa4 and qa19: compass directions, (dx, dy) and their opposites.
DIRECTIONS = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}

# qa20: a feeling -> where it sends you and what you take there.
MOTIVES = {
    "hungry": ("kitchen", "apple"),
    "thirsty": ("kitchen", "milk"),
    "tired": ("bedroom", "pajamas"),
    "bored": ("garden", "football"),
}
NUMBERS = ("none", "one", "two", "three")
