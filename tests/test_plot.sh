#!/usr/bin/env bash
# test_plot.sh — `moe plot`: the figures of a real run exist and are PNGs; a synthetic run whose
# layer sends everything to expert 0 draws expert 0's row (bottom quarter of the plot) in the
# saturated colour and the other rows black, read back pixel by pixel (tests/plot/check_png.py);
# a dense run gets only loss.png; a run in progress (torn last line) plots; bad input and a
# missing gnuplot get their messages.
# usage: test_plot.sh path/to/moe
set -u
MOE=${1:?usage: test_plot.sh path/to/moe}
SRC=$(cd "$(dirname "$0")/.." && pwd)
source "$SRC/tests/lib.sh"
is_png() { checks=$((checks + 1)); [ "$(head -c 8 "$1" 2>/dev/null | od -An -tx1 | tr -d ' ')" = 89504e470d0a1a0a ] || fail "$1 is not a PNG"; }
cat "$SRC"/src/*/*.c > "$W/corpus.txt"
T=(--data "$W/corpus.txt" --steps 8 --set seq_len=16 --set n_embd=16 --set n_layer=3 --set n_head=2 --set moe_layers=0,2
   --set n_experts=4 --set expert_hidden=16 --set batch_size=4 --set eval_every=4 --set threads=2 --quiet)
"$MOE" train "${T[@]}" --out "$W/run" || fail "train"
"$MOE" plot --run "$W/run" --out "$W/figs" > "$W/plot.out" || fail "plot: $(cat "$W/plot.out")"
for f in loss balance load_layer0 load_layer2; do is_png "$W/figs/$f.png"; done
checks=$((checks + 1))
[ -e "$W/figs/load_layer1.png" ] && fail "a heatmap for dense layer 1"
"$MOE" train "${T[@]}" --out "$W/dense" --set moe_layers=none || fail "train dense"
"$MOE" plot --run "$W/dense" > /dev/null || fail "plot dense"
is_png "$W/dense/loss.png"
checks=$((checks + 1))
[ -e "$W/dense/balance.png" ] && fail "balance.png for a dense run"

# what the heatmap shows: layer 1 routes every assignment to expert 0 of 4, for 10 steps
mkdir -p "$W/syn"
for s in 1 2 3 4 5 6 7 8 9 10; do # with typed event records (a start, a resume) between the steps
    [ $s = 1 ] && echo '{"event":"start","step":0,"data":"a.txt","val_data":"the last 10% of a.txt"}'
    [ $s = 6 ] && echo '{"event":"resume","step":5,"data":"b.txt","val_data":"v.txt","data_changed":true,"data_before":"a.txt"}'
    echo "{\"step\":$s,\"loss\":4.5,\"moe\":[{\"layer\":1,\"maxvio\":3,\"dropped_frac\":0.1,\"load\":[100,0,0,0]}]}"
done > "$W/syn/metrics.jsonl"
printf '{"step":11,"loss":4.4,"mo' >> "$W/syn/metrics.jsonl" # torn last line: a run being written
"$MOE" plot --run "$W/syn" > /dev/null || fail "plot synthetic"
python3 "$SRC/tests/plot/check_png.py" "$W/syn/load_layer1.png" 400 252,253,191 0,0,4 > "$W/px" || fail "check_png"
checks=$((checks + 1))
read -r _ n_hot y_hot < <(sed -n 2p "$W/px")
read -r _ n_cold y_cold < <(sed -n 3p "$W/px")
# 4 experts, expert 0 at the bottom: a quarter of the plot's height saturated below three quarters black
if [ "${n_hot:-0}" -lt 50 ] || [ "${n_cold:-0}" -lt $((n_hot * 5 / 2)) ] || [ "${n_cold:-0}" -gt $((n_hot * 7 / 2)) ] \
   || ! python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)" "$y_hot" "$y_cold"; then
    fail "heatmap column: hot $n_hot px at row $y_hot, cold $n_cold px at row $y_cold (want 1:3, hot below)"
fi
echo "heatmap column 400: $n_hot saturated px (mean row $y_hot), $n_cold black px (mean row $y_cold)"

expect_error "no run" "cannot open" -- "$MOE" plot --run "$W/nothing"
mkdir -p "$W/bad" && printf '{"step":1,"loss":4}\nnot json\n{"step":3,"loss":4}\n' > "$W/bad/metrics.jsonl"
expect_error "bad record" "line 2 is not a moe metrics record" -- "$MOE" plot --run "$W/bad"
mkdir -p "$W/empty" && : > "$W/empty/metrics.jsonl"
expect_error "empty" "has no records yet" -- "$MOE" plot --run "$W/empty"
mkdir -p "$W/nogp" && ln -s "$(command -v sh)" "$W/nogp/sh"
expect_error "no gnuplot" "gnuplot is not installed" -- env PATH="$W/nogp" "$MOE" plot --run "$W/run" --out "$W/figs2"
expect_error "no --run" "--run is required" -- "$MOE" plot
finish test_plot
