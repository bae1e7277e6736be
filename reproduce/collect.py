"""Collect the evaluation records and pretraining logs into the paper's tables and plots.

    python reproduce/collect.py [--runs runs] [--results results] [--out reproduce/out]

Reads every JSON record in --results (written by eval_knn.py, eval_linear.py, finetune.py and
semisup.py through records.write_result) and every --runs/<run>/log.jsonl written by pretrain.py.
Writes, into --out:
  tableN.md / tableN.csv   the paper's layout, "ours" beside "paper" for each column; a cell we did
                           not get is "—" (MISSING), a row we do not reproduce (other papers' methods)
                           is "n/a" (NOT_RUN); a row we add (Table 1: rhoBYOL with iBoot's
                           augmentation) has "not in paper" (NOT_IN_PAPER) as its paper cells. The
                           last column is the list the row's run was pretrained on (file, sha256,
                           videos found of those listed, skipped); a table whose rows were pretrained
                           on different lists says so under it
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

from plan import CONVERGENCE_LABELS, TABLES, Pretraining, table_rows

HERE = os.path.dirname(os.path.abspath(__file__))
MISSING = "—"
NOT_RUN = "n/a"
NOT_IN_PAPER = "not in paper"
DATA_COLUMN = "pretraining data"


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
    reduced to the record with split all/mean when there is one, else to their mean; records of one
    evaluation on different data sets (a smoke run's beside a real one's) stop it."""
    records = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        rec = _read_json(path)
        run = str(rec.get("run", ""))
        if "__" not in run or "value" not in rec:
            continue  # a record not written by reproduce/ (no "<run>__<eval>" name)
        name, ev = run.rsplit("__", 1)
        records.append(dict(name=name, eval=ev, split=str(rec.get("split", "")), metric=rec.get("metric", ""),
                            dataset=str(rec.get("dataset", "")), path=path, value=float(rec["value"])))
    out = {}
    if not records:
        return out
    df = pd.DataFrame(records)
    df = df[df.metric.map(_is_top1)]
    for (name, ev), g in df.groupby(["name", "eval"]):
        if g.dataset.nunique() > 1:
            raise ValueError(f"{results_dir} holds records of {name}__{ev} on {g.dataset.nunique()} data sets "
                             f"({', '.join(sorted(g.dataset.unique()))}; e.g. {g.path.iloc[0]}): one evaluation, "
                             f"one data set; keep smoke and real results in different --results folders")
        summary = g[g.split.str.lower().isin(["all", "mean", "avg", "average"])]
        out[(name, ev)] = float((summary if len(summary) else g).value.mean())
    return out


def pretraining_data(runs_dir, run):
    """What a row's pretraining run was trained on: its config.json "data" train entry (list, sha256,
    root, videos listed and found) with the videos its last epoch skipped (log.jsonl); None for published
    weights and for runs not started."""
    if not isinstance(run, Pretraining):
        return None
    folder = os.path.join(runs_dir, run.name)
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        return None
    seen = _read_json(config).get("data", {}).get("train")
    if seen and os.path.isfile(os.path.join(folder, "log.jsonl")):
        epochs = [r for r in read_records(os.path.join(folder, "log.jsonl")) if r.get("kind") == "epoch"]
        seen = dict(seen, skipped=epochs[-1].get("skipped_videos") if epochs else None)
    return seen


def describe_data(seen):
    """One cell: list file, short sha256, videos found of those listed, skipped."""
    if not seen:
        return MISSING
    name = os.path.basename(seen.get("list") or "") or f"{seen.get('data_root')} (listing)"
    skipped = "" if seen.get("skipped") is None else f", {seen['skipped']} skipped"
    return f"{name} {str(seen.get('sha256'))[:8]} ({seen.get('found')}/{seen.get('listed')} found{skipped})"


