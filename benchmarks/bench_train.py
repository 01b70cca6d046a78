"""Training throughput: crops per second through the real training step.

Builds the model of a training recipe (default configs/graphene.toml), feeds it
batches from `atomfinder.nn.train.augment_batch` over in-memory data shaped like
a training store (random images; speed does not depend on content) and times
the optimiser steps after a warm-up. Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from atomfinder.nn.losses import segmentation_loss
from atomfinder.nn.train import TrainConfig, TrainingData, augment_batch
from atomfinder.nn.unet import UNetConfig, build_model, count_parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs" / "graphene.toml"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    cfg = TrainConfig.from_toml(args.config)
    torch.set_num_threads(cfg.num_threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    n, k = 64, 2
    targets = np.zeros((n, k, 256, 256), np.float16)
    targets[:, 0] = 1
    data = TrainingData(rng.standard_normal((n, 1, 256, 256)).astype(np.float32), targets, None,
                        np.full(n, 0.1), ("C",))
    model = build_model(UNetConfig(in_channels=1, n_classes=k, depth=cfg.depth, width=cfg.width, norm=cfg.norm)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    use_amp = cfg.amp and device.type == "cuda"
    times = []
    for step in range(args.warmup + args.steps):
        t = time.perf_counter()
        x, y, _ = augment_batch(data, rng, cfg)
        xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = model(xt)
        loss, _ = segmentation_loss({k_: v.float() for k_, v in out.items()}, yt, dice_weight=cfg.dice_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
    per_step = float(np.median(times))
    print(json.dumps({
        "config": Path(args.config).name,
        "samples_per_s": round(cfg.batch_size / per_step, 2),
        "median_step_s": round(per_step, 4),
        "batch_size": cfg.batch_size,
        "crop_px": cfg.crop_px,
        "parameters": count_parameters(model),
        "device": str(device),
        "threads": cfg.num_threads,
        "cpu": platform.processor() or platform.machine(),
    }))


if __name__ == "__main__":
    main()
