"""Write docs/accuracy.md from benchmarks/results/ (`atomdd.report.page.accuracy_page`): run it after
adding results; tests/test_docs.py fails while the page and the results disagree."""

from pathlib import Path

from atomdd.report.page import ACCURACY_PAGE, accuracy_page

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    (ROOT / ACCURACY_PAGE).write_text(accuracy_page(ROOT))
    print(f"wrote {ACCURACY_PAGE}")
