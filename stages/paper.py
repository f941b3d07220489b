"""paper stage: report.md (the GitHub view) and report.pdf (Typst) from one document model built
from metrics/ and plots/ (logic in woof/paper.py)."""
from woof import paper
from woof.io import load_params
from woof.errors import run_stage


def main():
    doc = paper.build("metrics", "plots", load_params("params.yaml"))
    paper.write(doc, "report.md", "report.pdf", ".")
    print(f"report.md and report.pdf: {sum(isinstance(b, paper.Figure) for b in doc.blocks)} figures, "
          f"{sum(isinstance(b, paper.Table) for b in doc.blocks)} tables, {len(paper.cited(doc))} references")


if __name__ == "__main__":
    run_stage(main)
