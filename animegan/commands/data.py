"""`animegan data ...`: tools for training data (preview)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="look at and prepare training data")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    preview = actions.add_parser(
        "preview", help="write a grid of augmented training images",
        description="Write a grid of training images exactly as the training pipeline delivers them "
                    "(decoded, cropped, augmented), like the seed notebook's visualisation step.",
    )
    preview.add_argument("--data", required=True, metavar="URL", help="images: folder, glob, .zip or gs://...")
    preview.add_argument("--out", required=True, metavar="PNG", help="where to write the grid")
    preview.add_argument("--num", type=int, default=64, help="number of images (default 64)")
    preview.add_argument("--seed", type=int, default=0, help="shuffle and augmentation seed (default 0)")
    preview.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="random flips")
    preview.add_argument("--rotation", type=float, default=10.0, help="maximum rotation in degrees")
    preview.add_argument("--shift", type=float, default=0.1, help="maximum shift as a fraction of the size")
    preview.set_defaults(run=run_preview)


def run_preview(args: argparse.Namespace) -> int:
    if args.num <= 0:
        raise ValueError(f"--num must be a positive integer, got {args.num}")
    from animegan.data.augment import Augmentation
    from animegan.data.preview import augmented_images
    from animegan.data.sources import list_images, open_source
    from animegan.grids import image_grid, save_png

    source = open_source(args.data)
    items = list_images(source)
    images = augmented_images(source, items, args.num, seed=args.seed,
                              augmentation=Augmentation(args.flip, args.rotation, args.shift))
    save_png(args.out, image_grid(images))
    print(f"Wrote {len(images)} augmented images from {args.data} ({len(items)} images in all) to {args.out}")
    return 0
