"""`animegan generate`: many images from a trained generator, on one process or K Ray workers."""

from __future__ import annotations

import argparse

# A grid of more images than this would be too large to look at.
GRID_LIMIT = 256


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="write images from a trained generator",
        description="Write N images (and optionally a grid) from the newest generator in a workdir, with a "
                    "manifest.json. Image i is the same for the same generator and seed, whatever the number of "
                    "workers. Running the same command again after an interruption writes only the missing files.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="WORKDIR", help="the training run's workdir")
    parser.add_argument("--num", type=int, default=64, help="number of images (default 64)")
    parser.add_argument("--out", required=True, metavar="URL",
                        help="folder (local or any fsspec URL) to write 000000.png, ... and manifest.json into")
    parser.add_argument("--grid", metavar="PNG", help=f"also write the first {GRID_LIMIT} images at most as one grid")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per generator call (default 64)")
    parser.add_argument("--format", dest="image_format", default="png", choices=["png", "jpg", "shards"],
                        help="one file per image (png, jpg), or tar shards of PNGs (default png)")
    parser.add_argument("--images-per-shard", type=int, default=1000, help="images per tar with --format shards")
    parser.add_argument("--workers", type=int, default=1,
                        help="Ray workers, each loading the generator once and writing its own contiguous range "
                             "of images (default 1: this process, without Ray, unless --address or "
                             "--gpus-per-worker asks for the cluster)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per Ray worker (default 1)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray worker (default 0)")
    parser.add_argument("--address", help="Ray cluster address to join (default: RAY_ADDRESS, else a local instance)")
    parser.add_argument("--overwrite", action="store_true",
                        help="regenerate every file, even when --out holds another job's images")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from animegan.distributed_generation import GenerationRequest, generate_many
    from animegan.generation_output import OutputNaming, read_images
    from animegan.grids import image_grid, save_png

    request = GenerationRequest(
        checkpoint=args.checkpoint, out=args.out, count=args.num, seed=args.seed, image_format=args.image_format,
        batch_size=args.batch_size, images_per_shard=args.images_per_shard, workers=args.workers,
        cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker, overwrite=args.overwrite,
    ).validate()
    summary = generate_many(request, address=args.address)
    already = f" ({summary.count - summary.generated_images} were already there)" \
        if summary.generated_images < summary.count else ""
    print(f"Wrote {summary.count} images from {summary.generator_source} (step {summary.generator_step}) "
          f"to {args.out}{already}")
    if summary.generated_images:
        phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in summary.phase_seconds.items())
        print(f"{summary.images_per_second:.1f} images/s on {args.workers} worker(s); worker time: {phases}")
    if args.grid:
        naming = OutputNaming(request.count, request.image_format, request.images_per_shard)
        save_png(args.grid, image_grid(read_images(summary.out, naming, range(min(request.count, GRID_LIMIT)))))
        print(f"Grid: {args.grid}")
    return 0
