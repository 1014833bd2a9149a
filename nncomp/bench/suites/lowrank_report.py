"""The Markdown of the low-rank suite (nncomp/bench/suites/lowrank.py): targets, speed and accuracy tables."""
from ..roofline import roof_text
from ..timing import machine_text


def _f(v, d=2):
    return "-" if v is None else f"{v:.{d}f}"


def _gate(r):
    g = r.get("quiet_gate")
    if not g:
        return ""
    tries = "; ".join(f"{100 * a['others_busy_during']:.0f}% busy, {a['speedup']:.2f}x" for a in r.get("attempts", []))
    start = ("Started without the quiet gate" if g["busy_before"] is None else
             f"Started after waiting {g['waited_s']:.0f} s for a quiet machine (other processes used "
             f"{100 * g['busy_before']:.0f}% of the CPUs in the 2 s before)")
    return (f"{start}; during the row other processes used "
            f"{100 * g.get('others_busy_during', float('nan')):.0f}% of the CPU time. Attempts (other processes' "
            f"share, speedup): {tries}; the least disturbed is shown.")


def markdown(res):
    m = res["machine"]
    sr = res.get("speed_run", {})
    lim = sr.get("limits", res["limits"])
    fc_lim = [r["limits"] for r in res.get("speed", []) if "limits" in r]
    lim = fc_lim[-1] if fc_lim else lim
    lines = ["# Low-rank layers (python -m nncomp.bench --suite lowrank)", "",
             f"Machine: {machine_text(m)}, {m['cores']} cores, {res['threads']} threads for Numba, BLAS and torch; "
             f"versions {m['versions']}. Seed {res['seed']}. Speed run {sr.get('date', '-')}: limits measured at its "
             f"start: {roof_text(lim)}, sgemm {lim['sgemm_GFLOPs']:.0f} GFLOP/s; load "
             f"average (1, 5, 15 min) at start {sr.get('load_average_start')}, at end {sr.get('load_average_end')} "
             f"on {m['cores']} cores. Accuracy run {res.get('accuracy_run', {}).get('date', '-')}. The machine is "
             "shared with other engineers' jobs: compare ratios within a table (alternating timing), not "
             "absolute times.", ""]
    t = res.get("targets", [])
    if t:
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {r['target']} | {r['measured']} | {'yes' if r['met'] else '**no**'} |" for r in t]
        lines.append("")
    convs = [r for r in res.get("speed", []) if r["layer"] != "fc6"]
    if convs:
        lines += ["## VGG-16 convolutions: Jaderberg scheme 2 against dense", "",
                  "Random He-initialised 3x3 kernels, factorized by `nc.factorize(rank=K, scheme=\"jaderberg\")` "
                  "(filter reconstruction); K is the largest multiple of 8 whose pair costs at most 1/2.5 of the "
                  "dense MACs. nncomp layers run on NHWC by the algorithm nncomp/layers/conv_algorithms.py picks (shifted GEMM or im2col + BLAS, "
                  "bench/results/conv_algos.md); torch runs `F.conv2d` (oneDNN) on NCHW "
                  "and on channels-last tensors, in an alternating loop of its own anchored by nncomp dense (interleaved "
                  "with torch calls nncomp's pair ran 10-20% slower), its times scaled to this table's nncomp dense "
                  "time (measured ones in the JSON). Caches not flushed (weights 2.4-9.4 MB, compute-bound). "
                  f"Medians over alternating rounds with a {res['settle_s']} s untimed pause before each sample (the previous "
                  "contender's threads stop spinning); at batch 1 a sample is 5 back-to-back calls (times are per "
                  "call), so that thread pools are awake as they are inside a network: a lone call after a pause "
                  "pays one pool wake-up per parallel region; % of limit = achieved GFLOP/s over the 4096^3 sgemm's.", ""]
        for r in convs:
            lines += [f"### {r['layer']} ({r['shape']}), batch {r['batch']}: K={r['rank']}, FLOP cut "
                      f"{r['flop_cut']:.2f}x", "", _gate(r), "",
                      "| contender | median ms | p90 ms | speedup vs nncomp dense | GFLOP/s | % of sgemm limit |",
                      "|---|---|---|---|---|---|"]
            for k, v in r["times"].items():
                lines.append(f"| {k} | {v['median_ms']:.2f} | {v['p90_ms']:.2f} | {v['speedup_vs_nncomp_dense']:.2f}x "
                             f"| {v['GFLOPs']:.0f} | {v['pct_of_sgemm_limit']:.0f}% |")
            c = r["check"]
            lines += ["", f"nncomp scheme 2 / best torch dense ({r['best_torch_dense']}): "
                      f"{r['pair_vs_best_torch_dense']:.2f}x faster. Checks: nncomp pair vs torch pair max rel. diff "
                      f"{c['pair_vs_torch_pair_max_rel']:.1e}, nncomp dense vs torch {c['dense_vs_torch_max_rel']:.1e}; "
                      f"pair vs dense output (filter reconstruction of a random kernel) rel. Frobenius error "
                      f"{c['pair_vs_dense_rel_fro']:.2f}. Factorize took {r['factorize_s']:.1f} s.", ""]
    fcs = [r for r in res.get("speed", []) if r["layer"] == "fc6"]
    if fcs:
        lines += ["## VGG-16 fc6 (4096x25088), rank 256", "",
                  "Random weights; `nc.factorize(rank=256)` (randomized truncated SVD for a matrix this large). "
                  "Caches flushed before every call (dense 411 MB; low rank 30 MB would otherwise sit in the 32 MiB "
                  "L3). % of limits: memory = weight bytes / DRAM bandwidth, sgemm = FLOPs / sgemm throughput, "
                  "each over the measured time. torch runs in an alternating loop of its own with nncomp dense (in "
                  "the shared loop its threads slowed the next contender 2.7x); its row is scaled to this table's "
                  "nncomp dense time.", ""]
        for r in fcs:
            lines += [f"### batch {r['batch']}: FLOP cut {r['flop_cut']:.2f}x, measured speedup {r['speedup']:.2f}x "
                      f"= {r['speedup_over_flop_cut']:.2f} of the FLOP cut ({r['speedup_vs_best_dense']:.2f}x against "
                      "the fastest dense contender)", "", _gate(r), "",
                      "| contender | median ms | p90 ms | speedup vs nncomp dense | % of memory limit | % of sgemm limit |",
                      "|---|---|---|---|---|---|"]
            for k, v in r["times"].items():
                lines.append(f"| {k} | {v['median_ms']:.3f} | {v['p90_ms']:.3f} | {v['speedup_vs_nncomp_dense']:.2f}x "
                             f"| {v['pct_of_memory_limit']:.0f}% | {v['pct_of_sgemm_limit']:.0f}% |")
            lines.append("")
    hist = res.get("speed_history", [])
    if len(hist) > 1:
        rows = [r["row"] for r in hist[-1]["rows"]]
        lines += ["## Every committed-script speed run (the tables above are the last)", "",
                  "Speedup of the low-rank layer(s) over nncomp dense (conv: and over the best torch dense conv); "
                  "in brackets the share of CPU time other processes used during the row.", "",
                  "| run | sgemm GFLOP/s | " + " | ".join(rows) + " |", "|---|---|" + "---|" * len(rows)]
        for h in hist:
            by = {r["row"]: r for r in h["rows"]}
            cells = []
            for name in rows:
                r = by.get(name)
                if r is None:
                    cells.append("-")
                    continue
                vs = "" if r["vs_torch"] is None else f" / {r['vs_torch']:.2f}x"
                cells.append(f"{r['speedup']:.2f}x{vs} ({100 * r['others_busy']:.0f}%)")
            lines.append(f"| {h['date']} | {h['sgemm_GFLOPs']:.0f} | " + " | ".join(cells) + " |")
        lines.append("")
    acc = res.get("accuracy", [])
    if acc:
        lines += ["## Accuracy on the 1,000 shipped test digits, no retraining: filter vs data reconstruction", "",
                  f"Data reconstruction gets the first {res['n_calibration']} training digits (layer by layer on the partly "
                  "factorized model's own activations). `mac cut` = MACs of the factorized layers before / after. "
                  "`global`: one MAC budget for all selected layers, ranks where they remove the most relative "
                  "error per MAC; `uniform`: every layer 2x. `drop` = baseline accuracy minus this row's (negative: better "
                  "than the original). `max_drop` rows: the layers are fitted on 3/4 of the calibration digits and the "
                  "speedup is bisected until top-1 agreement on the other 1/4 drops by at most that fraction; their "
                  "`mac cut` is over the whole model.",
                  "", "| model | setting | scheme | allocation | reconstruction | accuracy | drop (points) | mac cut | seconds |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in acc:
            lines.append(f"| {r['model']} | {r['setting']} | {r['scheme']} | {r['allocation']} | {r['reconstruction']} "
                         f"| {100 * r['accuracy']:.1f}% | {r['drop_points']:+.1f} | {r['mac_cut']:.2f}x | {_f(r['seconds'], 1)} |")
        lines.append("")
        ranked = [r for r in acc if r.get("ranks") and r["reconstruction"] == "data"
                  and r["scheme"] == "jaderberg" and r["allocation"] == "global" and "int8" not in r["setting"]]
        for r in ranked:
            lines.append(f"- {r['model']} (scheme 2, global, data) ranks: "
                         + ", ".join(f"{k}: {'dense' if v is None else f'{v[0]} ({v[1]})'}" for k, v in r["ranks"].items()))
        lines.append("")
    return "\n".join(lines) + "\n"


def targets(res):
    out = []
    for r in res.get("speed", []):
        if r["layer"] == "fc6":
            out.append({"target": f"fc6 rank 256, batch {r['batch']}: speedup >= 0.8 x FLOP cut ({r['flop_cut']:.2f}x)",
                        "measured": f"{r['speedup']:.2f}x = {r['speedup_over_flop_cut']:.2f} of the cut",
                        "met": r["speedup_over_flop_cut"] >= 0.8})
        else:
            out.append({"target": f"{r['layer']} batch {r['batch']}: scheme 2 ({r['flop_cut']:.2f}x fewer FLOPs) >= 2.2x "
                        "faster than nncomp dense", "measured": f"{r['speedup']:.2f}x", "met": r["speedup"] >= 2.2})
            out.append({"target": f"{r['layer']} batch {r['batch']}: nncomp scheme 2 faster than torch's dense conv "
                        f"(best of NCHW / channels-last: {r['best_torch_dense']})",
                        "measured": f"{r['pair_vs_best_torch_dense']:.2f}x", "met": r["pair_vs_best_torch_dense"] > 1})
    for r in res.get("accuracy", []):
        if r["reconstruction"] != "data" or "int8" in r["setting"]:
            continue
        if r["model"] == "lenet300" and "fewer" in r["setting"]:
            out.append({"target": f"lenet300 {r['setting']}, data reconstruction: drop <= 0.5 point",
                        "measured": f"{r['drop_points']:+.1f}", "met": r["drop_points"] <= 0.5})
        if (r["model"] != "lenet300" and r["scheme"] == "jaderberg" and r["allocation"] == "global"
                and r["setting"] == "3x3 convs, speedup=2"):
            out.append({"target": f"{r['model']} 3x3 convs 2x cheaper ({r['mac_cut']:.2f}x), scheme 2, data "
                        "reconstruction: drop <= 1.0 point", "measured": f"{r['drop_points']:+.1f}",
                        "met": r["drop_points"] <= 1.0})
    return out
