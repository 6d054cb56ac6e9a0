"""Held-out loss curves of a release run's trainings, one panel each, in one picture.

    python experiments/release_curves.py --release out/release --out docs/images/release_heldout_curves.png

Reads RUN/metrics.jsonl of every training the quickstart ran (stage 1, stage 2, psi_g / psi_c /
psi_f, the fine-tuned renderer, the BEV levels, the image prior) and plots its held-out loss
(``val_loss``) against the step, marking the best step. Trainings without held-out checks are
left out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

RUNS = [("scene_ae", "stage 1"), ("latent_ae", "stage 2"), ("ldm/g", "psi_g"), ("ldm/c", "psi_c"),
        ("ldm/f", "psi_f"), ("renderer", "renderer"), ("bev_ldm/g", "BEV psi_g"), ("bev_ldm/c", "BEV psi_c"),
        ("bev_ldm/f", "BEV psi_f"), ("image_prior", "image prior")]


def held_out(metrics: Path) -> list[tuple[int, float]]:
    """(step, held-out loss) of a run's metrics.jsonl, in order (empty if it has none)."""
    from nfldm.utils.plot import read_metrics

    return [(int(r["step"]), float(r["val_loss"])) for r in read_metrics(metrics) if "val_loss" in r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--release", required=True, help="a quickstart folder")
    ap.add_argument("--out", required=True, help="the PNG to write")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rel = Path(args.release)
    curves = [(title, held_out(rel / run / "metrics.jsonl")) for run, title in RUNS
              if (rel / run / "metrics.jsonl").is_file()]
    curves = [(t, c) for t, c in curves if c]
    if not curves:
        raise SystemExit(f"error: {rel}: no training with held-out checks (RUN/metrics.jsonl with val_loss)")
    cols = min(5, len(curves))
    rows = (len(curves) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, (title, c) in zip(axes.flat, curves):
        steps, loss = zip(*c)
        best = min(range(len(loss)), key=loss.__getitem__)
        ax.plot(steps, loss, ".-", ms=3)
        ax.plot([steps[best]], [loss[best]], "o", color="tab:red", ms=5)
        ax.set_title(f"{title}: best {loss[best]:.4g} @ {steps[best]:,}", fontsize=9)
        ax.set_yscale("log")
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.supxlabel("step", fontsize=9)
    fig.supylabel("held-out loss", fontsize=9)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} ({len(curves)} trainings)")


if __name__ == "__main__":
    main()
