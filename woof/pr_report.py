"""What a pull request changes in the pipeline's results, as Markdown for a PR comment:
`dvc metrics diff --md`, `dvc params diff --md` and the figures of the changed plots, against a
base revision.

    python -m woof.pr_report --base main --out pr-report.md     # figures in pr-report_plots/

The workflow (.github/workflows/pr-report.yml) posts it with `cml comment update`, which uploads
the local images it links, so the figures show in the comment.

Which plots changed: metrics and CSV plots are git-tracked (`cache: false`), so `git show
BASE:path` has them; PNG figures are DVC-cached, not in git, and are compared by their md5 in the
base's dvc.lock. Neither needs the base's DVC cache or a remote.

The figures are DVC's, from `dvc plots diff BASE --json`, where it can give them:
  * a CSV is drawn by the plots of dvc.yaml over it (Loss and Accuracy over plots/train_*.csv,
    the confusion matrices over plots/predictions/test_*.csv), else by its own plot: a Vega-Lite
    spec with the base's and this branch's data overlaid. A comment needs a PNG: the spec is
    rendered with vl-convert-python where it is installed (the workflow installs it);
  * an image plot comes once per revision DVC can read: this branch's always, the base's where
    its DVC cache is at hand (a local checkout; in CI the base's run shares this cache).
Where DVC gives no figure (no vl-convert, a file no plot draws, dvc failing), learning curves and
per-class accuracies are redrawn base-vs-PR with woof.report's code and a PNG is shown as it is.
"""
import argparse
import hashlib
import io
import json
import re
import shutil
import subprocess
import tempfile
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


def dvc_plots(base, out_dir, cwd=None):
    """`dvc plots diff BASE --json -o out_dir` (images land in out_dir): {plot id: [entry]}.

    Each entry is {"type": "vega", "revisions", "content": Vega-Lite spec} or, per revision DVC
    could read, {"type": "image", "revisions": [rev], "url": file}. {} where dvc fails."""
    try:
        return json.loads(dvc("plots", "diff", base, "--json", "-o", str(out_dir), cwd=cwd) or "{}").get("data", {})
    except (RuntimeError, ValueError):
        return {}


def plot_ids(path, data, cwd=None):
    """The DVC plots that draw a file: dvc.yaml's top-level plots over it (as Loss over
    plots/train_*.csv, where the file's own default plot would draw its last column, lr), else its own."""
    ids = []
    for p in (yaml.safe_load((Path(cwd or ".") / "dvc.yaml").read_text()) or {}).get("plots", []):
        pid, cfg = (p, None) if isinstance(p, str) else next(iter(p.items()))
        y = (cfg or {}).get("y")
        if path in (set(y) if isinstance(y, dict) else {pid}) and pid in data:
            ids.append(pid)
    return ids or ([path] if path in data else [])


def _vega_png(spec, out):
    """A Vega-Lite spec as a PNG with vl-convert-python; None where it is not installed."""
    try:
        import vl_convert
    except ImportError:
        return None
    # DVC calls the branch "workspace"; in a pull request it is the PR.
    spec = json.loads(json.dumps(spec).replace('"workspace"', '"this PR"'))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(vl_convert.vegalite_to_png(spec, scale=2))
    return out


def dvc_figures(ids, data, out_dir):
    """[(title, png)]: DVC's figures of these plots, the base's before this branch's."""
    out = []
    for pid in ids:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", pid)
        for e in sorted(data[pid], key=lambda e: e.get("revisions") == ["workspace"]):
            if e["type"] == "image" and Path(e.get("url", "")).is_file():
                pr = e["revisions"] == ["workspace"]
                png = Path(out_dir) / f"{slug}_{'pr' if pr else 'base'}.png"
                png.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(e["url"], png)
                out.append((f"{pid} ({'this PR' if pr else _short(e['revisions'][0])})", png))
            elif e["type"] == "vega" and (png := _vega_png(e["content"], Path(out_dir) / f"{slug}.png")):
                out.append((pid, png))
    return out


def render_plot(path, old, new, base, out_dir):
    """Where DVC gives no figure: a PNG for one changed plot with the project's plotting code; None if there is none."""
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
    return None  # e.g. validation prediction lists: no figure says more than the metrics diff


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
    fig_dir = Path(cwd or ".") / out.parent / (out.stem + "_plots")
    plots = changed_plots(base, plots_dir, cwd)
    lines += ["### Changed plots", ""]
    if not plots:
        lines += ["No plot changed."]
    shutil.rmtree(fig_dir, ignore_errors=True)  # only this report's figures (the CI artifact)
    shown = []  # DVC plots drawn so far: Loss draws train_full.csv and train_lora.csv at once
    with tempfile.TemporaryDirectory(prefix="pr-report-") as tmp:
        data = dvc_plots(base, tmp, cwd) if plots else {}
        for path, state, old, new in plots:
            ids = plot_ids(path, data, cwd)
            before = [i for i in ids if i in shown]
            figs = dvc_figures([i for i in ids if i not in shown], data, fig_dir)
            shown += [i for i in ids if i not in shown] if figs else []
            if not figs and not before:
                png = render_plot(path, old, new, base, fig_dir)
                figs = [(path, png)] if png is not None else []
            lines += [f"- `{path}` ({state})", ""]
            # Linked relative to the Markdown file, next to which the folder lies.
            lines += [f"  ![{title}]({fig_dir.name}/{png.name})" for title, png in figs]
            lines += [f"  Drawn in {', '.join(before)} above."] if before else []
            lines += [""]
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
