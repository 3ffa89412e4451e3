"""The experts' VAEs competing on ground-truth regions, without the attention networks.

Every expert is given each scene's visible regions front first (as a ``--gt-masks`` model is,
but with K experts), the competition picks a winner per region and only winners are trained:
a k-means over objects in which the encoders align and the decoders draw. It isolates whether
the VAEs *can* sort the classes; ``benchmarks/expert_preference.py`` measures whether trained
ones do. Prints AMI(winner, class) of the objects of held-out scenes every ``--every``
iterations, the winners by class (experts × circle, square, triangle) and the usage handicap.

    python benchmarks/vae_competition.py --data data/random-train-32.npz \\
        --test data/random-test-32.npz --config runs/X/config.json --means --balance 0.1

Sixteenth session's numbers: docs/competition.md, "one shape template per expert".
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_mutual_info_score

from econ_scenes.config import RunConfig
from econ_scenes.data import load_scenes
from econ_scenes.errors import EconError
from econ_scenes.model import ECON
from econ_scenes.model.competition import usage_handicap
from econ_scenes.scene import as_image_tensor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="training scenes (.npz)")
    parser.add_argument("--test", type=Path, required=True, help="held-out scenes (.npz)")
    parser.add_argument("--config", type=Path, required=True, help="a run's config.json")
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--temperature", type=float, default=0.03)
    parser.add_argument("--lam", type=float, default=0.0, help="competition λ")
    parser.add_argument("--means", action="store_true",
                        help="deterministic: argmax on posterior means, winners trained on their "
                             "means (--temperature is then not used)")
    parser.add_argument("--on-means", action="store_true",
                        help="model.competition_on_means: compete on means, train the winners "
                             "on sampled latents")
    parser.add_argument("--balance", type=float, default=0.0, help="usage balance rate")
    parser.add_argument("--template-lr", type=float, default=1e-3)
    parser.add_argument("--template-noise", type=float, default=0.0,
                        help="start the templates as different smooth random shapes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    if args.n_test < 1 or args.iterations < 0 or args.every < 1:
        raise EconError("--n-test and --every must be >= 1, --iterations >= 0")
    config = dataclasses.replace(
        RunConfig.load(args.config).model, competition_lambda=args.lam,
        competition_temperature=args.temperature, competition_anneal_iterations=0,
        competition_on_means=args.on_means)
    model = ECON(config)
    k = config.n_experts
    if args.template_noise and config.shape_decoder != "template":
        raise EconError("--template-noise needs a model with shape_decoder='template'")
    if args.template_noise:
        with torch.no_grad():
            noise = torch.randn(k, 1, 8, 8)
            model.experts.decoder.template.logits += args.template_noise * torch.nn.functional.\
                interpolate(noise, size=config.image_size, mode="bicubic", align_corners=True)
    train, test = load_scenes(args.data), load_scenes(args.test).subset(slice(0, args.n_test))
    images = as_image_tensor(train.images, config.image_size)
    regions = torch.from_numpy(train.regions_front_first())
    test_images = as_image_tensor(test.images, config.image_size)
    test_regions = torch.from_numpy(test.regions_front_first())
    objects = config.n_steps - 1
    if regions.shape[1] != config.n_steps or test_regions.shape[1] != config.n_steps:
        raise EconError(f"the scenes have {regions.shape[1]} and {test_regions.shape[1]} layers, "
                        f"the model takes T = {config.n_steps}: one step per layer")
    test_classes = test.classes[:, ::-1][:, :objects].ravel()
    if test_classes.min() < 1:
        raise EconError("the test scenes need objects in every layer (no padding, no background "
                        "in the first T - 1 layers)")

    templates = [p for n, p in model.named_parameters() if "template" in n]
    others = [p for n, p in model.named_parameters() if "template" not in n]
    optimiser = torch.optim.Adam([{"params": others, "lr": 1e-3},
                                  {"params": templates, "lr": args.template_lr}])
    handicap = torch.zeros(k, dtype=torch.float64)
    start = time.time()
    for iteration in range(args.iterations + 1):
        if iteration % args.every == 0:
            model.eval()
            with torch.no_grad():
                winner = model.infer(test_images, stochastic=False, gt_regions=test_regions,
                                     search=False).decomposition.winner  # as trained
            model.train()
            winner = winner[:, :objects].numpy().ravel()
            table = np.zeros((k, 3), dtype=int)
            np.add.at(table, (winner, test_classes - 1), 1)
            ami = adjusted_mutual_info_score(test_classes, winner)
            print(f"{iteration:5d} {time.time() - start:6.0f} s  AMI {ami:.3f}  "
                  f"winners {table.tolist()}  handicap "
                  f"{[round(v, 2) for v in handicap.tolist()]}", flush=True)
        rows = torch.randint(0, len(images), (32,))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.infer(images[rows], stochastic=not args.means, gt_regions=regions[rows],
                              handicap=handicap.float() if args.balance else None)
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
        if args.balance:
            wins = torch.bincount(out.decomposition.winner.flatten(), minlength=k)
            handicap = usage_handicap(handicap, wins, args.balance)


if __name__ == "__main__":
    main()