def data_note(df, number):
    """A line when the rows of a table were pretrained on different lists (by sha256), else ""."""
    spec = TABLES[number]
    lists = {}
    for _, row in df.iterrows():
        cell = row[DATA_COLUMN]
        if cell not in (MISSING, NOT_RUN):
            lists.setdefault(cell.split(" (")[0], []).append(" / ".join(str(row[c]) for c in spec["labels"]))
    if len(lists) < 2:
        return ""
    return ("**Rows pretrained on different lists:** " +
            "; ".join(f"{name} ({', '.join(rows)})" for name, rows in lists.items()) + ".")


def build_table(number, results, paper, runs_dir=None):
    """The table as a DataFrame in the paper's layout: label columns, then '<col> ours', '<col> paper',
    then the list each row's run was pretrained on (DATA_COLUMN; read from runs_dir)."""
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
        row[DATA_COLUMN] = NOT_RUN if run is None else describe_data(runs_dir and pretraining_data(runs_dir, run))
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(df, title, legend=None, note=""):
    header = "| " + " | ".join(df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    legend = legend or (f"_ours beside the paper's; {MISSING}: not run yet or failed; {NOT_RUN}: not reproduced "
                        f"here; {NOT_IN_PAPER}: a row we add; {DATA_COLUMN}: the list file, its sha256, the videos "
                        f"found of those listed and skipped in the last epoch._")
    return "\n".join([f"### {title}", "", header, rule, *body, "", legend, ""] + ([note, ""] if note else []))


def _number(text):
    m = re.match(r"^\s*(\d+(?:\.\d+)?)", str(text))
    return float(m.group(1)) if m else None


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path, **kwargs):
    fig.tight_layout()
    fig.savefig(path, dpi=110, **kwargs)
    _pyplot().close(fig)


def plot_table(df, number, path):
    """Grouped bars, ours against the paper, one panel per column; rows we do not reproduce are left out."""
    plt = _pyplot()
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
        for offset, values, text in ((-0.2, ours, "missing"), (0.2, paper, "no number")):
            for i, v in zip(x, values):  # no bar is not a bar of 0: say why
                if v is None:
                    ax.text(i + offset, 1, text, rotation=90, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(x))
        ax.set_xticklabels([labels[i] for i in keep], rotation=30, ha="right", fontsize=7)
        ax.set_title(column)
        ax.set_ylabel("top-1 (%)")
        ax.set_ylim(0, 100)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Table {number}: {spec['title']}", fontsize=10)
    _save(fig, path)


def read_log(run_dir):
    """Per-iteration records of one pretraining run as a DataFrame with an 'epochs' x coordinate."""
    df = pd.DataFrame(read_records(os.path.join(run_dir, "log.jsonl")))
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
    plt = _pyplot()
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
    _save(fig, path, bbox_inches="tight")
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
    plt = _pyplot()
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
    _save(fig, path)
    return len(curves)


# ----------------------------------------------------------------------------------------------
# reproduce/mini.sh: iBoot against rhoBYOL at CPU scale, mean ± std over seeds
# ----------------------------------------------------------------------------------------------

MINI_LABELS = {"iboot": "iBoot", "rhobyol": "ρBYOL"}


def _read_json(path):
    """A record or config.json; one that does not parse stops collect.py, naming it."""
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a JSON record ({e})") from e


def read_records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_mini_runs(folder):
    """{(method, seed): {"epochs": DataFrame of the init and epoch records, "knn": the closing k-NN
    record or None, "linear": top-1 or None}} of the <method>_s<seed> runs in folder; a run without its
    DONE marker (unfinished) stops it rather than enter the means."""
    runs = {}
    for log in sorted(glob.glob(os.path.join(folder, "*_s*", "log.jsonl"))):
        name = os.path.basename(os.path.dirname(log))
        if not os.path.isfile(os.path.join(folder, name, "DONE")):
            raise ValueError(f"{os.path.join(folder, name)} has no DONE marker: an unfinished run; finish it "
                             f"(reproduce/mini.sh with its --seeds) or move it out of {folder}")
        method, seed = name.rsplit("_s", 1)
        recs = read_records(log)
        epochs = pd.DataFrame([r for r in recs if r.get("kind") in ("init", "epoch")])
        if epochs.empty:
            continue
        epochs = epochs.assign(minutes=epochs.get("seconds", pd.Series(0.0, index=epochs.index)).fillna(0).cumsum() / 60)
        knn = [r for r in recs if r.get("kind") == "knn"]
        linear = glob.glob(os.path.join(folder, "results", f"mini_{name}__linear*.json"))
        if len(linear) > 1:
            raise ValueError(f"{len(linear)} linear-probe records of {name} in {folder}/results: {', '.join(linear)}")
        runs[(method, int(seed))] = dict(epochs=epochs, knn=knn[-1] if knn else None,
                                         linear=_read_json(linear[0])["value"] if linear else None)
    return runs


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return MISSING
    s = pd.Series(values, dtype=float)
    return f"{s.mean():.1f} ± {s.std(ddof=1) if len(s) > 1 else 0.0:.1f}"


