"""`animegan export`: the generator as a TensorFlow SavedModel, for serving without this package."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="write the generator as a TensorFlow SavedModel (noise -> uint8 images)",
        description="Export the newest generator in a workdir as a TensorFlow SavedModel whose serving_default "
                    "signature maps `noise` (float32 [batch, noise_dim]) to `images` (uint8 [batch, 64, 64, 3]). "
                    "TensorFlow alone loads it; animegan is not needed.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="WORKDIR", help="the training run's workdir")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for the SavedModel (local or any fsspec URL); an earlier export is replaced")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from animegan.export import SIGNATURE, export_saved_model

    info = export_saved_model(args.checkpoint, args.out)
    print(f"Exported the generator of {info.source} (step {info.step}) to {info.out}: signature {SIGNATURE!r}, "
          f"noise float32 [batch, {info.noise_dim}] -> images uint8 [batch, 64, 64, 3]")
    return 0
