"""Which models a zoo run covers: every architecture each library lists, and a seeded sample of them.

Nothing is hand-picked. Ids are ``zoo/name``:

- ``timm/resnet18``: every ``timm.list_models()`` entry (family: its timm module);
- ``tv/resnet18``: every ``torchvision.models.list_models()`` entry (family: its task module);
- ``hf/bert``: every model type with a base model class in transformers' ``MODEL_MAPPING_NAMES``;
- ``ultralytics/v8/yolov8-seg``: every model yaml under the installed ultralytics' ``cfg/models``;
- ``module/package.module:factory``: a model of one's own (the tests' hanging model), by ``--models``.

Listing reads each library's registry and imports no model.
"""
from __future__ import annotations

import fnmatch
import importlib.util
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

ZOOS = ("timm", "hf", "tv", "ultralytics")
# A sample's share per zoo, so that --sample 200 gives timm >= 100 and transformers >= 60; torchvision
# and ultralytics share the rest in proportion to their sizes.
SHARES = {"timm": 0.5, "hf": 0.3}
MODULE_ZOO = "module"


@dataclass(frozen=True)
class Entry:
    """One model of the catalog; ``family`` is the library's own grouping (hf's is set once built)."""

    id: str
    zoo: str
    family: str = ""


def timm_entries() -> list[Entry]:
    import timm

    module_of = {name: module for module in timm.list_modules() for name in timm.list_models(module=module)}
    return [Entry(f"timm/{name}", "timm", module_of.get(name, "")) for name in timm.list_models()]


def tv_entries() -> list[Entry]:
    import torchvision.models as tvm

    tasks = {name: task for task in ("detection", "segmentation", "video", "optical_flow", "quantization")
             for name in tvm.list_models(module=getattr(tvm, task))}
    return [Entry(f"tv/{name}", "tv", tasks.get(name, "classification")) for name in tvm.list_models()]


def hf_entries() -> list[Entry]:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    return [Entry(f"hf/{model_type}", "hf") for model_type in sorted(MODEL_MAPPING_NAMES)]


def ultralytics_root() -> Path:
    """The installed ultralytics' model yamls, found without importing the package."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("ultralytics is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "cfg" / "models"


def ultralytics_entries() -> list[Entry]:
    root = ultralytics_root()
    paths = sorted(root.rglob("*.yaml"))
    return [Entry(f"ultralytics/{p.relative_to(root).with_suffix('').as_posix()}", "ultralytics", p.parent.name)
            for p in paths]


LISTERS = {"timm": timm_entries, "hf": hf_entries, "tv": tv_entries, "ultralytics": ultralytics_entries}


def list_zoos(zoos: Iterable[str] = ZOOS) -> list[Entry]:
    unknown = set(zoos) - set(ZOOS)
    if unknown:
        raise ValueError(f"unknown zoo(s) {sorted(unknown)}; choose from {', '.join(ZOOS)}")
    return [entry for zoo in ZOOS if zoo in zoos for entry in LISTERS[zoo]()]


def is_factory(item: str) -> bool:
    """``package.module:factory`` names a model of one's own, not a pattern over the catalog."""
    head, sep, _ = item.partition(":")
    return bool(sep) and "/" not in head and "*" not in item


def is_glob(item: str) -> bool:
    return any(c in item for c in "*?[")


def named(items: Sequence[str]) -> list[Entry] | None:
    """The entries of ``items`` if every one is an id (``zoo/name``) or a factory, without listing any zoo
    (an id no library has is reported by the run, as not built); None if some item is a glob."""
    out = []
    for item in items:
        zoo = item.split("/")[0]
        if is_factory(item):
            out.append(Entry(f"{MODULE_ZOO}/{item}", MODULE_ZOO, MODULE_ZOO))
        elif is_glob(item) or zoo not in ZOOS:
            return None
        else:
            out.append(Entry(item, zoo))
    return out


def pick(entries: Sequence[Entry], patterns: str) -> list[Entry]:
    """Entries whose id is one of the comma-separated items or matches one as a glob (``timm/resnet*``),
    plus any ``package.module:factory``."""
    items = [p.strip() for p in patterns.split(",") if p.strip()]
    wanted = [p for p in items if not is_factory(p)]
    out = [e for e in entries if any(e.id == p or (is_glob(p) and fnmatch.fnmatchcase(e.id, p)) for p in wanted)]
    return out + [Entry(f"{MODULE_ZOO}/{p}", MODULE_ZOO, MODULE_ZOO) for p in items if is_factory(p)]


def quotas(n: int, sizes: dict[str, int]) -> dict[str, int]:
    """How many of each zoo a sample of ``n`` takes: ``SHARES``, the rest in proportion to size."""
    rest = [z for z in sizes if z not in SHARES]
    rest_total = sum(sizes[z] for z in rest) or 1
    rest_share = 1.0 - sum(SHARES.get(z, 0.0) for z in sizes if z in SHARES)
    share = {z: SHARES.get(z, rest_share * sizes[z] / rest_total) for z in sizes}
    total = sum(share.values()) or 1.0
    exact = {z: n * share[z] / total for z in sizes}
    out = {z: min(sizes[z], math.floor(exact[z])) for z in sizes}
    while sum(out.values()) < min(n, sum(sizes.values())):
        open_zoos = [z for z in sizes if out[z] < sizes[z]]
        z = max(open_zoos, key=lambda k: (exact[k] - out[k], -ZOOS.index(k) if k in ZOOS else 0))
        out[z] += 1
    return out


def sample(entries: Sequence[Entry], n: int, seed: int) -> list[Entry]:
    """A reproducible sample, stratified by zoo (``quotas``), simple random within each zoo.

    Each zoo draws with its own ``Random(f"{seed}:{zoo}")``, so one zoo's draw does not depend on
    which other zoos were listed.
    """
    by_zoo: dict[str, list[Entry]] = {}
    for e in entries:
        by_zoo.setdefault(e.zoo, []).append(e)
    counts = quotas(n, {z: len(v) for z, v in by_zoo.items()})
    picked: list[Entry] = []
    for zoo, members in by_zoo.items():
        chosen = random.Random(f"{seed}:{zoo}").sample(sorted(members, key=lambda e: e.id), counts[zoo])
        picked += sorted(chosen, key=lambda e: e.id)
    return picked