def reference_values(runs, key):
    """The closing k-NN records' `key` ("teacher", "random_init"), one per seed: the methods of one seed
    start from the same initial weights and see the same teacher, so they measured the same numbers."""
    by_seed = {seed: r["knn"][key] for (_, seed), r in sorted(runs.items()) if r["knn"] and key in r["knn"]}
    return list(by_seed.values())


def mini_table(runs):
    """One row per method and per reference (the teacher's frame features, random initialisation): k-NN
    top-1 after the last epoch (mean ± std over seeds), seeds, epochs, pretraining minutes, last loss,
    and the linear probe's top-1 when it ran."""
    rows, linear = [], any(r["linear"] is not None for r in runs.values())
    for method, group in _by_method(runs).items():
        last = [r["epochs"].iloc[-1] for _, r in group]
        row = {"method": MINI_LABELS.get(method, method), "k-NN top-1": _mean_std([x.get("knn_top1") for x in last]),
               "seeds": len(group), "epochs": int(max(x["epoch"] for x in last)),
               "minutes": f"{pd.Series([x['minutes'] for x in last]).mean():.1f}",
               "last loss": f"{pd.Series([x.get('loss') for x in last], dtype=float).mean():.3f}"}
        rows.append(dict(row, **({"linear top-1": _mean_std([r["linear"] for _, r in group])} if linear else {})))
    for key, label in (("teacher", "teacher (frame features)"), ("random_init", "random init")):
        values = reference_values(runs, key)
        if values:
            row = {"method": label, "k-NN top-1": _mean_std(values), "seeds": len(values), "epochs": 0, "minutes": "0.0",
                   "last loss": "-"}
            rows.append(dict(row, **({"linear top-1": "-"} if linear else {})))
    return pd.DataFrame(rows)


def _by_method(runs):
    """{method: [(seed, run), ...]} in MINI_LABELS' order."""
    order = list(MINI_LABELS)
    methods = sorted({m for m, _ in runs}, key=lambda m: order.index(m) if m in order else len(order))
    return {m: [(seed, r) for (mm, seed), r in sorted(runs.items()) if mm == m] for m in methods}


