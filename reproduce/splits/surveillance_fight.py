"""Group-disjoint train/val split of the Surveillance Camera Fight set (deterministic).

    python reproduce/splits/surveillance_fight.py DATA_DIR [OUT_DIR]
    (DATA_DIR: the data set's folder, with videos.txt; OUT_DIR: reproduce/splits/surveillance_fight)

Groups = source videos. videos.txt lists a YouTube URL, then the clips cut from it ("fi001: 0.13.50 -
0.15.60"). Two corner cases, both resolved by merging (union-find), never by guessing:
- a clip listed under two URLs (nofi022 appears under IZjLv7alWTk and g0x9-0pOuhw): both URLs' clips
  become one group (the names cannot tell which source it is);
- clips not cut from YouTube: the last lines say "nofi062 - nofi076 : CamNet Dataset" and
  "nofi076 - nofi091 : Synopsis dataset". Those 30 clips (no URL of their own) form one group per
  dataset, and nofi076 (named in both ranges) joins the two into one group.
Every one of the 300 clips on disk must then belong to exactly one group (checked).
The split puts about 1/3 of the clips in val, with both classes close to 50/50 on each side: the best
of 20000 random group assignments (numpy seed 0) by |val - 100| + |val fight - 50| + |train fight - 100|,
ties broken by the first found. Writes train.csv, val.csv (path,label relative to DATA_DIR) and
groups.csv (clip, group id, split).
"""
import csv
import os
import re
import sys

import numpy as np

DATA = sys.argv[1] if len(sys.argv) > 1 else None
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "surveillance_fight")


def clips_on_disk():
    out = {}
    for label in ("fight", "noFight"):
        for fn in sorted(os.listdir(os.path.join(DATA, label))):
            if fn.endswith(".mp4"):
                out[fn[:-4]] = (f"{label}/{fn}", label)
    return out


def parse_groups(clips):
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a, b):
        parent[find(a)] = find(b)

    source = None
    for line in open(os.path.join(DATA, "videos.txt"), encoding="utf-8"):
        line = line.strip()
        if not line:
            continue
        if line.startswith("http"):
            source = "url:" + line
            find(source)
            continue
        m = re.fullmatch(r"((?:no)?fi)(\d+) - ((?:no)?fi)(\d+) : (.+)", line)
        if m:  # a range of clips from another data set
            ds = "dataset:" + m.group(5).strip()
            for i in range(int(m.group(2)), int(m.group(4)) + 1):
                union(f"{m.group(1)}{i:03d}", ds)
            continue
        m = re.fullmatch(r"((?:no)?fi\d+): [\d.]+ - [\d.]+", line)
        if not m:
            raise ValueError(f"videos.txt: unparsed line {line!r}")
        union(m.group(1), source)
    missing = [c for c in clips if c not in parent]
    if missing:
        raise ValueError(f"clips without a source: {missing}")
    groups = {}
    for c in clips:
        groups.setdefault(find(c), []).append(c)
    return sorted(groups.values(), key=lambda g: sorted(g)[0])


def main():
    if DATA is None:
        raise SystemExit("usage: python reproduce/splits/surveillance_fight.py DATA_DIR [OUT_DIR]")
    clips = clips_on_disk()
    groups = parse_groups(clips)
    n = len(clips)
    fights = np.array([sum(clips[c][1] == "fight" for c in g) for g in groups])
    sizes = np.array([len(g) for g in groups])
    rng = np.random.default_rng(0)
    best, best_cost = None, None
    for _ in range(20000):
        val = rng.random(len(groups)) < 1 / 3
        nv, fv = sizes[val].sum(), fights[val].sum()
        ft = fights[~val].sum()
        cost = abs(nv - n / 3) + abs(fv - nv / 2) + abs(ft - (n - nv) / 2)
        if best_cost is None or cost < best_cost:
            best, best_cost = val, cost
    os.makedirs(OUT, exist_ok=True)
    rows = {"train": [], "val": []}
    with open(os.path.join(OUT, "groups.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip", "group", "split"])
        for gi, (g, v) in enumerate(zip(groups, best)):
            for c in sorted(g):
                split = "val" if v else "train"
                rows[split].append(clips[c])
                w.writerow([c, gi, split])
    for split, r in rows.items():
        with open(os.path.join(OUT, f"{split}.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows(sorted(r))
    print(f"{len(groups)} source groups (largest {sizes.max()} clips, {int((sizes == 1).sum())} of one clip)")
    for split, r in rows.items():
        nf = sum(lab == "fight" for _, lab in r)
        print(f"{split}: {len(r)} clips ({nf} fight / {len(r) - nf} noFight) from "
              f"{int((best if split == 'val' else ~best).sum())} groups")


if __name__ == "__main__":
    main()
