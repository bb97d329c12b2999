"""The statistics of the sweeps and the research record, in one place.

One rule judges a difference alone: a mean over n runs with its standard error (SE) is "beyond
noise" when |mean| > t × SE, t the two-sided 95 % quantile of the t distribution with n - 1
degrees of freedom (4.30 for three seeds; Welch's degrees of freedom for two unpaired groups).
Runs that share seeds are compared paired, seed by seed (`paired_by_seed`, n - 1 df); only runs
that share fewer than two seeds are compared unpaired, by Welch's t (`compare_by_seed` chooses).

One rule judges many: where a table makes several comparisons, they are one family, and Holm's
step-down rule (`holm`, `judge_family`) gives each its adjusted p-value and its verdict: "beyond
noise" when the Holm-adjusted p is at most 0.05. It keeps the chance of any false "beyond noise" in
the family at 5 %, as Bonferroni does, and is never stricter. A table says its family: which
comparisons, and how many. (`comparisons` of a Comparison, the older Bonferroni allowance that
raises t to the level 1 - 0.05 / comparisons, is kept for the record's earlier tables.)

Used by sweeps/sweep.py (summaries of seeded sweeps), sweeps/compare_baseline.py, sweeps/ood_rules.py,
sweeps/records.py and notebooks/research_record.ipynb.
"""

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

LEVEL = 0.95  # the two-sided confidence of every interval, and the test behind "beyond noise"


def t_quantile(df, level=LEVEL, comparisons=1):
    """The two-sided t quantile with df degrees of freedom: 4.30 for df = 2 at 95 %.

    With m comparisons, the quantile at level 1 - (1 - level) / m (Bonferroni): 8.86 for df = 2 and m = 4.
    """
    from scipy import stats

    return float(stats.t.ppf(1 - (1 - level) / (2 * comparisons), df))


def welch_degrees_of_freedom(sd1, n1, sd2, n2):
    """Welch-Satterthwaite degrees of freedom of the difference of two means (n1 + n2 - 2 when both sds are 0)."""
    a, b = sd1**2 / n1, sd2**2 / n2
    if a + b == 0:
        return n1 + n2 - 2
    return (a + b) ** 2 / (a**2 / (n1 - 1) + b**2 / (n2 - 1))


def unpaired_se(sd_a, n_a, sd_b, n_b):
    """sqrt(sd_a²/n_a + sd_b²/n_b): the standard error of a difference of two independent means."""
    return math.sqrt(sd_a**2 / n_a + sd_b**2 / n_b)


def finite(values, what="values"):
    """values as a float array, or a ValueError that names what holds a nan or an infinity (a failed run?)."""
    values = np.asarray(values, dtype=float)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise ValueError(f"{what} hold {', '.join(str(values[i]) for i in bad)} at position(s) "
                         f"{', '.join(str(i) for i in bad)}: a failed run or a missing value, which no mean may hide")
    return values


