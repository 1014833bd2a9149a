"""Issue 5 (k-means / Huffman half): codebook kernels against dense float32 and the int8 peers, and the
Deep Compression pipeline (prune, share, Huffman) on LeNet-300-100 and LeNet-5.

Speed: VGG-16 fc6 (4096x25088, He-normal random weights, seed 0, no bias) and fc7 (4096x4096, for
information; its 4-bit codes, 8 MB, are L3-resident) at batch 1 and 32, every contender in this
process, alternating (A B C ... A B C), after a warm-up; medians and p90s of whole ``apply`` calls.
fc6's codes (51 MB at 4 bits) exceed the 32 MiB L3, so every call reads them from DRAM. Contenders:
- NumPy float32 ``(W @ x.T).T`` and ``x @ W.T`` (OpenBLAS; ratios use the faster of the two);
- nncomp 4-bit codebook (``CodebookMatrix``, k-means on the weights, 16 values, packed codes): the
  AVX-512 register path (``vpermps``), and the path without AVX-512 (same bits): AVX2's byte-plane
  lookups (nncomp/kernels/codebook_avx2.py) on a CPU without AVX-512, the portable plain loop on one
  with it (for comparison); the targets take the path this CPU runs;
- nncomp 5-bit codebook (one code per byte, 32 values in two registers, ``vpermi2ps``);
- ONNX Runtime dynamic quantized MatMul and torch 2.13 dynamic int8 Linear (the int8 peers).
Before each timed call the process sleeps SETTLE_S (nncomp.bench.timing; untimed), as the quant suite does: NumPy's OpenBLAS
threads keep spinning after a call and would slow the next contender's 2-thread call.
Threads: 2 for every pool (Numba, BLAS, torch, ORT); the table is repeated with 1 thread, which a busy
shared machine disturbs less.

Accuracy and size: the shipped models on the 1,000 test digits; calibration on the 4,000 training digits
only. The pipeline is ``nc.deep_compression(model, sparsity=0.92, scope="global", calibration=train)``
(Deep Compression's 92% overall, one global magnitude threshold, bits {"conv": 8, "dense": 5} as in the
paper, and a 4-bit variant); its stages are re-run one by one here to report the accuracy after each, and
the final model is checked equal to the pipeline's. Bytes are ``nc.size_report`` (everything needed to
run the model: codes, indices, codebooks, Huffman tables, biases; JSON headers aside), cross-checked
against the file written by ``nc.save(..., huffman=True)`` and reloaded (nncomp.bench.sizes.saved_size).

    python -m nncomp.bench --suite codebook   # writes bench/out/codebook.json and .md (--parts speed,accuracy)
"""
import math
import time

from ...data import DATA_DIR
from ..roofline import cap, machine_limits, roof_text
from ..sizes import saved_size
from . import fc_layers
from ..timing import SETTLE_S, alternate, l3_bytes, machine_text, set_threads

THREADS = 2
THREAD_COUNTS = (2, 1)
PARTS = ("speed", "accuracy")
QUICK_PARTS = PARTS
COLS = ("numpy float32", "numpy float32 x @ W.T", "nncomp codebook 4-bit (vpermps)", "nncomp codebook 4-bit (AVX2 / portable)",
        "nncomp codebook 5-bit (vpermi2ps)", "onnxruntime dynamic int8", "torch dynamic int8")


