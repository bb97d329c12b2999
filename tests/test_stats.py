"""sweeps/stats.py's rule for many comparisons (Holm's) and its choice of test (paired by seed, else Welch),
against hand computations; and sweeps/records.py's verdicts of the record's sections under Holm's rule."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sweeps"))

import records  # noqa: E402
import stats  # noqa: E402


def test_holms_rule_on_a_textbook_example():
    """p = 0.01, 0.04, 0.03, 0.005, one family of m = 4, alpha 0.05, by hand:

    sorted 0.005, 0.01, 0.03, 0.04, each times m - k + 1 = 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04; the running
    maximum: 0.02, 0.03, 0.06, 0.06. Back in the given order: 0.03, 0.06, 0.06, 0.02. The step-down test
    agrees: 0.005 <= 0.05/4 and 0.01 <= 0.05/3 pass, 0.03 > 0.05/2 stops, and 0.04 (<= 0.05/1 on its own)
    is not reached.
    """
    beyond, adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted.tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert beyond.tolist() == [True, False, False, True]


def test_holms_adjusted_p_never_falls_with_a_smaller_p_and_stops_at_one():
    # 0.02 x 3 = 0.06 > 0.05: the smallest fails, so all do, though 0.03 x 2 = 0.06 and 0.04 x 1 = 0.04 (-> 0.06)
    beyond, adjusted = stats.holm([0.04, 0.02, 0.03])
    assert adjusted.tolist() == pytest.approx([0.06, 0.06, 0.06]) and not beyond.any()
    assert stats.holm([0.5, 0.6])[1].tolist() == [1.0, 1.0]  # 2 x 0.5 = 1, 2 x 0.6 capped at 1
    assert stats.holm([0.03])[1].tolist() == [0.03]  # a family of one: p itself
    assert stats.holm([])[1].tolist() == []


def paired_comparison(t_squared):
    """A paired Comparison of three runs (2 df) with t = sqrt(t_squared): mean sqrt(t_squared), se 1."""
    return stats.Comparison(t_squared**0.5, 1.0, 3)


def test_a_family_judges_each_comparison_alone_and_by_holm():
    """With 2 df the two-sided p is 1 - sqrt(t² / (t² + 2)): t² = 363 gives 0.00274, 27 gives 0.0351, 12 gives
    0.0742. Holm: 3 x 0.00274 = 0.0082, 2 x 0.0351 = 0.0702, 0.0742: only the first beyond noise; the second
    is beyond noise alone."""
    verdicts = stats.judge_family([paired_comparison(12), paired_comparison(363), paired_comparison(27)])
    p = [1 - (12 / 14) ** 0.5, 1 - (363 / 365) ** 0.5, 1 - (27 / 29) ** 0.5]
    assert [v.p for v in verdicts] == pytest.approx(p)
    assert [v.p_holm for v in verdicts] == pytest.approx([p[0], 3 * p[1], 2 * p[2]])
    assert [v.beyond_alone for v in verdicts] == [False, True, True]
    assert [v.beyond_noise for v in verdicts] == [False, True, False]
    assert [v.verdict for v in verdicts] == ["within noise", "beyond noise", "within noise"]
    assert {v.family_size for v in verdicts} == {3} and stats.judge_family([]) == []


def test_a_family_replaces_a_comparisons_bonferroni_allowance():
    alone = paired_comparison(27)
    (verdict,) = stats.judge_family([alone.among(4)])  # the older allowance is dropped: the family is one
    assert verdict.p == pytest.approx(alone.p) and verdict.beyond_noise


def test_no_difference_and_no_spread_is_no_evidence():
    # Two identical runs: p must say "no difference" (1), as the t interval does, not "certain" (0).
    same = stats.paired([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
    assert same.p == 1.0 and not same.beyond_noise
    assert stats.Comparison(0.01, 0.0, 3).p == 0.0


def test_runs_that_share_seeds_are_paired_and_others_compared_by_welch():
    a = {1: 0.810, 2: 0.821, 3: 0.832}
    b = {1: 0.800, 2: 0.810, 3: 0.820}
    comparison, test, seeds = stats.compare_by_seed(a, b)
    # per-seed differences 0.010, 0.011, 0.012: mean 0.011, sd 0.001, se 0.001 / sqrt 3, 2 df
    assert (test, seeds, comparison.df) == (stats.PAIRED, [1, 2, 3], 2)
    assert (comparison.mean, comparison.se) == pytest.approx((0.011, 0.001 / 3**0.5))
    assert comparison.beyond_noise
    unshared = {seed + 10: value for seed, value in a.items()}
    comparison, test, seeds = stats.compare_by_seed(unshared, b)
    # Welch: se sqrt((0.011² + 0.010²) / 3) = 0.00858; df (a + b)² / (a² / 2 + b² / 2) with a = 0.011² / 3 and
    # b = 0.010² / 3: 3.96; 0.011 / 0.00858 = 1.28 SE, within noise
    va, vb = 0.011**2 / 3, 0.010**2 / 3
    assert (test, seeds) == (stats.WELCH, [])
    assert (comparison.mean, comparison.se) == pytest.approx((0.011, (va + vb) ** 0.5))
    assert comparison.df == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)) == pytest.approx(3.96, abs=0.01)
    assert not comparison.beyond_noise
    one_shared = {1: 0.810, 12: 0.821, 13: 0.832}  # one seed in common is no pairing
    assert stats.compare_by_seed(one_shared, b)[1] == stats.WELCH
    with pytest.raises(ValueError, match="Welch's t needs"):
        stats.compare_by_seed({1: 0.8}, {2: 0.7, 3: 0.75})


def test_each_section_of_the_record_is_one_family():
    """Two sections: 'ablation' (t² = 363, 27, 12: p 0.0027, 0.0351, 0.0742) and 'ensemble' (t² = 27 alone).
    In the ablation 0.0351 becomes 0.0702 and turns within noise; alone in its section, it stays beyond."""
    claims = [("ablation", "a", paired_comparison(363), "earlier", True), ("ablation", "b", paired_comparison(27)),
              ("ensemble", "c", paired_comparison(27)), ("ablation", "d", paired_comparison(12))]
    rows = records.holm_by_section(claims)
    assert [(r["section"], r["claim"], r["family"]) for r in rows] == [("ablation", "a", 3), ("ablation", "b", 3),
                                                                       ("ensemble", "c", 1), ("ablation", "d", 3)]
    p363, p27, p12 = (1 - (t2 / (t2 + 2)) ** 0.5 for t2 in (363, 27, 12))
    assert [r["p"] for r in rows] == pytest.approx([p363, p27, p27, p12])
    assert [r["p_holm"] for r in rows] == pytest.approx([3 * p363, 2 * p27, p27, p12])
    assert [r["beyond_before"] for r in rows] == [True, True, True, False]
    assert [r["beyond_holm"] for r in rows] == [True, False, True, False]
    assert [r["changed"] for r in rows] == [False, True, False, False]
    table = repr(records.holm_table(rows))
    assert "CHANGED" in table and table.splitlines()[0].startswith("section")
