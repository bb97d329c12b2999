"""Issue 35: the lesson's prose never contradicts the run it sits in.

A figure in the lesson's markdown (a decimal, a percentage, or a whole number from 10 up that is not a year, a
section or an exercise) either names its source in its sentence ("on the full data", "the research record",
"over three seeds", "the exercises' runs", ...), or it must be one the run in hand prints. The committed
notebook's outputs are the full default run's; a run at the exercises' size (the route's live run) must print
every unsourced figure too, so that no sentence states a size, an accuracy or a best epoch that run contradicts.
"""

import csv
import json
import os
import re
from pathlib import Path

import papermill
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "sentiment_lstm.ipynb"
KERNEL = "sentiment-lstm"
EXERCISE_SIZE = dict(train_size=1500, valid_size=1000, test_size=2000, n_epochs=3)  # the route's four settings

# Words that say where a sentence's figure comes from, other than the run in hand.
SOURCES = ("full data", "full run", "committed run", "research record", "seeds", "exercises' runs",
           "exercises.yaml", "readme", "make bench", "the dataset", "bundled", "tutorials", "full-length",
           "one-sentence", "the full", "authors'", "(rating", "standard error on 1,000", "sweep", "route's timings")
# Figures that are not results: years of citations, sections, exercises, list numbers, sizes in the code's names.
# Hypotheticals ("should", "would") state no result either.
NOT_A_FIGURE = re.compile(r"(?:(?:section|sections|exercise|exercises|step|steps|index|minute|epoch)s?\s+\d+"
                          r"|\b(?:19|20)\d\d\b|et al\.|\d+\.\s|\d+(?:\.\d+)?\s?GB|\d+-minute)", re.IGNORECASE)
HYPOTHETICAL = (" should ", " would ", " could ")
FIGURE = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+\.\d+|\d+)(?:\s?%)?(?![\w])")


def markdown_sentences(cells):
    """(cell index, sentence) for every sentence of prose: code spans, maths, links, tables and the folded
    answers of the exercises (which name their source, the exercise runs) left out."""
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"])
        if text.startswith("<details>") and "sweeps/exercises.yaml" in text:
            continue  # the exercises' answers: from the committed sweep, tested in tests/test_sweep.py
        text = text.split("## Exercises")[0]  # the exercises are set at their own size, which they state
        text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("|"))  # tables
        text = re.sub(r"^#+\s*\d+\.", " ", text, flags=re.M)  # section numbers in headings
        text = re.sub(r"\$\$.*?\$\$|\$[^$]*\$|`[^`]*`|\]\([^)]*\)|<[^>]*>", " ", text, flags=re.S)
        text = " ".join(text.split())
        for sentence in re.split(r"(?<=[.!?:;])\s+(?=[A-Z*(\"])", text):
            yield index, sentence


def figures_of(sentence):
    """The figures a sentence states, as written ("2,500", "0.6", "91")."""
    stripped = NOT_A_FIGURE.sub(" ", sentence)
    found = []
    for match in FIGURE.finditer(stripped):
        number = match.group(1)
        if "." in number or "," in number or int(number) >= 10 or match.group(0).rstrip().endswith("%"):
            if number in {"0", "1"}:  # "index 0", "between 0 and 1": definitions, not results
                continue
            found.append(number)
    return found


def unsourced_figures(cells):
    """(cell index, sentence, figure) for every figure whose sentence names no source."""
    return [(index, sentence, figure) for index, sentence in markdown_sentences(cells)
            if not any(source in sentence.lower() for source in SOURCES + HYPOTHETICAL)
            for figure in figures_of(sentence)]


def printed_text(cells):
    """Everything the run printed or displayed as text, numbers as written."""
    parts = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        parts.append("".join(cell["source"]))  # a figure may also be a setting the code states
        for output in cell.get("outputs", []):
            parts.append("".join(output.get("text", "")))
            data = output.get("data", {})
            parts.append("".join(data.get("text/plain", "")) + "".join(data.get("text/html", "")))
    return "\n".join(parts)


def contradicted(cells):
    """The unsourced figures the notebook's own outputs do not show."""
    printed = printed_text(cells)
    return [(index, figure, sentence) for index, sentence, figure in unsourced_figures(cells)
            if not re.search(rf"(?<![\d.,]){re.escape(figure)}(?![\d])", printed)]


def test_the_checker_finds_an_unsourced_figure_and_accepts_a_sourced_one():
    cells = [{"cell_type": "markdown", "source": ["We validate on 2,500 reviews. Above 91 % on the full data. "
                                                  "See section 10 (Maas et al., 2011)."]},
             {"cell_type": "code", "source": ["x = 1"], "outputs": [{"text": ["1,000 validation reviews"]}]}]
    assert [(f, s) for _, s, f in unsourced_figures(cells)] == [("2,500", "We validate on 2,500 reviews.")]
    assert [f for _, f, _ in contradicted(cells)] == ["2,500"]
    cells[1]["outputs"][0]["text"] = ["2,500 validation reviews"]
    assert contradicted(cells) == []


