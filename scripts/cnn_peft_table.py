"""Issue 11's closing numbers: FixMatch vs FineSSL test top-1 on the embedded profile for LP, BN-tuning, BitFit,
SSF, FFT and LP-FT of EfficientNet-Lite0's top 2 blocks (partial feature cache), N seeds, one command:

    python scripts/cnn_peft_table.py --seeds 1 2 3 --runs-dir runs/store [--lr-check]

Runs go through the shared run store (the same runs as the Table 7 / 10 notebooks with the same budget), seed by
seed, so an interrupted call resumes and an early stop still leaves complete seeds. ``--lr-check`` first trains
FineSSL FFT (seed 1) with the fine-tuned blocks at lr 0.03 (the heads' lr) next to the preset's 0.003.
"""
from __future__ import annotations

import argparse
import time

from finessl_lab import paper


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--steps", type=int, default=0, help="steps per run (0 = the notebooks' default)")
    ap.add_argument("--runs-dir", default="runs/store")
    ap.add_argument("--out", default="", help="write the per-run CSV and the table CSV here")
    ap.add_argument("--lr-check", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.time()
    if args.lr_check:
        for blr in (0.03, 0.003):
            p = paper.parameters(seeds=[args.seeds[0]], runs_dir=args.runs_dir, sets=[f"optim.backbone_lr={blr}"])
            frame, _ = paper.strategy_comparison(p, ["fft"], ["finessl"], "lr_check", "lr_check", args.steps)
            run = p.store.get(paper.strategy_config(p, "fft", "finessl", args.seeds[0], paper.cnn_steps(p, args.steps)))
            curve = [round(float(v), 1) for v in run.metrics["test_top1"]]
            print(f"lr check: FineSSL FFT top 2 blocks, backbone_lr {blr}, heads 0.03: test top-1 per epoch {curve}",
                  flush=True)
    for i in range(1, len(args.seeds) + 1):
        p = paper.parameters(seeds=args.seeds[:i], runs_dir=args.runs_dir)
        frame, table = paper.cnn_peft_table(p, peft_steps=args.steps)
        print(f"\n{i} seed(s), {paper.cnn_steps(p, args.steps)} steps per run, {time.time() - t0:.0f} s so far\n"
              f"{table.to_string()}", flush=True)
    if args.out:
        from finessl_lab import io

        io.write_csv(f"{args.out}/cnn_peft_runs.csv", frame)
        io.write_csv(f"{args.out}/cnn_peft_table.csv", table.reset_index(names="strategy"))
    print(f"wall time {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