def plot_mini_knn(runs, path):
    """k-NN against epochs and against pretraining minutes: the mean over seeds, ± one std shaded, the
    teacher and random init as bands (mean ± std over the runs that measured them)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (method, group) in enumerate(_by_method(runs).items()):
        frames = [r["epochs"].set_index("epoch") for _, r in group if "knn_top1" in r["epochs"]]
        if not frames:
            continue
        knn = pd.concat([f["knn_top1"] for f in frames], axis=1)
        mean, std = knn.mean(axis=1), knn.std(axis=1, ddof=1).fillna(0)
        minutes = pd.concat([f["minutes"] for f in frames], axis=1).mean(axis=1).loc[mean.index]
        for ax, x in zip(axes, (mean.index, minutes)):
            ax.plot(x, mean, color=f"C{i}", label=f"{MINI_LABELS.get(method, method)} ({len(frames)} seeds)")
            ax.fill_between(x, mean - std, mean + std, color=f"C{i}", alpha=0.2)
    for key, label, colour in (("teacher", "teacher (frame features)", "C2"), ("random_init", "random init", "C7")):
        values = pd.Series(reference_values(runs, key), dtype=float)
        if len(values):
            half = max(values.std(ddof=1) if len(values) > 1 else 0.0, 0.3)  # a visible band for one value
            for ax in axes:
                ax.axhspan(values.mean() - half, values.mean() + half, color=colour, alpha=0.25, label=label)
    for ax, xlabel in zip(axes, ("pretraining epoch", "pretraining minutes (training steps only)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("k-NN top-1 (%), validation split")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _save(fig, path)


def plot_mini_monitors(runs, path):
    """The learning monitors against epochs, one line per run, coloured by method."""
    plt = _pyplot()
    keys = [("teacher_cos_centred", "student-teacher cosine, centred (iBoot)"),
            ("feat_std", "per-dimension std of the features (0: collapse)"), ("feat_rank", "effective rank")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, (key, title) in zip(axes, keys):
        for i, (method, group) in enumerate(_by_method(runs).items()):
            lines = [r["epochs"] for _, r in group if key in r["epochs"]]
            for n, df in enumerate(lines):
                ax.plot(df["epoch"], df[key], color=f"C{i}", alpha=0.8,
                        label=MINI_LABELS.get(method, method) if n == 0 else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("pretraining epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    _save(fig, path)


def collect_mini(folder, out, plots=True):
    runs = read_mini_runs(folder)
    if not runs:
        raise FileNotFoundError(f"--mini {folder}: no <method>_s<seed>/log.jsonl runs there (run reproduce/mini.sh)")
    df = mini_table(runs)
    os.makedirs(out, exist_ok=True)
    df.to_csv(os.path.join(out, "mini.csv"), index=False)
    views = next((r["knn"]["views"] for r in runs.values() if r["knn"]), "k=20")
    md = to_markdown(df, f"iBoot vs ρBYOL at CPU scale: {folder}",
                     legend=f"_k-NN top-1 ({views}) of the validation split after the last epoch, mean ± std over "
                            f"seeds; minutes: training steps only, on this machine._")
    with open(os.path.join(out, "mini.md"), "w") as f:
        f.write(md)
    if plots:
        plot_mini_knn(runs, os.path.join(out, "mini.png"))
        plot_mini_monitors(runs, os.path.join(out, "mini_monitors.png"))
    print(f"{len(runs)} runs from {folder} -> {out}/mini.md, mini.csv" + (", mini.png, mini_monitors.png" if plots else ""))
    print(md)
    return df


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default=os.environ.get("RUNS", "runs"), help="pretraining runs (log.jsonl)")
    p.add_argument("--results", default=os.environ.get("RESULTS", "results"), help="evaluation JSON records")
    p.add_argument("--out", default=os.path.join(HERE, "out"), help="where tables and figures go")
    p.add_argument("--paper", default=os.path.join(HERE, "paper_numbers.csv"), help="the paper's numbers")
    p.add_argument("--tables", default="all", help="comma-separated table numbers, or 'all'")
    p.add_argument("--no_plots", action="store_true")
    p.add_argument("--mini", default=None, help="a reproduce/mini.sh folder: write mini.md, mini.csv, mini.png instead")
    args = p.parse_args(argv)
    if args.mini:
        return collect_mini(args.mini, args.out, plots=not args.no_plots)
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
        df = build_table(number, results, paper, args.runs)
        stem = os.path.join(args.out, f"table{number}")
        df.to_csv(stem + ".csv", index=False)
        note = data_note(df, number)
        md = to_markdown(df, f"Table {number}: {TABLES[number]['title']}", note=note)
        with open(stem + ".md", "w") as f:
            f.write(md)
        ours = df[[c for c in df.columns if c.endswith(" ours")]].to_numpy().ravel()
        wanted = int((ours != NOT_RUN).sum())
        filled = wanted - int((ours == MISSING).sum())
        print(f"table {number}: {filled}/{wanted} of our cells filled -> {stem}.md" + (f"\n  {note}" if note else ""))
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
