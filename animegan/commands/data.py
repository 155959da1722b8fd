"""`animegan data ...`: tools for training data (preview, pack)."""

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

    pack = actions.add_parser(
        "pack", help="pack images into large shards for fast streaming from object storage",
        description="Write the images of SRC (folder, glob, .zip, gs://bucket/prefix, or another pack) as large "
                    "tar shards plus a manifest.json to DST (any fsspec URL). Train on the result with "
                    "--data DST. Interrupted? Run the same command again: verified shards are kept.",
    )
    pack.add_argument("source", metavar="SRC", help="images to pack")
    pack.add_argument("destination", metavar="DST", help="folder or bucket prefix for the shards and manifest")
    pack.add_argument("--shard-size", default="64MB", metavar="SIZE",
                      help="target size of each shard, e.g. 64MB, 256MiB, 1GB (default 64MB)")
    pack.add_argument("--seed", type=int, default=0, help="seed of the one-off shuffle before packing (default 0)")
    pack.add_argument("--decoded", action="store_true",
                      help="store each image as its decoded 64x64 RGB pixels (12,288 bytes), so that training "
                           "decodes nothing; about 3x the size of the JPEGs")
    pack.set_defaults(run=run_pack)


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


def run_pack(args: argparse.Namespace) -> int:
    import sys

    from animegan.data.packing import pack, parse_size

    shard_bytes = parse_size(args.shard_size)
    print(f"Packing {args.source} into shards of about {shard_bytes / 1e6:,.1f} MB at {args.destination}")
    try:
        result = pack(args.source, args.destination, shard_bytes=shard_bytes, seed=args.seed, decoded=args.decoded)
    except KeyboardInterrupt:
        print("animegan: interrupted; the shards written so far are kept: run the same command again to "
              "finish the pack", file=sys.stderr)
        return 130
    print(f"Packed {result.images:,} images into {result.shards} shards ({result.bytes / 1e6:,.1f} MB; "
          f"{result.reused_shards} kept from an earlier run) in {result.seconds:.1f} s: {result.manifest}")
    if result.skipped:
        print(f"Skipped {len(result.skipped)} unreadable image(s), e.g. {'; '.join(result.skipped[:3])}")
    print(f"Train on it with: animegan train --data {args.destination}")
    return 0
