#!/usr/bin/env bash
# make_corpus.sh — a mixed corpus from Debian packages, three sources of 1 MB each:
#   english.txt  the license texts of base-files (/usr/share/common-licenses), then the
#                copyright files of the installed packages (/usr/share/doc/*/copyright)
#   python.txt   Python's standard library (libpython3.11-minimal/-stdlib: /usr/lib/python3*/*.py)
#   c.txt        C headers of the C library (libc6-dev: /usr/include/*.h)
# Files are taken in sorted path order, so the corpus is the same on machines with the same
# packages. usage: bench/make_corpus.sh OUTDIR
set -eu  # not pipefail: head closing the pipe early is expected
OUT=${1:?usage: make_corpus.sh OUTDIR}
mkdir -p "$OUT"
SIZE=1000000
{ find /usr/share/common-licenses -maxdepth 1 -type f | sort | xargs cat 2>/dev/null
  find /usr/share/doc -mindepth 2 -maxdepth 2 -name copyright -type f | sort | xargs cat 2>/dev/null; } | head -c $SIZE > "$OUT/english.txt"
find /usr/lib/python3* -maxdepth 1 -name '*.py' -type f | sort | xargs cat 2>/dev/null | head -c $SIZE > "$OUT/python.txt"
find /usr/include -maxdepth 1 -name '*.h' -type f | sort | xargs cat 2>/dev/null | head -c $SIZE > "$OUT/c.txt"
wc -c "$OUT"/english.txt "$OUT"/python.txt "$OUT"/c.txt
# train / validation split of each source: the first 90% and the last 10%
for f in english python c; do
    head -c $((SIZE * 9 / 10)) "$OUT/$f.txt" > "$OUT/$f.train.txt"
    tail -c $((SIZE / 10)) "$OUT/$f.txt" > "$OUT/$f.val.txt"
done
