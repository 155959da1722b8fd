"""`animegan interpolate`: walks between random faces, as a grid or an animated GIF."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "interpolate", help="draw walks between random faces (grid PNG or animated GIF)",
        description="Spherical interpolation between pairs of random noise vectors, through the newest generator "
                    "in a workdir. Walk p joins images 2p and 2p+1 of `animegan generate` with the same seed. "
                    "A .png shows a row per walk and a column per step; a .gif animates every walk at once.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="WORKDIR", help="the training run's workdir")
    parser.add_argument("--out", required=True, metavar="FILE", help="a .png grid or a .gif animation (any fsspec URL)")
    parser.add_argument("--steps", type=int, default=10, help="images per walk, end points included (default 10)")
    parser.add_argument("--pairs", type=int, default=8, help="number of walks (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the end points (default 0)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from animegan.generation import load_generator
    from animegan.latent import check_walk, output_kind, render_walks, save_walks

    # Bad arguments fail before the generator is loaded.
    output_kind(args.out)
    check_walk(args.seed, args.pairs, args.steps)
    generator = load_generator(args.checkpoint)
    save_walks(args.out, render_walks(generator, args.seed, args.pairs, args.steps))
    print(f"Wrote {args.pairs} walks of {args.steps} steps from {generator.source} (step {generator.step}) "
          f"to {args.out}")
    return 0
