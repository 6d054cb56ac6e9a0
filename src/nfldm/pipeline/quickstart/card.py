"""The model card's headline numbers of a quickstart run: one line per stage, from the results
the finished stages recorded in state.json (the optional stages' apart: :func:`extra_metrics`,
which the bundle's renderer / bev / image-prior sections show). Used by the bundle stage and by
report.html."""

from __future__ import annotations

__all__ = ["card_metrics", "extra_metrics", "stage_seconds", "time_by_machine"]


def _trainer_seconds(last) -> float:
    """Training seconds a stage's result records: the trainer's cumulative "time" (sessions before a
    resume included), summed over levels for the ldm stages; 0 when none is recorded."""
    if not isinstance(last, dict):
        return 0.0
    if isinstance(last.get("time"), (int, float)):
        return float(last["time"])
    return sum(_trainer_seconds(v) for v in last.values() if isinstance(v, dict))


def stage_seconds(record: dict) -> float:
    """A finished stage's seconds over all the sessions it ran in: its own clock covers only the
    session that finished it, the trainer's covers the training's earlier sessions too."""
    result = record.get("result") if isinstance(record.get("result"), dict) else {}
    return max(float(record.get("seconds", 0.0)), _trainer_seconds(result.get("last")))


def time_by_machine(state: dict) -> str:
    """'H h: A h on cpu (2 cores), B h on cuda (NVIDIA H200)' over the finished stages (a stage
    that ran on several machines counts on the one that finished it; stages recorded before
    machines were: 'machine not recorded')."""
    per: dict[str, float] = {}
    for rec in state["stages"].values():
        key = rec.get("machine") or "machine not recorded"
        per[key] = per.get(key, 0.0) + stage_seconds(rec)
    total = sum(per.values())

    def fmt(sec: float) -> str:
        return f"{sec / 3600:.1f} h" if sec >= 3600 else f"{sec / 60:.1f} min"

    parts = ", ".join(f"{fmt(v)} on {k}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]))
    return f"{fmt(total)} ({parts})" if per else "0 min"


def card_metrics(state: dict) -> dict[str, str]:
    """The headline number of every stage, as text, from the finished stages' results."""
    stages, out = state["stages"], {}
    m1 = stages.get("eval_scene_ae", {}).get("result", {}).get("metrics", {})
    if m1.get("model"):
        base = max(m1.get("nearest_frame", {}).get("psnr", float("-inf")), m1.get("mean_colour", {}).get("psnr", float("-inf")))
        lp = f" / LPIPS {m1['model']['lpips']:.3f}" if "lpips" in m1["model"] else ""
        out["stage 1: held-out view PSNR / SSIM / depth median abs-rel" + (" / LPIPS (AlexNet)" if lp else "")] = (
            f"{m1['model']['psnr']:.2f} dB / {m1['model']['ssim']:.3f} / {m1['model']['depth_abs_rel_median']:.3f}{lp} "
            f"(better trivial baseline: {base:.2f} dB)")
    m2 = stages.get("eval_latent_ae", {}).get("result", {}).get("metrics", {})
    if "render" in m2:
        r = m2["render"]
        out["stage 2: PSNR of views rendered from decoded V (cost vs original V)"] = (
            f"{r['psnr_decoded_V']:.2f} dB ({r['psnr_cost_db']:.2f} dB)")
    if "codebook" in m2:
        out["stage 2: codebook usage c / f"] = " / ".join(
            f"{m2['codebook'][k].get('used', '-')}/{m2['codebook'][k].get('codebook_size', '-')}" for k in ("c", "f")
            if k in m2["codebook"])
    g3 = stages.get("eval_generation", {}).get("result", {}).get("metrics", {})
    inc, m3, floor = g3.get("inception", {}), g3.get("efficientnet_lite0", {}), g3.get("floor", {})
    if "fid" in inc:
        text = f"{inc['fid']:.1f} / {inc['kid']:.3f} ({g3['num_generated']} generated vs {g3['num_real']} real views)"
        if "inception" in floor:
            text += (f"; floor, real {floor['split']} views vs the same test views: {floor['inception']['fid']:.1f} / "
                     f"{floor['inception']['kid']:.3f}")
        out["stage 3: Inception FID / KID to real test views (GSN protocol, docs/metrics.md)"] = text
    if "frechet_distance" in m3:
        out["stage 3: offline Frechet distance / KID to real test views (EfficientNet-Lite0; NOT comparable to published FID)"] = (
            f"{m3['frechet_distance']:.1f} / {m3['kid']:.3f}")
    return out


def _held_out(last: dict) -> str:
    """'best held-out loss X at step N[, stopped early]' from a training's last metrics, or ''."""
    if not isinstance(last, dict) or last.get("val_best") is None:
        return ""
    return (f"best held-out loss {last['val_best']:.4g} at step {last.get('val_best_step')}"
            + (", stopped early" if last.get("stopped_early") else ""))


def extra_metrics(state: dict) -> dict[str, dict[str, str]]:
    """{optional stage: {metric: text}} for the optional stages that finished (renderer,
    bev_ldm, image_prior): the bundle's model card and the report show them."""
    stages, out = state["stages"], {}
    r = stages.get("renderer", {}).get("result")
    if r:
        lines, m = {}, r.get("metrics", {}).get("model", {})
        if m:
            lp = f" / {m['lpips']:.3f}" if "lpips" in m else ""
            lines["renderer: held-out view PSNR / SSIM" + (" / LPIPS (AlexNet)" if lp else "") + " from stage-1 V"] = (
                f"{m['psnr']:.2f} dB / {m['ssim']:.3f}{lp}")
        lines["renderer: training steps (planned)"] = str(r.get("steps"))
        out["renderer"] = lines
    b = stages.get("bev_ldm", {}).get("result")
    if b:
        lines = {"BEV levels: training steps (planned) g / c / f": " / ".join(
            str(b.get("levels", {}).get(lv, {}).get("steps", "-")) for lv in "gcf")}
        held = {lv: _held_out(b.get("last", {}).get(lv, {})) for lv in "gcf"}
        if any(held.values()):
            lines["BEV levels: held-out loss"] = "; ".join(f"{lv}: {t}" for lv, t in held.items() if t)
        out["bev_ldm"] = lines
    p = stages.get("image_prior", {}).get("result")
    if p:
        lines = {"image prior: training steps (planned)": str(p.get("steps"))}
        if _held_out(p.get("last", {})):
            lines["image prior: held-out loss"] = _held_out(p["last"])
        out["image_prior"] = lines
    return out