def speed(threads, repeat, batches, quick, say=print):
    import numpy as np

    from ...compress.sharing import kmeans_codebook
    from ...kernels import codebook_vpermps as vpermps
    from ...matrices.codebook import CodebookMatrix
    from .. import peers

    rows = []
    for name, n_in, w, model in fc_layers(quick):
        mats = {b: CodebookMatrix.from_codes(*kmeans_codebook(w, b)[::-1], b) for b in (4, 5)}
        have = vpermps.HAVE_AVX512

        def portable(x):
            vpermps.HAVE_AVX512 = False
            try:
                return mats[4].apply(x)
            finally:
                vpermps.HAVE_AVX512 = have

        contenders = {COLS[0]: lambda x: (w @ x.T).T, COLS[1]: lambda x: x @ w.T,
                      COLS[2]: mats[4].apply if have else "no avx512f",
                      COLS[3]: portable, COLS[4]: mats[5].apply if have else "no avx512f"}
        for peer, build in ((COLS[5], lambda: peers.ort_model(model, threads=threads, int8=True)),
                            (COLS[6], lambda: peers.torch_model(model, int8=True))):
            try:
                contenders[peer] = build()
            except peers.PeerUnavailable as e:
                contenders[peer] = str(e)
        for bs in batches:
            x = np.maximum(np.random.default_rng(1).standard_normal((bs, n_in), dtype=np.float32), 0)
            calls = {k: (lambda f=f: f(x)) for k, f in contenders.items() if not isinstance(f, str)}
            t = alternate(calls, repeat=repeat, max_seconds=30 if quick else 240)
            row = {"layer": name, "shape": list(w.shape), "batch": bs, "threads": threads,
                   "code_bytes": {"4-bit": int(mats[4].codes.nbytes), "5-bit": int(mats[5].codes.nbytes)},
                   "float32_bytes": int(w.nbytes),
                   "bit_identical_fast_vs_portable": bool(np.array_equal(mats[4].apply(x), portable(x)))}
            dense64 = x.astype(np.float64) @ mats[4].to_dense().T.astype(np.float64)
            row["max_rel_err_4bit_vs_float64"] = float(np.abs(mats[4].apply(x) - dense64).max() / np.abs(dense64).max())
            for k, f in contenders.items():
                row[k] = f if isinstance(f, str) else t[k]
            base = min(row[COLS[0]]["median_ms"], row[COLS[1]]["median_ms"])   # the faster NumPy form
            row["numpy_over"] = {k: base / row[k]["median_ms"] for k in COLS if isinstance(row[k], dict)}
            rows.append(row)
            say(f"{name} batch {bs}, {threads} thread(s): " + ", ".join(
                f"{k} {_ms(row[k])}" for k in COLS) + " | numpy/x: " + ", ".join(
                f"{k.split(' (')[0].replace('nncomp ', '')} {v:.2f}" for k, v in row["numpy_over"].items()))
    return rows


def _stage(model, x, y, dense_logits):
    out = model(x)
    return {"accuracy": float((out.argmax(1) == y).mean() * 100),
            "top1_agreement_with_dense": float((out.argmax(1) == dense_logits.argmax(1)).mean() * 100)}


def accuracy(quick, say=print):
    import numpy as np

    import nncomp as nc
    from ...compress.sharing import refit_model

    rows = []
    for name in ("lenet300",) if quick else ("lenet300", "lenet5"):
        model = nc.load(DATA_DIR / f"{name}.h5")
        x, y = nc.data.for_model(model, "test")
        calib = nc.data.for_model(model, "train")[0][:512 if quick else None]
        dense_logits = model(x)
        for label, bits in (("paper bits {conv: 8, dense: 5}", None), ("4 bits", 4))[:1 if quick else 2]:
            t0 = time.perf_counter()
            final = nc.deep_compression(model, sparsity=0.92, scope="global", bits=bits, calibration=calib)
            seconds = time.perf_counter() - t0
            names = [n.name for n in final.nodes if hasattr(final[n.name].layer.weight, "codebook")]
            pruned = nc.prune(model, sparsity=0.92, scope="global", layers=names, calibration=calib, storage="csr")
            per = bits if bits is not None else {"conv": 8, "dense": 5}
            shared = nc.share(pruned, per, layers=names, sparse=True)
            refit = refit_model(model, shared, calib, names)
            same = bool(np.array_equal(refit(x), final(x)))
            coded = saved_size(final, huffman=True)
            file_bytes, back = coded.file_bytes, coded.loaded
            reload_equal = bool(np.array_equal(back(x), final(x)))
            plain_file_bytes = saved_size(final).file_bytes
            report = nc.size_report(final)
            timing = {}
            for bs in (1, 64):
                xb = x[:bs]
                t = alternate({"dense": lambda: model(xb), "pruned": lambda: pruned(xb),   # no pause: a pause lets
                               "deep compression": lambda: final(xb)},       # the pools sleep (µs calls)
                              repeat=3 if quick else 200, warmup=5, spinners=())
                timing[str(bs)] = {k: v["median_ms"] for k, v in t.items()}
            row = {"ms_whole_model": timing, "model": name, "recipe": label, "pipeline_seconds": seconds, "stages_equal_pipeline": same,
                   "reloaded_equal": reload_equal, "file_bytes_huffman": file_bytes,
                   "file_bytes_plain": plain_file_bytes,
                   "dense": {**_stage(model, x, y, dense_logits), "bytes": report.total["dense"]},
                   "pruned": {**_stage(pruned, x, y, dense_logits), "bytes": report.total["pruned"]},
                   "shared": {**_stage(shared, x, y, dense_logits), "bytes": report.total["shared"]},
                   "shared + refit": {**_stage(final, x, y, dense_logits), "bytes": report.total["shared"]},
                   "huffman": {**_stage(back, x, y, dense_logits), "bytes": report.total["huffman"]},
                   "ratio": report.ratio, "layers": report.rows, "table": str(report)}
            rows.append(row)
            say(f"{name} [{label}]: " + ", ".join(
                f"{k} {row[k]['accuracy']:.1f}% {row[k]['bytes']:,} B" for k in
                ("dense", "pruned", "shared", "shared + refit", "huffman"))
                + f" -> {report.ratio:.1f}x; file {file_bytes:,} B; stages == pipeline: {same}")
    return rows


