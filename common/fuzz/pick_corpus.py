#!/usr/bin/env python3
"""Cap a fuzz corpus at LIMIT files for the repository.

`cargo fuzz cmin` keeps every input that adds a coverage feature (hundreds after ten minutes). This picks, from the
control file of a libFuzzer merge, at most LIMIT inputs greedily by new coverage edges (then new features, then
smaller size). Paths in the control file are relative to where the merge ran; run this from the same directory.

usage: pick_corpus.py CONTROL_FILE OUT_DIR LIMIT [--keep-seeds]
  --keep-seeds  take every input from fuzz/corpus/ first (hand-written seeds), then fill up greedily.
"""
import os
import shutil
import sys

control, out, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
keep_seeds = "--keep-seeds" in sys.argv[4:]
lines = open(control).read().split("\n")
count = int(lines[0])
files = lines[2 : 2 + count]
cov, ft = {}, {}
for line in lines[2 + count :]:
    parts = line.split()
    if parts and parts[0] == "COV":
        cov[int(parts[1])] = set(parts[2:])
    elif parts and parts[0] == "FT":
        ft[int(parts[1])] = set(parts[2:])
size = {i: os.path.getsize(files[i]) for i in cov}
chosen, covered, fcovered = [], set(), set()


def take(i):
    global covered, fcovered
    chosen.append(i)
    covered |= cov.pop(i)
    fcovered |= ft.get(i, set())


if keep_seeds:
    for i in [i for i in list(cov) if files[i].startswith("fuzz/corpus/")]:
        take(i)
while len(chosen) < limit and cov:
    best = max(cov, key=lambda i: (len(cov[i] - covered), len(ft.get(i, set()) - fcovered), -size[i]))
    if not cov[best] - covered and not ft.get(best, set()) - fcovered:
        break
    take(best)
print(f"picked {len(chosen)} files, {len(covered)} edges, {len(fcovered)} features")
os.makedirs(out, exist_ok=True)
for i in chosen:
    shutil.copyfile(files[i], os.path.join(out, os.path.basename(files[i])))
