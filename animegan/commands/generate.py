"""`animegan generate`: images from a trained generator."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="write images from a trained generator",
        description="Write N PNG images (and optionally a grid) from the newest generator in a workdir. "
                    "The same seed gives the same images.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="WORKDIR", help="the training run's workdir")
    parser.add_argument("--num", type=int, default=64, help="number of images (default 64)")
    parser.add_argument("--out", required=True, metavar="URL", help="folder to write 000000.png, ... into")
    parser.add_argument("--grid", metavar="PNG", help="also write all images as one grid picture")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per generator call (default 64)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.num <= 0:
        raise ValueError(f"--num must be a positive integer, got {args.num}")
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
    from animegan import storage
    from animegan.generation import generate_images, load_generator
    from animegan.grids import encode_image, image_grid, save_png

    generator = load_generator(args.checkpoint)
    images = generate_images(generator, args.seed, range(args.num), args.batch_size)
    storage.makedirs(args.out)
    for index, image in enumerate(images):
        storage.write_bytes(storage.join(args.out, f"{index:06d}.png"), encode_image(image))
    print(f"Wrote {len(images)} images from {generator.source} (step {generator.step}) to {args.out}")
    if args.grid:
        save_png(args.grid, image_grid(images))
        print(f"Grid: {args.grid}")
    return 0