def run(res, opts):
    """fc6 and fc7 (``speed``) at each thread count, then Deep Compression on the LeNets (``accuracy``)."""
    limits = machine_limits(quick=opts.quick)
    opts.say(f"limits: {limits['bandwidth_GBps']:.1f} GB/s read, {limits['sgemm_GFLOPs']:.0f} GFLOP/s sgemm")
    rows = []
    if "speed" in opts.parts:
        for t in res["thread_counts"]:
            set_threads(t)
            rows += speed(t, opts.repeats(30), (1, 32), opts.quick, opts.say)
        set_threads(res["threads"])
    observed = []
    for r in rows:
        for k in COLS:
            nbytes = r["float32_bytes"] if k.startswith("numpy") else r["code_bytes"]["5-bit" if "5-bit" in k else "4-bit"]
            if isinstance(r[k], dict) and "int8" not in k and nbytes > 2 * l3_bytes():
                observed.append((f"{k} on {r['layer']} at batch {r['batch']}", nbytes, r[k]["median_ms"]))
    res.update(limits=cap(limits, observed), speed=rows, settle_s=SETTLE_S,
               accuracy=accuracy(opts.quick, opts.say) if "accuracy" in opts.parts else [],
               seeds={"weights": 0, "inputs": 1, "k-means": 0, "calibration": "all 4,000 training digits"})


def _four(r):
    """NumPy's time over the 4-bit product this CPU runs (the AVX-512 path where present), or NaN."""
    o = r["numpy_over"]
    return o.get(COLS[2], o.get(COLS[3], float("nan")))


def _targets(res):
    """The issue's targets against this run."""
    out = ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for r in res["speed"]:
        if r["layer"] not in ("fc6", "fc7") or not math.isfinite(_four(r)):
            continue
        o, four = r["numpy_over"], _four(r)
        peers = [o[k] for k in COLS[5:] if k in o]
        if r["batch"] == 1:
            ok = four >= 4.5 and all(four > p for p in peers)
            out.append(f"| {r['layer']} 4-bit, batch 1, {r['threads']} thread(s): >= 4.5x NumPy and faster than the int8 "
                       f"peers | {four:.2f}x (peers {', '.join(f'{p:.2f}x' for p in peers)}) | {ok} |")
        elif r["batch"] == 32:
            out.append(f"| {r['layer']} 4-bit, batch 32, {r['threads']} thread(s): faster than NumPy dense | "
                       f"{four:.2f}x | {four > 1} |")
    for r in res["accuracy"]:
        need = {"lenet300": 40, "lenet5": 35}[r["model"]]
        drop = r["dense"]["accuracy"] - r["huffman"]["accuracy"]
        out.append(f"| {r['model']} Deep Compression ({r['recipe']}): >= {need}x at <= 1.0 point | "
                   f"{r['ratio']:.1f}x, {drop:.1f} points | {r['ratio'] >= need and drop <= 1.0} |")
    return out + [""]


def _ms(v):
    return v if isinstance(v, str) else f"{v['median_ms']:.3g} ({v['p90_ms']:.3g})"


