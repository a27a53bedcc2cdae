"""The fidelity corpus: every model the benchmark exports, by name.

Names are ``family/model`` (``seed/``, ``tv/``, ``timm/``, ``hf/``, and
``dyn/`` for models with dynamic dims besides the batch).  Listing
the corpus imports only torch; each model's library is imported when it is
built.
"""

from __future__ import annotations

import fnmatch

from benchmarks.corpus import dynamic_models, peer_models, seed_patterns, timm_models, torchvision_models, transformers_models
from benchmarks.model_spec import ModelSpec

QUICK_LIMIT = 8


def all_specs() -> tuple[ModelSpec, ...]:
    """Every corpus entry, in run order: seed patterns first, since they are the fastest."""
    specs = (
        seed_patterns.SPECS + torchvision_models.SPECS + timm_models.SPECS + transformers_models.SPECS
        + dynamic_models.SPECS + peer_models.SPECS
    )
    names = [s.name for s in specs]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"duplicate corpus names: {sorted(duplicates)}")
    return specs


def get_spec(name: str) -> ModelSpec:
    for spec in all_specs():
        if spec.name == name:
            return spec
    raise KeyError(f"no corpus model named {name!r}")


def _matches(name: str, pattern: str) -> bool:
    """Glob if the pattern has wildcards, else a substring test."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def select_specs(patterns: str | None = None, *, quick: bool = False) -> tuple[ModelSpec, ...]:
    """The entries to run.

    ``patterns`` is a comma-separated list of globs or substrings matched
    against ``family/model``; ``quick`` keeps only the small entries marked
    for the quick run (at most ``QUICK_LIMIT``).
    """
    specs = all_specs()
    if quick:
        specs = tuple(s for s in specs if s.quick)[:QUICK_LIMIT]
    if patterns:
        wanted = [p.strip() for p in patterns.split(",") if p.strip()]
        specs = tuple(s for s in specs if any(_matches(s.name, p) for p in wanted))
    return specs
