"""The "last room named" shortcut on qa1, with no model: the share of questions whose answer
is the room of the story's last fact, on the en-10k test file (the evaluation questions)
and on the simulator's training questions.

    python results/ablation_qa1_cpu/shortcut.py
"""

from pathlib import Path

from babilong_tfds.babi import load_babi
from babilong_tfds.babi_generator import GeneratedBabi

ROOT = Path(__file__).resolve().parents[2]


def last_room(sample) -> bool:
    return sample.facts[-1].rstrip(".").split()[-1] == sample.answer


def main() -> None:
    test = load_babi("qa1", "test", ROOT.parent / "shared" / "data" / "babi")
    first = sum(map(last_room, test[:100]))
    print(f"en-10k test: {first} of the first 100, {sum(map(last_room, test))} of {len(test)}")
    generated = GeneratedBabi("qa1", 0).samples(10_000)
    share = sum(map(last_room, generated)) / len(generated)
    print(f"simulated training questions (seed 0, 10,000): {100 * share:.1f}%")


if __name__ == "__main__":
    main()