def markdown(res):
    m, lim = res["machine"], res["limits"]
    lines = ["# k-means codebooks, Huffman coding, Deep Compression (issue 5, sharing half)", "",
             f"{m['date']} · {machine_text(m)} · {m['cores']} cores · load average before/after "
             f"{res['loadavg_before'][0]:.2f}/{res['loadavg_after'][0]:.2f}", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), "",
             f"Measured limits ({res['threads']} threads): {roof_text(lim)}, sgemm "
             f"{lim['sgemm_GFLOPs']:.0f} GFLOP/s. Protocol: in codebook.json (nncomp/bench/suites/codebook.py).", "",
             "The machine is shared with other engineers' jobs (see the load average): compare ratios within a "
             "row (alternating timing), not absolute times; 1-thread rows are the least disturbed (a 2-thread "
             "parallel region waits for both threads, and a busy core holds one of them back).", ""]
    lines += _targets(res)
    if res["speed"]:
        lines += ["## Speed: median ms per call (p90)", "",
                  "Memory floor = 4-bit code bytes / measured DRAM bandwidth (fc6; fc7's codes stay in L3). "
                  "The last columns are NumPy's time (the faster of `(W @ x.T).T` and `x @ W.T`: this OpenBLAS "
                  "runs the latter several times slower at batch 32) over each contender's (higher is faster).", "",
                  "| layer | batch | threads | " + " | ".join(COLS) + " | NumPy / 4-bit | NumPy / 5-bit | "
                  "NumPy / best int8 peer | 4-bit floor (ms) |", "|---|---|---|" + "---|" * (len(COLS) + 4)]
        for r in res["speed"]:
            o = r["numpy_over"]
            peer = max([o[k] for k in COLS[5:] if k in o], default=float("nan"))
            floor = r["code_bytes"]["4-bit"] / (lim["bandwidth_GBps"] * 1e9) * 1e3
            lines.append(f"| {r['layer']} {r['shape'][0]}x{r['shape'][1]} | {r['batch']} | {r['threads']} | "
                         + " | ".join(_ms(r[c]) for c in COLS)
                         + f" | {_four(r):.2f} | {o.get(COLS[4], float('nan')):.2f} | {peer:.2f} | "
                         f"{floor:.2f} |")
        lines += ["", "Register path and the path without AVX-512 bit-identical in every row: "
                  f"{all(r['bit_identical_fast_vs_portable'] for r in res['speed'])}; max relative error of the "
                  "4-bit product against float64 of the same shared weights: "
                  f"{max(r['max_rel_err_4bit_vs_float64'] for r in res['speed']):.1e}.", ""]
    if res["accuracy"]:
        stages = ("dense", "pruned", "shared", "shared + refit", "huffman")
        lines += ["## Deep Compression pipeline: accuracy (%) and bytes after each stage", "",
                  "1,000 test digits; calibration: the 4,000 training digits. pruned = 92% global magnitude "
                  "pruning with least-squares refit (nc.prune); shared = k-means codebooks on the survivors; "
                  "refit = centroids and biases refit to the dense model's layer outputs; Huffman = the saved "
                  "file, reloaded. Bytes: nc.size_report (pruned stage counts float32 values + relative indices).",
                  "", "| model | bits | " + " | ".join(stages) + " | compression | drop (points) | file (Huffman / plain) |",
                  "|---|---|" + "---|" * (len(stages) + 3)]
        for r in res["accuracy"]:
            drop = r["dense"]["accuracy"] - r["huffman"]["accuracy"]
            lines.append(f"| {r['model']} | {r['recipe']} | " + " | ".join(
                f"{r[s]['accuracy']:.1f} ({r[s]['bytes']:,} B)" for s in stages)
                + f" | **{r['ratio']:.1f}x** | {drop:.1f} | {r['file_bytes_huffman']:,} / {r['file_bytes_plain']:,} B |")
        lines += ["", "Whole-model forward pass, median ms (batch 1 / batch 64, threads as above):", "",
                  "| model | bits | dense | pruned (CSR float32) | Deep Compression (CSR codebook) |", "|---|---|---|---|---|"]
        for r in res["accuracy"]:
            t = r["ms_whole_model"]
            lines.append(f"| {r['model']} | {r['recipe']} | " + " | ".join(
                f"{t['1'][k]:.3f} / {t['64'][k]:.3f}" for k in ("dense", "pruned", "deep compression")) + " |")
        lines += ["", "Stages re-run one by one equal the pipeline's output: "
                  f"{all(r['stages_equal_pipeline'] for r in res['accuracy'])}; reloaded files give identical "
                  f"logits: {all(r['reloaded_equal'] for r in res['accuracy'])}.", ""]
        for r in res["accuracy"]:
            lines += [f"### {r['model']}, {r['recipe']}: per layer (the form of Deep Compression's Tables 2-3)", "",
                      r["table"], ""]
    return "\n".join(lines) + "\n"
