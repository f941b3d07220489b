"""paper stage: report.md (the GitHub view) and report.pdf (Typst) from the compare stage's results
(metrics/compare.json) and figures, README.md's results block and the two models' cards
(models/woof-{full,lora}.md). Words in woof/paper.py,
typesetting in woof/document.py; nothing here trains or computes."""
from woof import cards, document, paper
from woof.errors import run_stage
from woof.io import load_params


def main():
    doc = paper.build("metrics/compare.json", "plots", load_params("params.yaml"))
    document.write(doc, "report.md", "report.pdf", ".")
    readme = paper.write_readme("README.md", "metrics/compare.json")
    cards.write_cards("metrics/compare.json", load_params("params.yaml"), "models")
    print(f"report.md and report.pdf: {sum(isinstance(b, document.Figure) for b in doc.blocks)} figures, "
          f"{sum(isinstance(b, document.Table) for b in doc.blocks)} tables, {len(document.cited(doc))} references"
          + ("; README.md's results block rewritten" if readme else "") + "; model cards in models/")


if __name__ == "__main__":
    run_stage(main)
