"""Prints the ablation table (markdown) from each arm's results.json, timing.json and
metrics.jsonl:  python results/ablation_qa1_cpu/table.py"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
LENGTHS = ("0k", "1k", "4k")


def row(arm: Path) -> str:
    results = json.loads((arm / "results.json").read_text())["results"]["qa1"]
    timing = json.loads((arm / "timing.json").read_text())
    logs = [json.loads(line) for line in (arm / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in logs if "train/loss" in m]
    loss = sum(m["train/loss"] for m in train[-5:]) / len(train[-5:])
    steps = train[-1]["step"]
    acc = " | ".join(f"{100 * results[k]['accuracy']:.0f}" for k in LENGTHS)
    return (f"| {arm.name} | `{timing['overrides']}` | {steps} | {timing['train_s']} s + "
            f"{timing['evaluate_s']} s | {loss:.3f} | {acc} |")


def main() -> None:
    print("| arm | overrides of configs/quickstart.py | steps | wall time (train + evaluate) "
          "| train loss (last 500 steps) | 0k | 1k | 4k |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for arm in sorted(p for p in HERE.iterdir() if (p / "timing.json").exists()):
        print(row(arm))


if __name__ == "__main__":
    main()
