"""PNG plots of a benchmark run (needs matplotlib, the optional ``plots`` extra).

Per model, two panels: accuracy against payload bytes on disk, and accuracy against speedup at the
latency batch, each with its Pareto front (the rows no other row beats on both axes).
"""
from pathlib import Path


def available():
    try:
        import matplotlib  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def pareto(points, *, smaller_x_better):
    """Indices of the Pareto-optimal points ``(x, accuracy)``, sorted by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0] if smaller_x_better else -points[i][0],
                                                      -points[i][1]))
    front, best = [], -1.0
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def _label(r):
    return f"{r['method']} {r['settings']}" + (" +cal" if r["calibrated"] else "")


def plot_model(rows, path):
    """Write one PNG for one model's rows; returns the path, or None when there is nothing to plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok" and r["accuracy"] is not None]
    if not ok:
        return None
    dense = next((100 * r["accuracy"] for r in ok if r["method"] == "dense"), max(100 * r["accuracy"] for r in ok))
    floor = max(min(100 * r["accuracy"] for r in ok) - 1, dense - 12.0)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    panels = [
        (axes[0], "payload_bytes", True, "bytes on disk (stored arrays, log scale)", True),
        (axes[1], "speedup_latency", False, "speedup against the dense engine at the latency batch", False),
    ]
    colours = {"dense": "black", "torch": "tab:red", "onnxruntime": "tab:orange"}
    for ax, key, smaller_better, xlabel, logx in panels:
        pts = [(r[key], 100 * r["accuracy"], r) for r in ok if r[key]]
        if not pts:
            continue
        below = 0
        for x, a, r in pts:
            peer = r["method"] in ("torch", "onnxruntime")
            marker = "s" if peer else ("o" if not r["calibrated"] else "^")
            if a < floor:
                a, marker, below = floor, "v", below + 1
            ax.scatter(x, a, s=28, marker=marker, color=colours.get(r["method"], "tab:blue"), zorder=3)
        own = [i for i, p in enumerate(pts) if p[2]["method"] not in ("torch", "onnxruntime")]
        front = [own[j] for j in pareto([pts[i][:2] for i in own], smaller_x_better=smaller_better)]
        ax.plot([pts[i][0] for i in front], [max(pts[i][1], floor) for i in front], "-", color="tab:green",
                lw=1.2, zorder=2, label="Pareto front (nncomp rows)")
        for i in front:
            x, a, r = pts[i]
            ax.annotate(_label(r), (x, max(a, floor)), fontsize=6.5, xytext=(3, 3), textcoords="offset points")
        if logx:
            ax.set_xscale("log")
        ax.set_ylim(floor - 0.5, 100.5)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy on the test digits (%)")
        if below:
            ax.text(0.01, 0.01, f"{below} rows below {floor:.0f}% drawn at the bottom (v)", transform=ax.transAxes,
                    fontsize=7)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{ok[0]['model']}: circles data-free, triangles calibrated, squares peers, black dense")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(model_rows, out):
    """One PNG per model under ``out/plots``; returns ``{model: relative path}`` ({} without matplotlib)."""
    if not available():
        return {}
    by_model = {}
    for r in model_rows:
        by_model.setdefault(r["model"], []).append(r)
    done = {}
    for name, rows in by_model.items():
        rel = f"plots/{name.replace('/', '_')}.png"
        if plot_model(rows, Path(out) / rel):
            done[name] = rel
    return done