@dataclass(frozen=True)
class Comparison:
    """A mean difference over n runs with its standard error, judged with the t distribution (n - 1 df).

    comparisons: how many comparisons were made on the same runs (the best of them picked); above 1, t is
    taken at the Bonferroni level, and p_adjusted is p × comparisons.
    """

    mean: float
    se: float
    n: int
    comparisons: int = 1
    degrees: float | None = None  # degrees of freedom where they are not n - 1 (paired_two_noises)

    def __post_init__(self):
        if not (math.isfinite(self.mean) and math.isfinite(self.se) and self.se >= 0):
            raise ValueError(f"a comparison needs a finite mean and standard error, not {self.mean} ± {self.se}: "
                             "a failed run or a missing value?")
        if self.n < 2 or self.comparisons < 1:
            raise ValueError(f"a comparison needs n >= 2 runs and comparisons >= 1, "
                             f"not {self.n} and {self.comparisons}")

    @property
    def df(self):
        return self.n - 1 if self.degrees is None else self.degrees

    @property
    def t(self):
        """How many standard errors "beyond noise" needs: the t quantile with n - 1 df, at the adjusted level."""
        return t_quantile(self.df, comparisons=self.comparisons)

    @property
    def ratio(self):
        """The difference in standard errors."""
        return self.mean / self.se if self.se > 0 else math.copysign(math.inf, self.mean)

    @property
    def low(self):
        return self.mean - self.t * self.se

    @property
    def high(self):
        return self.mean + self.t * self.se

    @property
    def beyond_noise(self):
        """True when the t interval excludes 0: |mean| > t × se."""
        return abs(self.mean) > self.t * self.se

    @property
    def p(self):
        """The two-sided p-value of the t test of mean 0, for this comparison alone."""
        from scipy import stats

        if self.se == 0:  # no spread: any difference is certain, none is none
            return 0.0 if self.mean != 0 else 1.0
        return float(2 * stats.t.sf(abs(self.ratio), self.df))

    @property
    def p_adjusted(self):
        """p allowing for the comparisons made (Bonferroni): min(1, p × comparisons)."""
        return min(1.0, self.p * self.comparisons)

    def among(self, comparisons):
        """The same difference, judged as one of `comparisons` made on the same runs."""
        return replace(self, comparisons=comparisons)

    def beyond(self, standard_errors):
        """The verdict of another rule: |mean| > that many standard errors (the earlier rule: 2)."""
        return abs(self.mean) > standard_errors * self.se

    def scaled(self, factor):
        """The same comparison in other units (e.g. 100: accuracy in points)."""
        return replace(self, mean=self.mean * factor, se=self.se * abs(factor))

    def text(self, digits=2):
        """'mean ± se (k SE, n = .., t needed ..: beyond noise / within noise)', the form the lab prints."""
        verdict = "beyond noise" if self.beyond_noise else "within noise"
        among = f" for {self.comparisons} comparisons" if self.comparisons > 1 else ""
        return (f"{self.mean:+.{digits}f} ± {self.se:.{digits}f} ({abs(self.ratio):.2f} SE, n = {self.n}, "
                f"t needed {self.t:.2f}{among}: {verdict})")

    def cells(self, digits=2):
        """The row cells under COMPARISON_COLUMNS."""
        return (f"{self.mean:+.{digits}f} ± {self.se:.{digits}f}", f"{self.low:+.{digits}f} to {self.high:+.{digits}f}",
                f"{abs(self.ratio):.2f}", f"{self.t:.2f}", self.beyond_noise)

    def __str__(self):
        return self.text(4)


COMPARISON_COLUMNS = ("difference ± SE", "95 % t interval", "SEs", "t needed", "beyond noise")


def mean_se(values, what="values"):
    """The mean of independent runs' values with its standard error, as a Comparison (its interval: the mean's)."""
    values = finite(values, what)
    if len(values) < 2:
        raise ValueError(f"{what}: a mean's standard error needs at least two values")
    return Comparison(float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values))), len(values))


def paired(a, b, scale=1.0, what="paired values"):
    """a - b run by run (runs that share a seed), as a Comparison: mean, sd / sqrt(n), n."""
    a, b = finite(a, what), finite(b, what)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"{what}: paired values need two lists of one length, not {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError(f"{what}: a comparison needs at least two pairs: one has no spread")
    return mean_se(scale * (a - b), what)


def paired_by_seed(a, b, scale=1.0, what="paired values"):
    """paired() of two {seed: value} dicts, over the seeds both hold (their seeds must be the same)."""
    if set(a) != set(b):
        raise ValueError(f"{what}: the two sides have different seeds: {sorted(a)} and {sorted(b)}")
    seeds = sorted(a)
    return paired([a[s] for s in seeds], [b[s] for s in seeds], scale, what)


def welch(a, b, scale=1.0, what="values"):
    """mean(a) - mean(b) of two independent groups of runs, as a Comparison judged with Welch's t.

    Its standard error is sqrt(sd_a²/n_a + sd_b²/n_b), its degrees of freedom Welch-Satterthwaite's; its n is
    the smaller group's (the n that `text` shows).
    """
    a, b = finite(a, what), finite(b, what)
    if a.ndim != 1 or b.ndim != 1 or len(a) < 2 or len(b) < 2:
        raise ValueError(f"{what}: Welch's t needs two lists of at least two values each, not {a.shape} and {b.shape}")
    sd_a, sd_b = float(a.std(ddof=1)), float(b.std(ddof=1))
    comparison = Comparison(float(a.mean() - b.mean()), unpaired_se(sd_a, len(a), sd_b, len(b)), min(len(a), len(b)),
                            degrees=welch_degrees_of_freedom(sd_a, len(a), sd_b, len(b)))
    return comparison.scaled(scale)


PAIRED, WELCH = "paired t", "Welch t"  # the tests compare_by_seed chooses between


