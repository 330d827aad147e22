"""frtrain-analyze's report: ``analysis.md`` (each measure beside the claim it checks) and its plots."""

from __future__ import annotations

import os

import numpy as np

#: measure -> (the paper's claim, what would confirm it)
CLAIMS = {
    "pairs": ("UNPG: good training reaches a feature space where every genuine similarity exceeds every impostor one",
              "identities and batches separated near 100%, overlap near 0"),
    "separation": ("NPT and the margin heads: class vectors kept a minimum angle apart",
                   "a high minimum nearest-neighbour angle (NPT: at least its bound)"),
    "shape": ("IntraLoss: intra-class distributions are anisotropic, its term makes them isotropic and compact",
              "anisotropy near 1 and a high effective rank; a small angle to the centre"),
    "margins": ("IE loss, Margin Loss: inter-class distance exceeds intra-class distance by a margin",
                "few images below the target margin"),
    "norms": ("AdaFace, MagFace: the feature norm tracks image quality", "a positive Spearman correlation"),
}


def _f(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def markdown(r: dict, plots: dict) -> str:
    lines = [f"# Embedding geometry of `{r['model']}`", "",
             f"{r['images']:,} images of {r['identities']:,} identities from {r['data']}; embeddings with flip "
             f"{r['flip']}, L2-normalised (norms: the raw output); class vectors: {r['class_vectors']}; head "
             f"{r.get('head') or '—'}. Definitions: docs/analysis.md.", "",
             "| measure | claim checked | value |", "|---|---|---|"]
    p = r.get("pairs")
    if p:
        batches = "—" if p["batches_separated"] is None else f"{100 * p['batches_separated']:.1f}%"
        lines.append(f"| pairs | {CLAIMS['pairs'][0]} | genuine {_f(p['genuine_mean'])} ± {_f(p['genuine_std'])}, "
                     f"impostor {_f(p['impostor_mean'])} ± {_f(p['impostor_std'])}; overlap {_f(p['overlap'])}; "
                     f"d' {_f(p['d_prime'], 2)}; identities separated {100 * p['identities_separated']:.1f}% "
                     f"(of {p['identities_with_pairs']}); batches of {p['batch_size']} separated "
                     f"{batches} |")
    for key, label in (("separation_classes", "class vectors"), ("separation_identities", "identity means")):
        s = r.get(key)
        if s:
            bound = f"; NPT bound {r['npt_bound_degrees']:.1f}" if "npt_bound_degrees" in r and key.endswith(
                "classes") else ""
            lines.append(f"| separation ({label}) | {CLAIMS['separation'][0]} | nearest-neighbour angle min "
                         f"{_f(s['min'], 1)}, 5% {_f(s['p5'], 1)}, median {_f(s['median'], 1)} degrees{bound} |")
    s = r.get("shape")
    if s and s.get("identities"):
        lines.append(f"| shape ({s['identities']} identities with >= {s['min_images']} images) | {CLAIMS['shape'][0]} | "
                     f"anisotropy median {_f(s['anisotropy_median'], 2)}, effective rank median "
                     f"{_f(s['effective_rank_median'], 2)}, angle to centre median {_f(s['angle_to_centre_median'], 1)} "
                     "degrees |")
    m = r.get("margins")
    if m:
        target = "" if m["target_degrees"] is None else (f"; below the head's {m['target_degrees']:.1f} degrees: "
                                                         f"{100 * m['below_target']:.1f}%")
        lines.append(f"| margins | {CLAIMS['margins'][0]} | median {_f(m['median'], 1)} degrees; closer to another "
                     f"identity: {100 * m['below_zero']:.1f}%{target} |")
    n = r.get("norms")
    if n:
        lines.append(f"| norms | {CLAIMS['norms'][0]} | Spearman {_f(n['spearman'])} [{_f(n['low'])}, {_f(n['high'])}] "
                     f"(95%, {n['resamples']} resamples of {n['unit']}; quality: {n['quality']}); norm "
                     f"{_f(n['norm_mean'], 2)} ± {_f(n['norm_std'], 2)} |")
    if "npt_bound" in r:
        lines += ["", f"NPT: {r['npt_bound']}."]
    lines.append("")
    lines += [f"![{title}]({name})" for title, name in plots.items()]
    return "\n".join(lines) + "\n"


def plot(r: dict, out_dir: str, raw_norms=None, quality=None) -> dict:
    """The plots of the measures present; returns {title: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}

    def save(fig, name, title):
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, name), dpi=100)
        plt.close(fig)
        files[title] = name

    if r.get("pairs"):
        fig, ax = plt.subplots(figsize=(6, 4))
        x = np.linspace(-1, 1, len(r["pairs"]["genuine_hist"]) + 1)[:-1]
        ax.step(x, r["pairs"]["genuine_hist"], where="post", label="genuine")
        ax.step(x, r["pairs"]["impostor_hist"], where="post", label="impostor")
        ax.set(xlabel="cosine", ylabel="fraction of pairs", title="pair similarities")
        ax.legend()
        save(fig, "similarities.png", "genuine and impostor similarities")
    seps = {k: r[k] for k in ("separation_classes", "separation_identities") if r.get(k)}
    if seps:
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, s in seps.items():
            ax.step(np.arange(0, 180, 2.0), s["hist"], where="post", label=k.split("_")[1])
        ax.set(xlabel="angle to the nearest neighbour (degrees)", ylabel="fraction", title="separation")
        ax.legend()
        save(fig, "angles.png", "nearest-neighbour angles")
    if r.get("shape", {}).get("spectrum"):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.bar(np.arange(1, len(r["shape"]["spectrum"]) + 1), r["shape"]["spectrum"])
        ax.set(xlabel="component", ylabel="share of within-class variance", title="mean intra-class spectrum")
        save(fig, "spectrum.png", "intra-class eigen-spectrum")
    if r.get("norms") and raw_norms is not None and quality is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter(quality, raw_norms, s=4, alpha=0.5)
        ax.set(xscale="symlog", xlabel="sharpness (variance of the Laplacian)", ylabel="feature norm",
               title=f"norm against quality (Spearman {r['norms']['spearman']:.3f})")
        save(fig, "norm_quality.png", "feature norm against image quality")
    return files
