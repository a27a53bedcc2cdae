"""The one match rule and the one feed builder (fxtrt.compare), which every check uses."""
import numpy as np
import torch

from fxtrt.compare import compare_arrays, compare_tensors, feed_dtype, feeds_at, onnx_feed, onnx_inputs
from fxtrt.settings import DynamicDim


def test_rule_is_atol_plus_rtol_times_ref():
    ref = np.array([100.0, 0.0])
    # allowed at ref=100: 1e-4 + 1e-3 * 100 = 0.1001
    assert compare_arrays(ref, ref + [0.1, 0.0], 1e-4, 1e-3).passed
    assert not compare_arrays(ref, ref + [0.15, 0.0], 1e-4, 1e-3).passed
    # near zero only atol counts
    assert not compare_arrays(np.array([0.0]), np.array([2e-4]), 1e-4, 1e-3).passed
    # |d| = 5e-5 <= atol, so it passes: atol is added into the bound, not a second test
    assert compare_arrays(np.array([1e-6]), np.array([5e-5]), 1e-4, 1e-3).passed


def test_shape_mismatch_and_nan_fail():
    assert compare_arrays(np.zeros((2, 3)), np.zeros((3, 3)), 1, 1).note.startswith("shape")
    assert not compare_arrays(np.array([1.0]), np.array([np.nan]), 1e-4, 1e-3).passed
    assert compare_arrays(np.array([np.nan]), np.array([np.nan]), 1e-4, 1e-3).passed


def test_equal_infinities_match_and_overflow_is_counted():
    ref = np.array([-np.inf, 1.0, 2.0])
    assert compare_arrays(ref, ref.copy(), 0, 0).passed  # a -inf attention mask is no divergence
    c = compare_arrays(ref, np.array([-np.inf, np.inf, 2.0]), 1e-2, 1e-2)
    assert not c.passed and c.nonfinite == 1 and c.peak == 2.0


def test_per_tensor_uses_the_largest_reference():
    ref = np.array([1000.0, 0.0])
    out = np.array([1000.0, 0.5])
    assert not compare_arrays(ref, out, 1e-4, 1e-3).passed
    assert compare_arrays(ref, out, 1e-4, 1e-3, per_tensor=True).passed  # 0.5 <= 1e-4 + 1e-3 * 1000


def test_integers_are_exact_only_when_asked():
    ref, out = np.array([1000], dtype=np.int64), np.array([1001], dtype=np.int64)
    assert compare_arrays(ref, out, 1e-4, 1e-3).passed  # 1 <= 1e-4 + 1e-3 * 1000
    assert not compare_arrays(ref, out, 1e-4, 1e-3, exact_integers=True).passed


def test_tensors_are_compared_by_the_same_rule():
    ref = torch.tensor([100.0, 0.0], dtype=torch.bfloat16)
    assert compare_tensors(ref, ref + torch.tensor([0.0, 5e-5], dtype=torch.bfloat16), 1e-4, 1e-3).passed
    assert not compare_tensors(torch.tensor([True]), torch.tensor([False]), 0.5, 0, exact_integers=True).passed


def test_feeds_cast_float64_to_float32_and_keep_integers():
    x = torch.randn(2, 3, dtype=torch.float64)
    ids = torch.arange(6).reshape(2, 3)
    assert [t.dtype for t in onnx_inputs([x, ids])] == [torch.float32, torch.int64]
    feed = onnx_feed(["x", "ids"], [x, ids])
    assert feed["x"].dtype == np.float32 and feed["ids"].dtype == np.int64
    assert feed_dtype(torch.float64) == np.float32 and feed_dtype(torch.int32) == np.int32
    batch = DynamicDim("batch", 1, 2, 4, ((0, 0), (1, 0)), 2)
    [(sizes, at4)] = feeds_at([x, ids], [batch], ["x", "ids"], [{"batch": 4}])
    assert sizes == {"batch": 4} and at4["x"].shape == (4, 3) and at4["ids"].shape == (4, 3)


def _float64_rule(ref, out, atol, rtol, per_tensor):
    """The rule computed in float64 only, as compare_arrays did before its float32 path."""
    import fxtrt.compare as c

    saved, c._finite_float32 = c._finite_float32, lambda *args: None
    try:
        return compare_arrays(ref, out, atol, rtol, per_tensor=per_tensor)
    finally:
        c._finite_float32 = saved


def test_the_float32_path_gives_the_float64_rules_verdict_and_maxima():
    """Random float32 outputs whose errors straddle the bound (some just inside, some just past,
    exact zeros in the reference): the verdict is the float64 rule's on every draw, the maxima
    agree to float32 rounding, and the fast path really ran on the passing ones."""
    from hypothesis import given, settings, strategies as st

    import fxtrt.compare as c

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([0.5, 0.99, 0.99999, 1.0, 1.00001, 1.5]),
           per_tensor=st.booleans(), zeros=st.booleans(), size=st.sampled_from([257, 2 * c._CHUNK + 3]))
    def check(seed, scale, per_tensor, zeros, size):
        rng = np.random.default_rng(seed)
        ref = rng.standard_normal(size).astype(np.float32) * np.float32(rng.choice([1e-3, 1.0, 1e3]))
        if zeros:
            ref[::7] = 0
        peak = np.abs(ref.astype(np.float64)).max()
        bound = 1e-4 + 1e-3 * (peak if per_tensor else np.abs(ref.astype(np.float64)))
        out = (ref + (bound * scale * rng.choice([-1, 1], ref.shape)).astype(np.float32)).astype(np.float32)
        got = compare_arrays(ref, out, 1e-4, 1e-3, per_tensor=per_tensor)
        want = _float64_rule(ref, out, 1e-4, 1e-3, per_tensor)
        assert got.passed == want.passed and got.nonfinite == want.nonfinite and got.peak == want.peak
        assert np.isclose(got.max_abs, want.max_abs, rtol=1e-6) and np.isclose(got.max_rel, want.max_rel, rtol=1e-6)
        if scale <= 0.99 and got.passed:
            assert c._finite_float32(ref, out, 1e-4, 1e-3, per_tensor) is not None

    check()


def test_the_float32_path_leaves_non_finite_values_to_the_float64_rule():
    """A NaN or an infinity in either array, in any chunk, is decided by the float64 rule."""
    import fxtrt.compare as c

    ref = np.linspace(-1, 1, 3 * c._CHUNK + 1).astype(np.float32)
    for where in (0, 2 * c._CHUNK + 7):
        for bad in (np.nan, np.inf):
            out = ref.copy()
            out[where] = bad
            assert c._finite_float32(ref, out, 1e-4, 1e-3, False) is None
            assert c._finite_float32(out, ref, 1e-4, 1e-3, False) is None
            assert not compare_arrays(ref, out, 1e-4, 1e-3).passed
    both = ref.copy()
    both[5] = np.nan
    assert compare_arrays(both, both.copy(), 1e-4, 1e-3).passed, "NaN against NaN matches"
