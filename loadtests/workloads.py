"""Workloads as data: what a tap is, how often, on which devices.

A workload is a plain dict (JSON-friendly, written into every result):
- ``mix``: request kinds with weights. Each device has one kind (a turnstile
  sends CARD_PRESENTED, a till sends PURCHASE), so the weights decide how many
  of the devices in a run are turnstiles and how many are tills.
- ``passage``: a turnstile whose CARD_PRESENTED was accepted sends the PASSAGE of that
  grant as its next request (the pupil went through), as every real turnstile does: the
  PASSAGE is what the gateway journals as the entry or exit, counts as presence and tells
  the parents of. So half of a turnstile's requests are PASSAGEs. Without it (the old
  runs) the turnstiles' grants were never used and cost PostgreSQL one row each only.
- ``pupils``: account ids 1..pupils are tapped, chosen by a seeded RNG.
- ``baskets``: for PURCHASE, 1..items_max items drawn from ``products``
  (code, unit price in kopecks). Pupils start with 50,000 kopecks; with cheap
  baskets and many pupils a run rarely exhausts one, and the denies that do
  happen (INSUFFICIENT_FUNDS) are counted as their own outcome.
"""

from __future__ import annotations

import random

from storage.demo_dataset import TILL_ID_BASE, TURNSTILE_ID_BASE

WORKLOADS: dict[str, dict] = {
    # The school morning: entries at turnstiles and breakfast at the tills.
    "mixed": {
        "mix": [
            {"request": "CARD_PRESENTED", "weight": 60},
            {"request": "PURCHASE", "weight": 40},
        ],
        "passage": True,
        "pupils": 100_000,
        "items_min": 1,
        "items_max": 3,
        # Cheap demo products (tea, compote, pie): at most 3 * 3,000 kopecks per basket.
        "products": [[5, 1_500], [9, 2_000], [6, 3_000]],
        "seed": 20_260_901,
    },
    "turnstiles": {
        "mix": [{"request": "CARD_PRESENTED", "weight": 100}],
        "passage": True,
        "pupils": 100_000,
        "seed": 1,
    },
    "tills": {
        "mix": [{"request": "PURCHASE", "weight": 100}],
        "pupils": 100_000,
        "items_min": 1,
        "items_max": 3,
        "products": [[5, 1_500], [9, 2_000], [6, 3_000]],
        "seed": 2,
    },
}


def workload(name: str, **overrides) -> dict:
    w = dict(WORKLOADS[name])
    w.update({k: v for k, v in overrides.items() if v is not None})
    w["name"] = name
    return w


def split_devices(w: dict, devices: int) -> tuple[int, int]:
    """(turnstiles, tills) for ``devices`` devices: largest remainder over the mix weights."""
    weights = {m["request"]: m["weight"] for m in w["mix"]}
    total = sum(weights.values())
    t_share = devices * weights.get("CARD_PRESENTED", 0) / total
    turnstiles = round(t_share)
    if weights.get("CARD_PRESENTED") and turnstiles == 0 and devices > 0 and not weights.get("PURCHASE"):
        turnstiles = devices
    turnstiles = max(0, min(devices, turnstiles))
    return turnstiles, devices - turnstiles


def device_ids(w: dict, devices: int, turnstile_offset: int = 0, till_offset: int = 0) -> list[int]:
    """Device ids of the demo dataset for a run of ``devices`` devices (turnstiles first)."""
    turnstiles, tills = split_devices(w, devices)
    return [TURNSTILE_ID_BASE + turnstile_offset + n for n in range(1, turnstiles + 1)] + [
        TILL_ID_BASE + till_offset + n for n in range(1, tills + 1)
    ]


def baskets(w: dict, count: int = 256) -> list[list[tuple[int, int, int]]]:
    """``count`` baskets of (code, quantity, unit price), from the workload's seed."""
    rng = random.Random(w.get("seed", 0) ^ 0x5EED)
    products = w.get("products") or [[5, 1_500]]
    lo, hi = w.get("items_min", 1), w.get("items_max", 1)
    out = []
    for _ in range(count):
        n = rng.randint(lo, hi)
        picked = rng.sample(products, min(n, len(products)))
        out.append([(code, 1, price) for code, price in picked])
    return out
