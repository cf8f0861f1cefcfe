"""The promotion test's error and power, by simulation: the sequential test against a naive one that
peeks, on the same streams, in the same run.

- **False promotions**: ``--streams`` streams at the edge of the null hypothesis: production's
  record of 200 rewards ~ Normal(0.6, 0.2), all arrived; a candidate exactly ``promotion_margin``
  (0.05) worse, whose rewards arrive one by one, up to 10 looks of N=10. The sequential test
  (``judge_candidate``; judged once on the whole stream, which gives the verdict judging after every
  reward would, since each look only uses the data that had arrived by then) against a naive 5%
  one-sided test repeated after every new reward from N on, on all the data so far.
- **Power**: 300 streams of a candidate exactly as good as production (1,000 production rewards,
  N=30): the share promoted within 10 looks.

Run from the repository root::

    .venv/bin/python bench/promotion.py
    .venv/bin/python bench/promotion.py --streams 5000
"""

from __future__ import annotations

import argparse
import math
import random
import statistics

from grpod.workers.promotion import MAX_LOOKS, PublishSettings, Reward, judge_candidate

MARGIN = 0.05


def naive_promotes(candidate: list[Reward], production: list[Reward], per_look: int) -> bool:
    z = statistics.NormalDist().inv_cdf(0.95)
    values = [r.value for r in production]
    mean, variance = statistics.fmean(values), statistics.variance(values) / len(values)
    for n in range(per_look, len(candidate) + 1):
        seen = [r.value for r in candidate[:n]]
        difference = statistics.fmean(seen) - mean
        if difference - z * math.sqrt(statistics.variance(seen) / n + variance) > -MARGIN:
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=2000)
    args = parser.parse_args()

    settings = PublishSettings(promotion_min_traces=10, promotion_margin=MARGIN)
    rng = random.Random(1)
    sequential = naive = 0
    for _ in range(args.streams):
        production = [Reward(rng.gauss(0.6, 0.2), float(i)) for i in range(200)]
        candidate = [Reward(rng.gauss(0.6 - MARGIN, 0.2), 10_000.0 + i) for i in range(10 * MAX_LOOKS)]
        sequential += judge_candidate(candidate, production, settings).decision == "promote"
        naive += naive_promotes(candidate, production, 10)

    power_settings = PublishSettings(promotion_min_traces=30, promotion_margin=MARGIN)
    rng = random.Random(2)
    promoted, power_streams = 0, 300
    for _ in range(power_streams):
        production = [Reward(rng.gauss(0.6, 0.2), float(i)) for i in range(1000)]
        candidate = [Reward(rng.gauss(0.6, 0.2), 10_000.0 + i) for i in range(30 * MAX_LOOKS)]
        promoted += judge_candidate(candidate, production, power_settings).decision == "promote"

    print(f"\nPromotion test, alpha 0.05, margin {MARGIN}\n")
    print("| measure | sequential (grpod) | naive 5% test after every reward |")
    print("| --- | ---: | ---: |")
    print(
        f"| false promotions, candidate {MARGIN} worse ({args.streams:,} streams) | "
        f"{sequential / args.streams:.3f} | {naive / args.streams:.3f} |"
    )
    print(f"| promotions of an equally good candidate ({power_streams} streams) | {promoted / power_streams:.3f} | |")


if __name__ == "__main__":
    main()
