"""Collect the evaluation records and pretraining logs into the paper's tables and plots.

    python reproduce/collect.py [--runs runs] [--results results] [--out reproduce/out]

Reads every JSON record in --results (written by eval_knn.py, eval_linear.py, finetune.py and
semisup.py through utils.write_result) and every --runs/<run>/log.jsonl written by pretrain.py.
Writes, into --out:
  tableN.md / tableN.csv   the paper's layout, "ours" beside "paper" for each column; a cell we did
                           not get is "—" (MISSING), a row we do not reproduce (other papers' methods)
                           is "n/a" (NOT_RUN); a row we add (Table 1: rhoBYOL with iBoot's
                           augmentation) has "not in paper" (NOT_IN_PAPER) as its paper cells
  tableN.png               one bar chart per table: ours against the paper, per column
  loss_curves.png          pretraining loss against epochs, every run found
  knn_vs_epochs.png        k-NN top-1 against pretraining epochs (iBoot and rhoBYOL: the paper's
                           faster-convergence claim, Section 4.3 / Table 6)

How a record reaches a cell: reproduce/plan.py names every evaluation run "<pretrain run>__<eval>"
(e.g. iboot_clip_vit_b16_slow_r50_k400_e100_b104__ucf_s1), and its TABLES say which run forms each
row and which evaluation each column shows; the paper's numbers come from paper_numbers.csv (table,
row, column, value, note) in this folder.
"""
import argparse
import glob
import json
import os
import re

import pandas as pd

from plan import CONVERGENCE_LABELS, TABLES, table_rows

HERE = os.path.dirname(os.path.abspath(__file__))
MISSING = "—"
NOT_RUN = "n/a"
NOT_IN_PAPER = "not in paper"