def compare_by_seed(a, b, scale=1.0, what="values"):
    """a - b for two {seed: value} dicts: (Comparison, the test used, the seeds it paired).

    Paired by seed (a paired t on the per-seed differences, n - 1 df, n the seeds both hold) whenever the two
    share at least two seeds; the seeds only one side holds are then left out (a failed run's partner). Only
    when they share fewer than two seeds: Welch's unpaired t over all the values (Welch-Satterthwaite df).
    """
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2:
        comparison = paired([a[s] for s in shared], [b[s] for s in shared], scale, what)
        return comparison, PAIRED, shared
    return welch(list(a.values()), list(b.values()), scale, what), WELCH, []


def write_csv(path, rows):
    """rows (dicts with the same keys) as a CSV file, floats as Python writes them."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def paired_two_noises(differences, scale=1.0, what="paired differences"):
    """The mean of per-review paired differences over several runs (seeds) scored on one fixed set of reviews.

    differences: [runs, reviews], e.g. (model A right) - (model B right), 1, 0 or -1 per review. Two noises:
    the seeds' (the runs' means differ from one another) and the set's own sampling (another set of reviews
    from the same source would give another mean; it is shared by every run, so it does not shrink with more
    seeds). The standard error is sqrt(seed SE² + set SE²): the seed SE is sd(run means) / sqrt(runs), the set
    SE is sd(each review's difference averaged over the runs) / sqrt(reviews). It is judged with t at the
    Welch-Satterthwaite degrees of freedom of that sum (runs - 1 for the seeds' part, reviews - 1 for the
    set's): near runs - 1 when the seeds' noise dominates, large when the set's does.
    Returns (Comparison, seed SE, set SE), all times scale.
    """
    differences = finite(np.asarray(differences, dtype=float).ravel(), what).reshape(np.shape(differences))
    if differences.ndim != 2 or differences.shape[0] < 2 or differences.shape[1] < 2:
        raise ValueError(f"{what}: need [runs >= 2, reviews >= 2] differences, not shape {differences.shape}")
    runs, reviews = differences.shape
    run_means = differences.mean(axis=1)
    seed_se = float(run_means.std(ddof=1) / math.sqrt(runs))
    set_se = float(differences.mean(axis=0).std(ddof=1) / math.sqrt(reviews))
    variance = seed_se**2 + set_se**2
    parts = seed_se**4 / (runs - 1) + set_se**4 / (reviews - 1)
    degrees = variance**2 / parts if parts > 0 else float(runs - 1)
    comparison = Comparison(float(run_means.mean()), math.sqrt(variance), runs, degrees=degrees)
    return comparison.scaled(scale), seed_se * abs(scale), set_se * abs(scale)


def holm(p_values, level=LEVEL):
    """Holm's step-down rule over one family of comparisons: which of them are beyond noise, and each one's
    adjusted p-value (Holm 1979). Sorted ascending, the k-th smallest p (k = 1 ... m) must be at most
    (1 - level) / (m - k + 1), and every smaller p must have passed too; the adjusted p is the running maximum
    of (m - k + 1) x p. It controls the chance of any false "beyond noise" in the family, as Bonferroni does,
    and is never stricter. The family is every p passed: a table that uses it says which comparisons, and how
    many (`judge_family` does this for Comparisons).
    """
    p = finite(p_values, "p-values")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted <= 1 - level, adjusted


@dataclass(frozen=True)
class Verdict:
    """One comparison of a family, judged alone and by Holm's rule over the family."""

    comparison: Comparison
    family_size: int  # how many comparisons the family holds (this one included)
    p: float  # the comparison's own p-value, as if it were the only one (`comparison.among(1).p`)
    p_holm: float  # Holm's adjusted p-value over the family
    beyond_noise: bool  # Holm's verdict: p_holm <= 1 - level
    level: float = LEVEL

    @property
    def beyond_alone(self):
        """The verdict of the comparison alone: p <= 1 - level."""
        return self.p <= 1 - self.level

    @property
    def verdict(self):
        """Holm's verdict in words: "beyond noise" or "within noise"."""
        return "beyond noise" if self.beyond_noise else "within noise"


def judge_family(comparisons, level=LEVEL):
    """[Verdict] of each comparison, in order, the comparisons being one family under Holm's rule.

    Each comparison's p is its own (a Bonferroni `comparisons` it carries is dropped: the family replaces it).
    An empty family gives [].
    """
    comparisons = list(comparisons)
    if not comparisons:
        return []
    p = [c.among(1).p for c in comparisons]
    beyond, adjusted = holm(p, level)
    return [Verdict(c, len(comparisons), float(p_alone), float(p_holm), bool(verdict), level)
            for c, p_alone, p_holm, verdict in zip(comparisons, p, adjusted, beyond, strict=True)]
