# plots.gp — figures of docs/results.md from the data of bench/analyze.py.
# usage: gnuplot -e "data='DATA_DIR'; out='docs/figures'" bench/plots.gp
set terminal pngcairo size 1100,700 font ",10"
set grid
set key top right

# 1. MaxVio per layer over training, the four balancing methods
set output out.'/collapse_maxvio.png'
set multiplot layout 2,2 title "MaxVio per MoE layer (10-step mean): (max load - mean load) / mean load"
do for [l=0:3] {
    set title sprintf("layer %d", l)
    set xlabel "step"
    set ylabel "MaxVio"
    set yrange [0:*]
    plot data.'/collapse_none.maxvio.dat' u 1:(column(l+2)) w l lw 2 t 'no balancing', \
         data.'/collapse_switch.maxvio.dat' u 1:(column(l+2)) w l lw 2 t 'Switch aux loss', \
         data.'/collapse_noisy.maxvio.dat' u 1:(column(l+2)) w l lw 2 t 'noisy top-K + losses', \
         data.'/collapse_auxfree.maxvio.dat' u 1:(column(l+2)) w l lw 2 t 'aux-loss-free bias, u=0.001', \
         data.'/collapse_auxfree_fast.maxvio.dat' u 1:(column(l+2)) w l lw 2 t 'aux-loss-free bias, u=0.01'
}
unset multiplot

# 2. validation loss of the four
set output out.'/collapse_val.png'
set title "validation loss (tinyshakespeare)"
set xlabel "step"
set ylabel "val loss (nats/byte)"
set yrange [*:*]
plot data.'/collapse_none.val.dat' u 1:3 w lp lw 2 t 'no balancing', \
     data.'/collapse_switch.val.dat' u 1:3 w lp lw 2 t 'Switch aux loss', \
     data.'/collapse_noisy.val.dat' u 1:3 w lp lw 2 t 'noisy top-K + losses', \
     data.'/collapse_auxfree.val.dat' u 1:3 w lp lw 2 t 'aux-loss-free bias, u=0.001', \
     data.'/collapse_auxfree_fast.val.dat' u 1:3 w lp lw 2 t 'aux-loss-free bias, u=0.01'

# 3. MoE against dense, by step and by wall-clock
set output out.'/moe_vs_dense.png'
set multiplot layout 2,2 title "MoE (E=8, K=2, F=256) against dense FFNs of equal active (512) and equal total (2048) hidden size"
set yrange [*:*]
set title "tinyshakespeare, by step"
set xlabel "step"
set ylabel "val loss"
plot data.'/collapse_switch.val.dat' u 1:3 w lp lw 2 t 'MoE', \
     data.'/dense_active_shakes.val.dat' u 1:3 w lp lw 2 t 'dense, equal active', \
     data.'/dense_total_shakes.val.dat' u 1:3 w lp lw 2 t 'dense, equal total'
set title "tinyshakespeare, by wall-clock"
set xlabel "training seconds"
plot data.'/collapse_switch.val.dat' u 2:3 w lp lw 2 t 'MoE', \
     data.'/dense_active_shakes.val.dat' u 2:3 w lp lw 2 t 'dense, equal active', \
     data.'/dense_total_shakes.val.dat' u 2:3 w lp lw 2 t 'dense, equal total'
set title "mixed corpus (English, Python, C), by step"
set xlabel "step"
plot data.'/moe_mix.val.dat' u 1:3 w lp lw 2 t 'MoE', \
     data.'/dense_active_mix.val.dat' u 1:3 w lp lw 2 t 'dense, equal active', \
     data.'/dense_total_mix.val.dat' u 1:3 w lp lw 2 t 'dense, equal total'
set title "mixed corpus, by wall-clock"
set xlabel "training seconds"
plot data.'/moe_mix.val.dat' u 2:3 w lp lw 2 t 'MoE', \
     data.'/dense_active_mix.val.dat' u 2:3 w lp lw 2 t 'dense, equal active', \
     data.'/dense_total_mix.val.dat' u 2:3 w lp lw 2 t 'dense, equal total'
unset multiplot
