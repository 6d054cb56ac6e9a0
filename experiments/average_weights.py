"""Average the weights of level directories of one architecture into a new level directory: a
model soup of runs that share a start (Wortsman et al. 2022), or the snapshots of one run
(``--set snapshot_every=N``: RUN/snapshots/step_NNNNNN/), which is a longer EMA window after the
fact (a box window over the snapshots' steps; Karras et al. 2024 choose EMA lengths post hoc in the
same spirit). The output is a level directory that `load_level` and
``bev_levers.py sample --psi-c`` take (model.safetensors, model.json, config.json of the first
input).

    python experiments/average_weights.py --levels out/snap/run/c/snapshots/step_00{5,6,7,8}000 \\
        --out out/snap/avg5_8/c [--weights 1 1 1 1]

Inputs whose config (architecture) or tensor names and shapes differ are refused with one line
naming the file; the output is written to a temporary directory and moved into place at the end.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def average(levels: list[Path], weights: list[float]) -> dict:
    """{name: tensor} = sum_i w_i * state_i / sum_i w_i over the levels' model.safetensors (float32
    accumulation, each tensor returned in its first input's dtype)."""
    from safetensors.torch import load_file

    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights must be >= 0 with a positive sum, got {weights}")
    acc: dict = {}
    dtypes: dict = {}
    for i, (lv, w) in enumerate(zip(levels, weights)):
        f = lv / "model.safetensors"
        if not f.exists():
            raise FileNotFoundError(f"{f}: no model.safetensors (not a level directory)")
        sd = load_file(str(f))
        if i == 0:
            acc = {k: v.float() * (w / total) for k, v in sd.items()}
            dtypes = {k: v.dtype for k, v in sd.items()}
            continue
        if set(sd) != set(acc) or any(sd[k].shape != acc[k].shape for k in sd):
            raise ValueError(f"{f}: tensor names or shapes differ from {levels[0] / 'model.safetensors'}")
        for k, v in sd.items():
            acc[k] += v.float() * (w / total)
    return {k: v.to(dtypes[k]).contiguous() for k, v in acc.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", nargs="+", required=True, type=Path, help="level directories (model.safetensors, config.json)")
    ap.add_argument("--weights", nargs="+", type=float, help="one weight per level (default: equal)")
    ap.add_argument("--out", required=True, type=Path, help="the new level directory")
    args = ap.parse_args()
    weights = args.weights or [1.0] * len(args.levels)
    try:
        if len(weights) != len(args.levels):
            raise ValueError(f"--weights: {len(weights)} weights for {len(args.levels)} levels")
        configs = []
        for lv in args.levels:
            f = lv / "config.json"
            if not f.exists():
                raise FileNotFoundError(f"{f}: missing (not a level directory)")
            configs.append(json.loads(f.read_text()))
        for lv, cfg in zip(args.levels[1:], configs[1:]):
            if cfg.get("model") != configs[0].get("model"):
                raise ValueError(f"{lv / 'config.json'}: another architecture than {args.levels[0] / 'config.json'}")
        from safetensors.torch import save_file

        state = average(args.levels, weights)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"average_weights: {e}")
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / "model.safetensors"))
    shutil.copy(args.levels[0] / "config.json", tmp / "config.json")
    infos = [json.loads((lv / "model.json").read_text()) if (lv / "model.json").exists() else {} for lv in args.levels]
    meta = {"averaged": [str(p) for p in args.levels], "weights": weights, "ema": all(i.get("ema") for i in infos)}
    (tmp / "model.json").write_text(json.dumps(meta, indent=1))
    if args.out.exists():
        shutil.rmtree(args.out)
    tmp.rename(args.out)
    print(f"averaged {len(args.levels)} levels -> {args.out}")


if __name__ == "__main__":
    main()
