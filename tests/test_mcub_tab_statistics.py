"""The Benchmark tab's handlers with intervals, paired tests, retention and the unsupervised λ/μ choice."""
from __future__ import annotations

import pytest

from composition.config import CompositionConfig
from composition.errors import CompositionError
from studio import handlers
from studio.mcub_tab import SOURCES, load_items, run_mcub, run_retention, run_search, tune_items
from tests.test_studio_handlers import make_studio

FOUR = ("image", "audio", "video", "point")


@pytest.fixture(scope="module")
def studio():
    return make_studio(modalities=FOUR)


def test_accuracy_shows_intervals_pairs_and_what_each_variant_keeps(studio):
    items = load_items(SOURCES[0], None, 2)
    settings = CompositionConfig(experts=studio.expert_names, variants=["DAMC", "expert:image"])
    fig, summary, result = run_mcub(studio, settings, items, retention=True)
    stats = result["statistics"]
    assert "| variant | accuracy | 95 % interval | right / items | keeps of the base's text answers |" in summary
    assert "| DAMC | expert:image |" in summary  # the pair, on the same items
    low, high = stats["variants"]["DAMC"]["ci95"]
    bar = fig.data[0]
    assert bar.error_y.array[0] == pytest.approx(100 * (high - stats["variants"]["DAMC"]["accuracy"]))
    kept = result["retention"]["variants"]["DAMC"]
    assert f"({kept['kept']}/{kept['base_right']})" in summary or kept["retention"] is None


def test_retention_table_against_the_base(studio):
    settings = CompositionConfig(experts=studio.expert_names, variants=["DAMC"])
    table, result = run_retention(studio, settings)
    assert list(result["variants"]) == ["DAMC"] and "| DAMC |" in table and "The base alone answers" in table


def test_search_without_labels_reports_beside_the_labelled_choice_and_fills_the_sliders(studio):
    validation, test = tune_items(SOURCES[0], None, 2, fraction=0.5)
    settings = handlers.default_settings(studio)
    summary, result, applied = run_search(studio, settings, validation, test, [0.5, 1.0, 1.5], [1.0])
    assert "Without labels (AdaMMS" in summary and "| paper default | labelled tune |" in summary
    assert result["unsupervised"] == {**result["unsupervised"], "lambda_scale": 1.0, "mu": 1.0}  # the one interior cell
    assert applied.lambdas == {n: pytest.approx(0.25) for n in FOUR}
    with pytest.raises(CompositionError, match="apply="):
        run_search(studio, settings, validation, test, [0.5, 1.0, 1.5], [1.0], apply="both")
