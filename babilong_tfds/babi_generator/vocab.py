"""The words of the generated bAbI worlds: who, where, what, and how it is said.

The names, places, objects and answer words are those of the original tasks (the
answers must fall in `tasks.LABELS`). The verb lists hold the originals' verbs and a few
of our own with the same sentence structure ('walked to the kitchen'), so that the
generated stories are not copies of the original sentences.
"""

from __future__ import annotations

ROOMS = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
# qa10 and qa14 live in a town rather than a house.
TOWN = ("bedroom", "cinema", "kitchen", "office", "park", "school")
OBJECTS = ("apple", "football", "milk")

HOUSE_ACTORS = ("Mary", "John", "Sandra", "Daniel")
GIVING_ACTORS = ("Bill", "Fred", "Jeff", "Mary")  # qa5
TOWN_ACTORS = ("Fred", "Julie", "Mary", "Bill")  # qa10, qa14
MOTIVATED_ACTORS = ("Sumit", "Yann", "Jason", "Antoine")  # qa20
PRONOUN = {"Mary": "she", "Sandra": "she", "John": "he", "Daniel": "he"}

MOVE_VERBS = (
    "went",
    "went back",
    "journeyed",
    "travelled",
    "moved",  # the originals
    "walked",
    "ran",
    "headed",  # ours
)
PICK_VERBS = ("got", "grabbed", "took", "picked up", "collected")
DROP_VERBS = ("dropped", "discarded", "left", "put down", "set down")
GIVE_VERBS = ("gave", "handed", "passed", "brought")
# Words that open a sentence continuing the previous one (qa11, qa13).
FOLLOW_UPS = ("Then", "After that", "Afterwards", "Following that", "Later")

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
