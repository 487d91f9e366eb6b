"""The docs' accuracy page is generated from benchmarks/results/, not typed: regenerating it changes
nothing. After adding results: python benchmarks/accuracy_page.py."""

from pathlib import Path

from atomdd.report.page import ACCURACY_PAGE, accuracy_page

ROOT = Path(__file__).resolve().parents[1]


def test_the_accuracy_page_is_what_the_results_generate():
    page = ROOT / ACCURACY_PAGE
    assert page.read_text() == accuracy_page(ROOT), (
        f"{ACCURACY_PAGE} differs from what benchmarks/results/ generates: "
        "run python benchmarks/accuracy_page.py (never edit the page by hand)"
    )