def test_every_figure_the_committed_lesson_states_is_sourced_or_printed_by_its_run():
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    assert contradicted(cells) == []


def imdb_archive():
    """The real archive, where this machine has one (CI: ../shared/data beside the clone)."""
    for candidate in (os.environ.get("IMDB_ARCHIVE"), REPO.parent / "shared" / "data" / "aclImdb_v1.tar.gz",
                      REPO / "data" / "aclImdb_v1.tar.gz"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.mark.notebook
@pytest.mark.slow
def test_the_lessons_prose_holds_in_a_run_at_the_exercises_size(tmp_path):
    """The route's live run: every figure the prose states without a source is one this run prints (sizes,
    accuracies, best epochs), and it says which of its epochs was best."""
    archive = imdb_archive()
    if archive is None:
        pytest.skip("the IMDB archive is not on this machine (IMDB_ARCHIVE, ../shared/data or data/)")
    output = tmp_path / "exercise.ipynb"
    papermill.execute_notebook(NOTEBOOK, output, kernel_name=KERNEL, cwd=REPO, progress_bar=False,
                               request_save_on_cell_execute=False,
                               parameters=dict(EXERCISE_SIZE, imdb_archive=str(archive),
                                               run_dir=str(tmp_path / "run"), ig_steps=16))
    cells = json.loads(output.read_text(encoding="utf-8"))["cells"]
    assert "1,500 training and 1,000 validation reviews" in printed_text(cells)
    assert contradicted(cells) == []


def test_the_lessons_fixed_diagrams_are_the_files_helpers_draws_once():
    """Issue 35: the diagrams that never change are drawn once (`python helpers.py diagrams`) into figures/ and
    shown by the lesson's markdown, not drawn by every run."""
    import helpers

    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    markdown = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    linked = re.findall(r"!\[[^\]]*\]\(\.\./figures/([^)]+)\)", markdown)
    assert sorted(linked) == sorted(helpers.DIAGRAMS)
    for name, draw in helpers.DIAGRAMS.items():
        assert (REPO / "figures" / name).is_file() and draw.__name__ not in code


def test_the_lessons_summary_quotes_the_seeds_records():
    """Issues 22 and 34: the summary compares with the strong baseline over the default's seeds (figures/ten_seeds/),
    with the verdict of both noises and Holm's rule, and says where the LSTM leads out of domain."""
    import csv
    import statistics

    folder = REPO / "figures" / "ten_seeds"

    def rows(name):
        with open(folder / name, newline="", encoding="utf-8") as file:
            return list(csv.DictReader(file))

    runs = rows("default_seeds.csv")
    summary = {(r["split"], r["what"]): r for r in rows("default_seeds_summary.csv")}
    ood = {r["set"]: r for r in rows("ood_seeds_summary.csv")}
    mean = {m: statistics.fmean(float(r[f"{m}_test_acc"]) for r in runs) for m in ("ngram", "lstm", "combined")}
    lstm = summary[("test", "LSTM minus n-gram baseline (points)")]
    verdict = "beyond noise" if lstm["beyond_noise"] == "yes" else "within noise"
    words = {3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten"}
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    summary_cell = next("".join(c["source"]) for c in cells if "".join(c["source"]).startswith("## Summary"))
    text = " ".join(summary_cell.split())
    assert (f"Over {words[len(runs)]} full-data seeds (`research_record.ipynb`, section 10), IMDB test accuracy: "
            f"n-grams "
            f"{mean['ngram']:.4f}, fitted in minutes, against the LSTM's {mean['lstm']:.4f} ({verdict} of seeds and "
            f"test set); the two "
            f"combined {mean['combined']:.4f}.") in text
    leads = [float(ood[k]["lstm_minus_ngram_points"]) for k in ("amazon", "yelp")]
    assert f"the LSTM leads the n-grams by {min(leads):.0f} to {max(leads):.0f} points" in text


def test_the_routes_two_live_runs_take_the_seconds_route_times_csv_measured():
    """The route's "Run all" times are the last measurement of sweeps/time_route.sh (pinned stack)."""
    with open(REPO / "figures" / "route_times.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["stack"] == "pinned"]
    latest = {r["run"]: r["seconds"] for r in rows}  # the later rows of each run win
    first_cell = "".join(json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"][0]["source"])
    route = " ".join(first_cell[first_cell.index("**The 50-minute route.**"):].split())
    live = latest["class_live"]
    assert f'"Run all" on the first (the route\'s timings, `figures/route_times.csv`: {live} s on two cores)' in route
    assert f'then on the second ({latest["class_trained"]} s)' in route
