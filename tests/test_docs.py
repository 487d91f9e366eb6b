"""The docs' accuracy page is generated from benchmarks/results/, not typed: regenerating it changes
nothing. After adding results: python benchmarks/accuracy_page.py."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from accuracy_page import PAGE, accuracy_page  # noqa: E402  (the generator is the repository's)


def test_the_accuracy_page_is_what_the_results_generate():
    page = ROOT / PAGE
    assert page.read_text() == accuracy_page(ROOT), (
        f"{PAGE} differs from what benchmarks/results/ generates: "
        "run python benchmarks/accuracy_page.py (never edit the page by hand)"
    )
