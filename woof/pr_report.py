"""What a pull request changes in the pipeline's results, as Markdown for a PR comment:
`dvc metrics diff`, `dvc params diff` and the changed plots, against a base revision.

    python -m woof.pr_report --base main --out pr-report.md     # figures in pr-report_plots/

Where the base's plots come from: metrics and CSV plots are git-tracked (`cache: false`), so
`git show BASE:path` has them and a changed CSV is redrawn base-vs-PR with woof.report's code.
PNG figures are DVC-cached, not in git: whether one changed is read from its md5 in the base's
dvc.lock, and only the PR's version is shown, so neither the base's DVC cache nor a remote is needed.
"""
import argparse
import hashlib
import io
import json
import subprocess
from pathlib import Path

import pandas as pd
import yaml

from woof.io import atomic_path
from woof.sweep import dvc


def _git_show(rev, path, cwd=None):
    """A file's bytes at a git revision, None when git does not track it there."""
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=cwd, capture_output=True)
    return proc.stdout if proc.returncode == 0 else None


def _lock_md5(lock_bytes):
    """{output path: md5} from a dvc.lock (every output of every stage, cached or not)."""
    stages = (yaml.safe_load(lock_bytes) or {}).get("stages", {}) if lock_bytes else {}
    return {o["path"]: o.get("md5") for s in stages.values() for o in s.get("outs", [])}


def _md5(data):
    return None if data is None else hashlib.md5(data).hexdigest()  # what DVC 3 records for a file


def changed_plots(base, plots_dir="plots", cwd=None):
    """[(path, "added" | "removed" | "changed", base bytes or None, new bytes or None)].

    Base bytes are None for DVC-cached files (PNGs): their change is judged by the md5 alone."""
    root = Path(cwd or ".")
    base_lock = _lock_md5(_git_show(base, "dvc.lock", cwd))
    at_base = subprocess.run(["git", "ls-tree", "-r", "--name-only", base, "--", plots_dir], cwd=cwd,
                             capture_output=True, text=True).stdout.split()
    here = [p.relative_to(root).as_posix() for p in (root / plots_dir).rglob("*") if p.is_file()]
    paths = {p for p in [*here, *at_base, *base_lock] if Path(p).is_relative_to(plots_dir)
             and not Path(p).name.startswith(".")}  # not DVC's plots/.gitignore
    out = []
    for path in sorted(paths):
        new = (root / path).read_bytes() if (root / path).is_file() else None
        old = _git_show(base, path, cwd)
        old_md5 = _md5(old) if old is not None else base_lock.get(path)
        if old_md5 == _md5(new):
            continue
        state = "added" if old_md5 is None else "removed" if new is None else "changed"
        out.append((path, state, old, new))
    return out


def _short(rev):
    return rev[:8] if len(rev) == 40 and all(c in "0123456789abcdef" for c in rev) else rev


def render_plot(path, old, new, base, out_dir):
    """A PNG for one changed plot, with the project's plotting code; None if there is none."""
    from woof import report
    name = Path(path).name
    out = Path(out_dir) / (Path(path).stem + ".png")
    if name.endswith(".png"):
        if new is None:
            return None
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(new)  # already a figure made by the pipeline
        return out
    frames = [(label, pd.read_csv(io.BytesIO(b))) for label, b in ((_short(base), old), ("this PR", new))
              if b is not None]
    if not frames:
        return None
    if name.startswith("train_") and name.endswith(".csv"):  # learning curves
        method = name[len("train_"):-len(".csv")]
        report.plot_curves(pd.concat([f.assign(method=f"{method} ({label})") for label, f in frames],
                                     ignore_index=True), out)
        return out
    if name == "per_class.csv":
        report.plot_per_class(pd.concat([f.assign(method=f.method.map(lambda m: report.LABELS.get(m, m))
                                                  + f" ({label})") for label, f in frames],
                                        ignore_index=True), out)
        return out
    return None  # e.g. prediction lists: a table in `dvc plots diff` is more useful than a figure


def pr_report(base="main", out="pr-report.md", plots_dir="plots", cwd=None):
    """Write Markdown of `dvc metrics diff`, `dvc params diff` and the changed plots; return it."""
    metrics_md = dvc("metrics", "diff", base, "--md", cwd=cwd).strip()
    metrics = json.loads(dvc("metrics", "diff", base, "--json", cwd=cwd) or "{}")
    params_md = dvc("params", "diff", base, "--md", cwd=cwd).strip()
    # With nothing changed dvc still prints an empty table header: say so in words instead.
    if not any(metrics.values()):
        metrics_md = ""
    if not any(json.loads(dvc("params", "diff", base, "--json", cwd=cwd) or "{}").values()):
        params_md = ""
    lines = [f"## DVC report: this branch vs `{_short(base)}`", ""]
    headline = []
    for file, entries in metrics.items():
        for key, v in entries.items():
            if "top1" in key and isinstance(v.get("old"), (int, float)) and isinstance(v.get("new"), (int, float)):
                headline.append(f"- **{key}** ({file}): {100 * v['old']:.2f} % -> {100 * v['new']:.2f} % "
                                f"({100 * (v['new'] - v['old']):+.2f} points)")
    if headline:
        lines += headline + [""]
    lines += ["### Metrics", "", metrics_md or "No metric changed.", "",
              "### Params", "", params_md or "No parameter changed.", ""]
    out = Path(out)
    fig_dir = out.parent / (out.stem + "_plots")
    plots = changed_plots(base, plots_dir, cwd)
    lines += ["### Changed plots", ""]
    if not plots:
        lines += ["No plot changed."]
    for path, state, old, new in plots:
        png = render_plot(path, old, new, base, Path(cwd or ".") / fig_dir)
        if png is not None:
            # Linked relative to the Markdown file, next to which the folder lies.
            lines += [f"- `{path}` ({state})", "", f"  ![{path}]({fig_dir.name}/{png.name})", ""]
        else:
            lines += [f"- `{path}` ({state})"]
    with atomic_path(Path(cwd or ".") / out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return (Path(cwd or ".") / out).read_text()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m woof.pr_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="main", help="git revision to compare with")
    ap.add_argument("--out", default="pr-report.md")
    ap.add_argument("--plots-dir", default="plots")
    args = ap.parse_args(argv)
    print(pr_report(args.base, args.out, args.plots_dir))


if __name__ == "__main__":
    main()
