"""Which runs an ablation makes: the base recipe and its variants, from `--vary KEY=VALUE` options.

An ablation usually changes one thing at a time, so that each row reads as "the recipe, except
KEY=VALUE"; `product` takes every combination instead (a grid), for interactions. The seed and
the output folder are the ablation's own (one folder per variant and seed), so they cannot be
varied.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from regionclip_cli.core.errors import RegionclipError

RESERVED_KEYS = {"train.seed": "use --seed S, repeatable", "output": "ablate writes each run under OUT/runs"}


@dataclass(frozen=True)
class Variant:
    """One row of the comparison: its overrides on top of the base recipe."""

    name: str  # "base", or the overrides as KEY=VALUE joined by ", "
    overrides: tuple[str, ...]
    folder: str  # a file-system-safe name, numbered in the order of the rows


def parse_variations(options: list[str]) -> dict[str, list[str]]:
    """`--vary KEY=VALUE` options → each key's values, in the order given (repeat a key for more)."""
    axes: dict[str, list[str]] = {}
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise RegionclipError(f"--vary {option}: expected KEY=VALUE, e.g. --vary optimizer.lr=0.002")
        if key in RESERVED_KEYS:
            raise RegionclipError(f"--vary {option}: {key} cannot be varied ({RESERVED_KEYS[key]})")
        values = axes.setdefault(key, [])
        if value.strip() in values:
            raise RegionclipError(f"--vary {option}: {key}={value.strip()} is given twice")
        values.append(value.strip())
    if not axes:
        raise RegionclipError("--vary: give at least one KEY=VALUE to compare with the base recipe")
    return axes


def _folder(index: int, name: str) -> str:
    return f"{index:02d}-" + (re.sub(r"[^A-Za-z0-9._=-]+", "_", name.replace(", ", "+"))[:80] or "variant")


def variants(axes: dict[str, list[str]], *, product: bool = False) -> list[Variant]:
    """The base recipe first, then one variant per KEY=VALUE (or per combination, with `product`)."""
    if product:
        combos = [tuple(f"{key}={value}" for key, value in zip(axes, values))
                  for values in itertools.product(*axes.values())]
    else:
        combos = [(f"{key}={value}",) for key, values in axes.items() for value in values]
    rows = [("base", ())] + [(", ".join(combo), combo) for combo in combos]
    return [Variant(name, overrides, _folder(index, name)) for index, (name, overrides) in enumerate(rows)]