def load_paper(path=os.path.join(HERE, "paper_numbers.csv")):
    """{(table, row, column): text shown in the paper cell}."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"table", "row", "column", "value", "note"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return {(int(r.table), r.row, r.column): (r.value + (f" ({r.note})" if r.note else "")) for r in df.itertuples()}


def _is_top1(metric):
    m = str(metric).lower()
    return "top5" not in m and "top-5" not in m


def load_results(results_dir):
    """{(pretrain run, eval): value}. Several records of one evaluation (e.g. one per split) are
    reduced to the record with split all/mean when there is one, else to their mean."""
    records = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        with open(path) as f:
            try:
                rec = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not a JSON record ({e})") from e
        run = str(rec.get("run", ""))
        if "__" not in run or "value" not in rec:
            continue  # a record not written by reproduce/ (no "<run>__<eval>" name)
        name, ev = run.rsplit("__", 1)
        records.append(dict(name=name, eval=ev, split=str(rec.get("split", "")), metric=rec.get("metric", ""),
                            value=float(rec["value"])))
    out = {}
    if not records:
        return out
    df = pd.DataFrame(records)
    df = df[df.metric.map(_is_top1)]
    for (name, ev), g in df.groupby(["name", "eval"]):
        summary = g[g.split.str.lower().isin(["all", "mean", "avg", "average"])]
        out[(name, ev)] = float((summary if len(summary) else g).value.mean())
    return out


def build_table(number, results, paper):
    """The table as a DataFrame in the paper's layout: label columns, then '<col> ours', '<col> paper'."""
    spec = TABLES[number]
    rows = []
    for label, run, overrides, in_paper in table_rows(number):
        parts = label.split(" / ")
        if len(parts) != len(spec["labels"]):
            raise ValueError(f"table {number}: row '{label}' has {len(parts)} labels, expected {len(spec['labels'])}")
        row = dict(zip(spec["labels"], parts))
        for column, default_eval in spec["columns"].items():
            ev = overrides.get(column, default_eval)
            if run is None or ev is None:
                ours = NOT_RUN
            else:
                value = results.get((run.name, ev))
                ours = MISSING if value is None else f"{value:.1f}"
            row[f"{column} ours"] = ours
            row[f"{column} paper"] = paper.get((number, label, column), MISSING) if in_paper else NOT_IN_PAPER
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(df, title):
    header = "| " + " | ".join(df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    legend = (f"_ours beside the paper's; {MISSING}: not run yet or failed; {NOT_RUN}: not reproduced here; "
              f"{NOT_IN_PAPER}: a row we add._")
    return "\n".join([f"### {title}", "", header, rule, *body, "", legend, ""])


def _number(text):
    m = re.match(r"^\s*(\d+(?:\.\d+)?)", str(text))
    return float(m.group(1)) if m else None


def plot_table(df, number, path):
    """Grouped bars, ours against the paper, one panel per column; rows we do not reproduce are left out."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    spec = TABLES[number]
    labels = [" / ".join(str(r[c]) for c in spec["labels"]) for _, r in df.iterrows()]
    columns = list(spec["columns"])
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.8), squeeze=False)
    for ax, column in zip(axes[0], columns):
        keep = [i for i in range(len(df)) if df[f"{column} ours"].iloc[i] != NOT_RUN]
        ours = [_number(df[f"{column} ours"].iloc[i]) for i in keep]
        paper = [_number(df[f"{column} paper"].iloc[i]) for i in keep]
        x = range(len(keep))
        ax.bar([i - 0.2 for i in x], [v or 0 for v in ours], 0.4, label="ours", color="tab:blue")
        ax.bar([i + 0.2 for i in x], [v or 0 for v in paper], 0.4, label="paper", color="tab:gray")
        for i, v in zip(x, ours):
            if v is None:
                ax.text(i - 0.2, 1, "missing", rotation=90, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(x))
        ax.set_xticklabels([labels[i] for i in keep], rotation=30, ha="right", fontsize=7)
        ax.set_title(column)
        ax.set_ylabel("top-1 (%)")
        ax.set_ylim(0, 100)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Table {number}: {spec['title']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_log(run_dir):
    """Per-iteration records of one pretraining run as a DataFrame with an 'epochs' x coordinate."""
    path = os.path.join(run_dir, "log.jsonl")
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    df = pd.DataFrame(rows)
    if df.empty or "loss" not in df:
        return df
    if "kind" in df:  # the step records ("kind": "step"), not the epoch, test or k-NN ones
        df = df[df["kind"].isna() | (df["kind"] == "step")]
    df = df.dropna(subset=["loss", "epoch", "iter"])
    iters_per_epoch = df["iter"].max() + 1
    # The position at the END of the logged iteration, so a 1-iteration epoch still spans [e, e + 1].
    df = df.assign(epochs=df["epoch"] + (df["iter"] + 1) / iters_per_epoch)
    return df.drop_duplicates("step", keep="last").sort_values("step")


def plot_loss_curves(runs_dir, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(12, 5))
    n = 0
    colours = plt.get_cmap("tab20").colors
    for log in sorted(glob.glob(os.path.join(runs_dir, "*", "log.jsonl"))):
        df = read_log(os.path.dirname(log))
        if df.empty or "loss" not in df:
            continue
        name = os.path.basename(os.path.dirname(log))
        ax.plot(df["epochs"], df["loss"], "--" if name.startswith("rhobyol") else "-", color=colours[n % 20],
                marker="." if len(df) < 20 else None, lw=1, label=name)
        n += 1
    ax.set_xlabel("epoch")
    ax.set_ylabel("pretraining loss")
    ax.set_title(f"Pretraining loss ({n} runs)" if n else "Pretraining loss: no runs found")
    if n:
        # Outside the axes: with 19 runs a legend inside hides the curves. Loss scales differ by
        # design (a sum over teachers / clip pairs / the extra SSL term), so curves sit at 2, 4 or 8.
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return n


def knn_curves(results):
    """{run: [(epoch, k-NN top-1)]} from the knn_eNNNN evaluations of intermediate checkpoints."""
    curves = {}
    for (run, ev), value in results.items():
        m = re.fullmatch(r"knn_e(\d+)", ev)
        if m:
            curves.setdefault(run, []).append((int(m.group(1)), value))
    return {run: sorted(points) for run, points in curves.items()}


def plot_knn_vs_epochs(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curves = knn_curves(results)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for run, points in sorted(curves.items()):
        style = "-" if run.startswith("iboot") else "--"
        ax.plot(*zip(*points), style, marker="o", label=CONVERGENCE_LABELS.get(run, run))
    ax.set_xlabel("pretraining epoch")
    ax.set_ylabel("K400 k-NN top-1 (%)")
    ax.set_title("k-NN accuracy during pretraining: iBoot vs ρBYOL" if curves else "k-NN vs epochs: no records")
    if curves:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return len(curves)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default=os.environ.get("RUNS", "runs"), help="pretraining runs (log.jsonl)")
    p.add_argument("--results", default=os.environ.get("RESULTS", "results"), help="evaluation JSON records")
    p.add_argument("--out", default=os.path.join(HERE, "out"), help="where tables and figures go")
    p.add_argument("--paper", default=os.path.join(HERE, "paper_numbers.csv"), help="the paper's numbers")
    p.add_argument("--tables", default="all", help="comma-separated table numbers, or 'all'")
    p.add_argument("--no_plots", action="store_true")
    args = p.parse_args(argv)
    if not os.path.isdir(args.results):
        raise FileNotFoundError(f"--results {args.results}: no such folder (run a reproduce/tableN.sh first)")
    numbers = sorted(TABLES) if args.tables == "all" else [int(t) for t in args.tables.split(",")]
    unknown = [t for t in numbers if t not in TABLES]
    if unknown:
        raise ValueError(f"--tables: no table {unknown}; the paper has tables 1-11")
    os.makedirs(args.out, exist_ok=True)
    paper = load_paper(args.paper)
    results = load_results(args.results)
    print(f"{len(results)} evaluation results from {args.results}")
    for number in numbers:
        df = build_table(number, results, paper)
        stem = os.path.join(args.out, f"table{number}")
        df.to_csv(stem + ".csv", index=False)
        md = to_markdown(df, f"Table {number}: {TABLES[number]['title']}")
        with open(stem + ".md", "w") as f:
            f.write(md)
        ours = df[[c for c in df.columns if c.endswith(" ours")]].to_numpy().ravel()
        wanted = int((ours != NOT_RUN).sum())
        filled = wanted - int((ours == MISSING).sum())
        print(f"table {number}: {filled}/{wanted} of our cells filled -> {stem}.md")
        if not args.no_plots:
            plot_table(df, number, stem + ".png")
    if not args.no_plots:
        n = plot_loss_curves(args.runs, os.path.join(args.out, "loss_curves.png"))
        k = plot_knn_vs_epochs(results, os.path.join(args.out, "knn_vs_epochs.png"))
        print(f"plots: loss curves of {n} runs, k-NN vs epochs of {k} runs -> {args.out}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
