"""The hazard generator and the fuzzer's property (benchmarks/fuzz.py), and a fixed-seed subset of
it: every generated model is served and matches eager at sizes compile did not verify, answers
outside its claims with a ConfigError, and is left as compile found it; or it is refused with an
FxtrtError, and only where the generator marked it unservable."""
from __future__ import annotations

import collections
import dataclasses
import itertools
import time

import pytest
import torch

import fxtrt
from benchmarks.fuzz import (check_sizes, corruption, edge_sizes, generate, judge_call, load_model_module, markdown,
                             outside_claims, run_many, run_model, state_of, summarize, tables)
from benchmarks.hazards import BLOCKS, ModelSpec, piece_counts, render
from fxtrt.artifacts.claims import Claims, DimClaim

# its 10 models hold a bucket set, hw_swap, an LSTM over H and W drawn independent, torch.cond on
# the length next to a chunk of it, *args, cold and warm models (about 18 s on 2 busy cores)
SEED = 20263683
N = 10


@pytest.fixture
def one_thread():
    """Tiny eager models on one thread: on busy cores an OpenMP team costs an RNN call a second."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_every_block_variant_runs_eagerly_and_keeps_the_layout(tmp_path, one_thread):
    """Also at H != W, written as forward(self, *args), and called again at another size (the
    blocks that cache in forward rebuild their cache)."""
    for name, layouts in BLOCKS.items():
        for layout, variants in layouts.items():
            for i in range(len(variants)):
                kind = "seq" if layout == "seq" else "hw"
                spec = ModelSpec(layout=layout, blocks=((name, i),), batch=(1, 4, 8), extra_kind=kind,
                                 extra=(4, 8, 16) if kind == "seq" else (8, 12, 24), hw_independent=kind == "hw",
                                 star_args=i % 2 == 1)
                path = tmp_path / f"{name}_{layout}_{i}.py"
                path.write_text(render(spec).text)
                module = load_model_module(path)
                model = module.build()
                sizes = [{"batch": 1, kind: spec.extra[0]}, {"batch": 5, kind: spec.extra[2] - 1}]
                sizes += [{"batch": 2, "h": 9, "w": 20}, {"batch": 3, "h": 23, "w": 8}] if kind == "hw" else []
                for point in sizes:
                    x = module.inputs_at(point)
                    assert spec.outside(tuple(x.shape)) is None, point
                    with torch.no_grad():
                        assert model(x).shape == x.shape, (name, layout, i, point)


def test_recurrent_cond_and_chunk_variants_run_with_the_dynamic_dim_static(tmp_path, one_thread):
    """Issue 17's blocks (the test above runs them over dynamic ranges) with the sequence or H and W
    static, at batch 1 and 8: a size predicate is then a Python bool, a chunk of it torch's own;
    each variant runs and keeps the layout. torch.cond on the length takes one branch up to 6 and
    the other above."""
    for name in ("recurrent", "cond", "split_chunk"):
        for layout, variants in BLOCKS[name].items():
            for i in range(len(variants)):
                spec = ModelSpec(layout=layout, blocks=((name, i),), batch=(1, 4, 8), static_extra=6)
                path = tmp_path / f"{name}_{layout}_{i}.py"
                path.write_text(render(spec).text)
                module = load_model_module(path)
                model = module.build()
                for point in ({"batch": 1}, {"batch": 8}):
                    x = module.inputs_at(point)
                    with torch.no_grad():
                        assert model(x).shape == x.shape, (name, layout, i, point)
    spec = ModelSpec(layout="seq", blocks=(("cond", 1),), batch=(1, 4, 8), extra_kind="seq", extra=(4, 8, 16))
    path = tmp_path / "cond_on_length.py"
    path.write_text(render(spec).text)
    module = load_model_module(path)
    short, long = module.inputs_at({"seq": 6}), module.inputs_at({"seq": 7})
    with torch.no_grad():
        assert torch.equal(module.build()(short), short.flip(1) - 1) and torch.equal(module.build()(long), long * 2 + 1)


def test_a_chunk_along_the_dynamic_dim_is_marked_unservable_exactly_where_its_count_changes():
    """piece_counts counts as torch cuts; ModelSpec.unservable reads it over the drawn range."""
    for (op, k), lo, span in itertools.product((("chunk", 2), ("chunk", 3), ("chunk", 4), ("split", 4), ("split", 5)),
                                               range(1, 14), (0, 4, 13)):
        cut = (lambda t: t.chunk(k)) if op == "chunk" else (lambda t: t.split(k))
        assert piece_counts(op, k, lo, lo + span) == {len(cut(torch.empty(n))) for n in range(lo, lo + span + 1)}

    def spec(i, extra, layout="seq", more=()):
        kind = ("seq" if layout == "seq" else "hw") if extra else None
        return ModelSpec(layout=layout, blocks=(("split_chunk", i), *more), batch=(1, 4, 8), extra_kind=kind,
                         extra=extra)

    assert spec(2, (4, 8, 16)).unservable is None, "chunk(2): two pieces at every length from 2"
    assert spec(3, (4, 8, 16)).unservable == "chunk(3) along a dynamic dim: 2 to 3 pieces over its range"
    assert spec(3, (5, 8, 16)).unservable is None, "chunk(3) cuts 3 pieces from 5 on (of 4: 2 and 2)"
    assert spec(4, (5, 8, 16)).unservable and spec(4, None).unservable is None, "split(4) of a static dim is torch's"
    assert spec(3, (8, 12, 24), "img").unservable and spec(3, (12, 16, 24), "img").unservable is None, "chunk(4)"
    assert spec(5, None).unservable is None, "a batch split is served, by a bucket set"
    assert spec(5, None, more=(("batch_stat", 0),)).unservable, "whose padding changes a statistic over the batch"


def test_a_chunk_whose_count_changes_over_the_range_is_refused_at_its_line(tmp_path):
    """A StructureError, with .source at the block's line, after the batch's bucket fallback
    finds the same split in each static-batch model."""
    spec = ModelSpec(layout="seq", blocks=(("view_sizes", 0), ("split_chunk", 4)), batch=(1, 4, 8), extra_kind="seq",
                     extra=(5, 8, 16))
    row = run_model(spec, tmp_path / "m")
    assert (row["outcome"], row["error"], row["source_at"]) == ("REFUSED", "StructureError", "hazard"), row
    path, _, line = row["source"].rpartition(":")
    assert (path, int(line)) == (str(tmp_path / "m" / "model.py"), render(spec).hazard_lines["b1:split_chunk"]), row
    assert row["corrupted"] is None


def test_blocks_of_one_layout_draw_only_that_layout():
    """--blocks hw_swap (image only) used to fail: a sequence drawn with no block to put in it."""
    assert {s.layout for s in generate(6, seed=1, blocks=("hw_swap",))} == {"img"}


def test_the_new_blocks_bring_their_code_and_the_signature_is_drawn(tmp_path):
    spec = ModelSpec(layout="img", blocks=(("cache_in_forward", 0), ("cache_in_forward", 1), ("hw_swap", 2)),
                     batch=(1, 4, 8), extra_kind="hw", extra=(8, 12, 24), hw_independent=True, star_args=True)
    rendered = render(spec)
    lines = rendered.text.splitlines()
    assert "    def forward(self, *args):" in lines and "class b0_Anchors(nn.Module):" in lines
    assert "x = self.b1_block(x)" in lines[rendered.hazard_lines["b1:cache_in_forward"] - 1]
    assert "F.interpolate(x, size=(b2_w, b2_h))" in lines[rendered.hazard_lines["b2:hw_swap"] - 1]
    assert spec.options()["dynamic"] == {0: {2: (8, 12, 24), 3: (8, 12, 24)}}, "H and W unnamed: independent"
    assert ModelSpec(layout="img", blocks=(), extra_kind="hw", extra=(8, 12, 24)).options()["dynamic"][0][2][0] == "hw"
    path = tmp_path / "m.py"
    path.write_text(rendered.text)
    module = load_model_module(path)
    model = module.build()
    with torch.no_grad():
        model(module.example())
        model(module.inputs_at({"h": 9, "w": 17}))
    assert model.b1_block._hooked and len(model.b1_block.sub._forward_hooks) == 1, "hooked once, on the first call"
    assert model.b0_head.shape == (4, 9, 17), "the anchor cache follows the last size"
    drawn = generate(60, seed=5)
    assert any(s.star_args for s in drawn) and any(not s.warm_up for s in drawn)
    assert any(s.hw_independent for s in drawn) and any(s.extra_kind == "hw" and not s.hw_independent for s in drawn)
    assert all(s.hw_independent for s in drawn if s.extra_kind == "hw" and "hw_swap" in {n for n, _ in s.blocks})


def test_the_hazard_line_is_where_the_renderer_says():
    spec = ModelSpec(layout="seq", blocks=(("view_sizes", 0), ("input_read", 1)), batch=(1, 4, 8))
    rendered = render(spec)
    lines = rendered.text.splitlines()
    assert ".tolist()" in lines[rendered.hazard_lines["b1:input_read"] - 1]
    first, last = rendered.spans["b1:input_read"]
    assert "x = x + b1_v[0]" in lines[last - 1] and first == rendered.hazard_lines["b1:input_read"]
    assert spec.unservable == "a value read from the input"
    assert ModelSpec(layout="seq", blocks=(("per_sample_loop", 0), ("batch_stat", 0))).unservable is not None
    assert ModelSpec(layout="seq", blocks=(("per_sample_loop", 0),)).unservable is None, "a loop alone is served"
    assert ModelSpec(layout="seq", blocks=(("batch_stat", 0),)).unservable is None, "a batch statistic too"


def test_checks_run_at_sizes_compile_did_not_verify():
    spec = ModelSpec(layout="seq", blocks=(("view_sizes", 0),), batch=(1, 4, 8), extra_kind="seq", extra=(4, 8, 16))
    verified = [{"batch": b, "seq": s} for b in (1, 3, 4, 8) for s in (4, 8, 10, 16)]
    points = check_sizes(spec, verified)
    assert points and all(p["batch"] not in (1, 3, 4, 8) and p["seq"] not in (4, 8, 10, 16) for p in points)
    spec = ModelSpec(layout="img", blocks=(), batch=(1, 4, 8), extra_kind="hw", extra=(8, 12, 16), hw_independent=True)
    verified = [{"batch": 1, "h": h, "w": w} for h, w in ((12, 12), (8, 12), (16, 12), (12, 8), (12, 16))]
    points = check_sizes(spec, verified)
    assert all(p["h"] != p["w"] and not {p["h"], p["w"]} & {8, 12, 16} for p in points), points
    assert all("hw" in p for p in check_sizes(dataclasses.replace(spec, hw_independent=False), verified))


def test_the_summary_counts_what_the_issue_names():
    rows = [{"outcome": o, "spec": {"blocks": [["bool_mask", 0]]}, "dim_kind": "batch", "source_at": "hazard"}
            for o in ("PASS", "PASS", "REFUSED", "SILENT", "CRASH", "TIMEOUT", "PARTIAL", "REFUSED_UNEXPECTED",
                      "CORRUPTED")]
    summary = summarize(rows)
    keys = ("total", "pass", "refused", "silent", "crash", "corrupted", "timeout", "partial")
    assert {k: summary[k] for k in keys} == {
        "total": 9, "pass": 2, "refused": 2, "silent": 1, "crash": 1, "corrupted": 1, "timeout": 1, "partial": 1}
    assert summary["failures"] == 6 and summary["refused_with_source"] == 1
    counts = tables(rows)
    assert counts["per_block"]["bool_mask"]["PASS"] == 2 and counts["per_dim_kind"]["batch"]["SILENT"] == 1
    text = markdown({"summary": summary, "seed": 0, "command": "x", "wall_s": 1.0, "jobs": 1, "cpus": 2,
                     "tables": counts, "rows": [dict(r, id=f"m{i}", label="l") for i, r in enumerate(rows)]})
    assert "| bool_mask | 9 |" in text and "## Failures" in text and "`m8` CORRUPTED" in text


def _shape(spec, sizes):
    shape = list(spec.example_shape())
    for key, n in sizes.items():
        for axis in {"batch": (0,), "seq": (1,), "hw": (2, 3), "h": (2,), "w": (3,)}[key]:
            shape[axis] = n
    return tuple(shape)


@pytest.mark.parametrize("spec", [
    ModelSpec(layout="seq", blocks=(), batch=(2, 4, 8), extra_kind="seq", extra=(4, 8, 16)),
    ModelSpec(layout="seq", blocks=(), batch=None),
    ModelSpec(layout="img", blocks=(), batch=(1, 4, 8), extra_kind="hw", extra=(8, 12, 24)),
    ModelSpec(layout="img", blocks=(), batch=(1, 4, 8), extra_kind="hw", extra=(8, 12, 24), hw_independent=True),
    ModelSpec(layout="img", blocks=(), batch=(1, 2, 4)),
], ids=lambda s: s.dim_kind or "static")
def test_edge_sizes_step_outside_the_declaration_except_h_and_w_declared_independent(spec):
    edges = edge_sizes(spec)
    inside = [e for e in edges if spec.outside(_shape(spec, e)) is None]
    unequal = [e for e in edges if "h" in e and "w" in e]
    if spec.hw_independent:
        assert inside == unequal and len(unequal) == 2, edges
    else:
        assert not inside, inside
    if spec.extra_kind == "hw" and not spec.hw_independent:
        assert len(unequal) == 1, "H != W is outside one name"
    assert any("batch" in e and not ({"seq", "hw", "h", "w"} & set(e)) for e in edges), "the batch's edge"


def test_the_fuzzers_reading_of_the_claims_agrees_with_fxtrts_check():
    """outside_claims is the fuzzer's own oracle: where it says a size is claimed, fxtrt's check
    passes, and where not, fxtrt raises a ConfigError (ranges, unbounded batch, steps, one name
    for two axes, static axes)."""
    dims = [DimClaim("batch", 1, None, None, ((0, 0),)), DimClaim("hw", 8, 16, 4, ((0, 2), (0, 3)))]
    claims = Claims.of(("x",), [(2, 4, 8, 8)], dims)
    seen = collections.Counter()
    for b, c, h, w in itertools.product((1, 40), (3, 4), (7, 8, 12, 14, 16, 20), (8, 12)):
        shape = (b, c, h, w)
        try:
            claims.check([torch.empty(shape)])
            checked = None
        except fxtrt.ConfigError as exc:
            checked = exc
        assert (outside_claims(claims, [shape]) is None) == (checked is None), (shape, checked)
        seen[checked is None] += 1
    assert seen[True] and seen[False]


class ScaleByWidth(torch.nn.Module):
    def forward(self, x):
        return x * x.size(3)


class ScaleByHeight(torch.nn.Module):
    """Equal to ScaleByWidth wherever H == W: a compiled model that confused the two would pass
    every square check."""

    def forward(self, x):
        return x * x.size(2)


class NeedsSquare(torch.nn.Module):
    def forward(self, x):
        return x + x.transpose(2, 3)


@pytest.fixture(scope="module")
def width_compiled(tmp_path_factory):
    spec = ModelSpec(layout="img", blocks=(), batch=(1, 2, 4), extra_kind="hw", extra=(8, 8, 16), hw_independent=True)
    x = torch.randn(*spec.example_shape())
    compiled = fxtrt.compile(ScaleByWidth(), x, out_dir=tmp_path_factory.mktemp("width") / "out", **spec.options())
    return spec, compiled


def test_a_compiled_model_is_held_to_its_claims_at_the_edges(width_compiled):
    spec, compiled = width_compiled
    judge = lambda reference, sizes, call=compiled, claims=compiled.claims: judge_call(  # noqa: E731
        spec, claims, call, reference, torch.randn(*_shape(spec, sizes)), sizes)
    for sizes in [{"h": 8, "w": 16}, {"batch": 4, "h": 16, "w": 9}] + edge_sizes(spec):
        assert judge(ScaleByWidth(), sizes)["outcome"] == "ok", sizes
    assert judge(ScaleByWidth(), {"batch": 5})["raised"].startswith("ConfigError"), "outside: refused"

    # a result that is right at H == W and wrong at H != W: the unequal size inside the claims fails
    assert judge(ScaleByHeight(), {"h": 12, "w": 12})["outcome"] == "ok"
    wrong = judge(ScaleByHeight(), {"h": 8, "w": 16})
    assert wrong["outcome"] == "SILENT" and wrong["claimed"], wrong

    # an exception that is not an FxtrtError is a crash; a size served outside the claims is a failure
    crashed = judge(ScaleByWidth(), {"h": 8, "w": 16}, call=NeedsSquare())
    assert crashed["outcome"] == "CRASH" and "RuntimeError" in crashed["reason"], crashed
    served = judge(ScaleByWidth(), {"batch": 5}, call=ScaleByWidth())
    assert served["outcome"] == "SILENT" and "outside its claims" in served["reason"], served

    # claims that tie H and W, declared independent, where eager runs at H != W: compile narrowed them
    one = Claims.of(compiled.claims.input_names, [spec.example_shape()],
                    [compiled.claims.dims[0], DimClaim("hw", 8, 16, None, ((0, 2), (0, 3)))])
    narrowed = judge(ScaleByWidth(), {"h": 8, "w": 16}, call=lambda x: one.check([x]), claims=one)
    assert narrowed["outcome"] == "SILENT" and "narrowed" in narrowed["reason"], narrowed
    assert judge(NeedsSquare(), {"h": 8, "w": 16}, call=lambda x: one.check([x]), claims=one)["outcome"] == "ok", \
        "a model that cannot run at H != W: a claim of one size is right"


def test_a_model_compile_changed_is_caught(tmp_path):
    """state_of and corruption, on a model whose blocks cache and hook in forward: undoing the
    hook its first call installed, or changing a cached tensor, is seen in its state; a change
    made before the snapshot is seen in its outputs against the twin."""
    spec = ModelSpec(layout="seq", blocks=(("cache_in_forward", 1), ("cache_in_forward", 0)), batch=(1, 4, 8))
    path = tmp_path / "m.py"
    path.write_text(render(spec).text)
    module = load_model_module(path)
    model, twin = module.build(), module.build()
    inputs = [module.inputs_at({}), module.inputs_at({"batch": 3, "seq": 7})]
    with torch.no_grad():
        model(module.example())
        twin(module.example())
    before = state_of(model)
    assert corruption(model, twin, before, inputs) is None
    assert corruption(model, twin, state_of(model), inputs) is None, "calling it again changes nothing that matters"

    model.b0_block.sub._forward_hooks.clear()
    reason = corruption(model, twin, before, inputs)
    assert reason and "b0_block.sub._forward_hooks changed" in reason, reason
    assert "differs from its twin" in corruption(model, twin, state_of(model), inputs)

    model = module.build()
    with torch.no_grad():
        model(module.example())
    before = state_of(model)
    model.b1_head.anchors = model.b1_head.anchors + 1
    assert "b1_head.anchors changed" in corruption(model, twin, before, inputs)


def test_generation_is_deterministic_for_a_seed():
    assert generate(5, seed=3) == generate(5, seed=3)


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    start = time.perf_counter()
    rows = [run_model(spec, root / f"m{i}") for i, spec in enumerate(generate(N, seed=SEED, max_blocks=2))]
    return rows, time.perf_counter() - start


def test_a_fixed_seed_subset_keeps_the_promise(subset):
    rows, wall = subset
    bad = [(r["label"], r["outcome"], r.get("detail")) for r in rows if r["outcome"] not in ("PASS", "REFUSED")]
    assert not bad, bad
    edges = [c for r in rows for c in r.get("checks", []) if c.get("edge")]
    assert any(c["raised"].startswith("ConfigError") for c in edges if "raised" in c), "refused outside the claims"
    assert any(c["declared"] and "h" in c["sizes"] and c["sizes"]["h"] != c["sizes"]["w"] and c["ok"] for c in edges), \
        "served H != W where declared independent"
    assert all(r["corrupted"] is None for r in rows)
    outcomes = collections.Counter(r["outcome"] for r in rows)
    assert outcomes["PASS"] >= N // 2, outcomes
    for r in rows:
        if r["outcome"] == "REFUSED":
            assert r["unservable"], r
            if "read" in r["unservable"]:
                assert r["source_at"] == "hazard", r
    print(f"{N} generated models in {wall:.0f} s: {dict(outcomes)}")


def test_a_model_runs_in_a_child_of_the_fork_server_with_every_core(tmp_path):
    """run_many, as ``--jobs 1`` runs it: the child asks for every core. A fork server whose warm-up
    started an OpenMP thread team left such a child hung in its first parallel op (a TIMEOUT)."""
    spec = ModelSpec(layout="seq", blocks=(("baked_size", 0),), batch=(1, 4, 8))  # hung; view_sizes#0 did not
    row = run_many([spec], tmp_path, jobs=1, timeout_s=90, progress=False)[0]
    assert row["outcome"] == "PASS", row


def test_sub_specs_shrink_to_the_blocks_a_failure_needs():
    """What --shrink relies on: Hypothesis, searching sub_specs for a failure, ends at the fewest
    blocks that still fail (here a stand-in failure that needs input_read and batch_stat)."""
    from hypothesis import HealthCheck, Phase, find, settings

    from benchmarks.hazards import sub_specs

    spec = ModelSpec(layout="seq", blocks=(("view_sizes", 0), ("input_read", 0), ("bool_mask", 1), ("batch_stat", 0)))
    needed = {"input_read", "batch_stat"}
    small = find(sub_specs(spec), lambda s: needed <= {n for n, _ in s.blocks},
                 settings=settings(max_examples=200, database=None, phases=[Phase.generate, Phase.shrink],
                                   suppress_health_check=list(HealthCheck)))
    assert small.blocks == (("input_read", 0), ("batch_stat", 0))
