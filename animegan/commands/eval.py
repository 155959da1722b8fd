"""`animegan eval`: FID, KID and Inception Score of a trained generator, or of any folder of images, against real images.

    animegan eval --checkpoint runs/faces --data faces.zip --num 1000 --real-baseline
    animegan eval --images other-model-samples/ --data faces.zip --json scores.json

With --checkpoint, the reference is the workdir's held-out split of --data when
it has one (never trained on), else the images at --data; its features are
cached in the workdir (real-stats/), so a second evaluation reads no images.
With --images, the images (another model's samples, or a second set of real
images) are read and resized exactly as training reads real images (64x64), so
every model is scored on the same scale. The network is the standard FID
Inception (`animegan fid-weights` fills its cache once).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

IS_RANDOM_NOTE = "Inception Score from a randomly initialised classifier: a smoke number only"
DEFAULT_GENERATED = 1000


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="FID, KID and Inception Score of a trained generator or a folder of images",
        description="Score the newest generator in a workdir (--checkpoint), or a folder of images from any model "
                    "(--images), against real images: the workdir's held-out split of --data when it has one, "
                    "else the images at --data. Prints a table with the sample counts and writes it as JSON.",
    )
    scored = parser.add_mutually_exclusive_group(required=True)
    scored.add_argument("--checkpoint", metavar="WORKDIR", help="the training run's workdir")
    scored.add_argument("--images", metavar="DIR_OR_URL",
                        help="score these images instead of a generator (folder, glob, .zip, gs://...)")
    parser.add_argument("--data", required=True, metavar="URL", help="the real images (folder, glob, .zip, gs://...)")
    parser.add_argument("--num", type=int,
                        help=f"generated images (default {DEFAULT_GENERATED}); with --images, use NUM of them "
                             f"chosen by --seed (default all)")
    parser.add_argument("--num-real", type=int, metavar="M",
                        help="use M of the reference images, chosen by --seed (default: all)")
    parser.add_argument("--real-baseline", action="store_true",
                        help="also score as many real images outside the reference (the run's training images): "
                             "the floor a perfect generator reaches at this sample size")
    parser.add_argument("--inception-weights", default="fid", metavar="WEIGHTS",
                        help="fid (default: the standard FID network, from the cache `animegan fid-weights` fills), "
                             "a copy of that cache folder (path or URL), or random (tests; figures not comparable "
                             "with published FID)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the generated images (default 0)")
    parser.add_argument("--batch-size", type=int, default=50, help="images per Inception batch (default 50)")
    parser.add_argument("--json", "--out", dest="out", metavar="JSON",
                        help="where to write the results (default with --checkpoint: "
                             "<WORKDIR>/eval/step-<step>.json; with --images: not written)")
    parser.add_argument("--stats-cache", metavar="URL",
                        help="folder for cached real-image features (default with --checkpoint: "
                             "<WORKDIR>/real-stats; with --images: none)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.num is not None and args.num < 4:
        raise ValueError(f"--num must be at least 4 (KID compares subsets of half the images), got {args.num}")
    if args.num_real is not None and args.num_real < 4:
        raise ValueError(f"--num-real must be at least 4, got {args.num_real}")
    from animegan.metrics.features import locate_weights

    locate_weights(args.inception_weights)  # missing weights fail here, first, before any image is read
    return _score_generator(args) if args.checkpoint else _score_images(args)


def _score_generator(args: argparse.Namespace) -> int:
    from animegan import storage
    from animegan.data.index import DataIndex
    from animegan.generation import load_generator
    from animegan.metrics.during_training import real_stats_cache
    from animegan.metrics.evaluation import Evaluator, choose_reference
    from animegan.metrics.features import InceptionExtractor
    from animegan.workdir import RunLayout

    count = args.num or DEFAULT_GENERATED
    # Batches no larger than --num: every batch is padded to that size.
    extractor = InceptionExtractor(args.inception_weights, min(args.batch_size, count))
    generator = load_generator(args.checkpoint)
    layout = RunLayout(storage.absolute(args.checkpoint))
    index = DataIndex.load(layout.data_index) if storage.exists(layout.data_index) else None
    reference, others = choose_reference(args.data, index, args.num_real, args.seed)
    _check_baseline(args, reference, others)
    evaluator = Evaluator(extractor, reference, args.stats_cache or real_stats_cache(layout.workdir))

    print(f"Generator: {generator.source} (step {generator.step})\nReference: {reference.label}\n"
          f"Extractor: {extractor.label}")
    rows = [{"name": f"generator (step {generator.step})", "images": count,
             **evaluator.evaluate_generator(generator, count, args.seed)}]
    document = {"checkpoint": layout.workdir, "generator_source": generator.source, "generator_step": generator.step}
    _report(args, evaluator, others, rows, document, args.out or layout.path("eval", f"step-{generator.step:08d}.json"))
    return 0


def _score_images(args: argparse.Namespace) -> int:
    from animegan import storage
    from animegan.data.sources import list_images, open_source
    from animegan.metrics.evaluation import Evaluator, choose_reference, sample_items
    from animegan.metrics.features import InceptionExtractor
    from animegan.metrics.real_stats import read_images

    images_url = storage.absolute(args.images)
    source = open_source(images_url)
    items = sample_items(list_images(source), args.num, args.seed)
    reference, others = choose_reference(args.data, None, args.num_real, args.seed)
    _check_baseline(args, reference, others)
    images, skipped = read_images(source, items)
    if len(images) < 4:
        raise ValueError(f"--images {args.images}: {len(images)} readable image(s); at least 4 are needed "
                         f"(KID compares subsets of half of them)")
    extractor = InceptionExtractor(args.inception_weights, min(args.batch_size, len(images)))
    evaluator = Evaluator(extractor, reference, args.stats_cache)

    print(f"Images: {len(images)} at {images_url}"
          f"{f' ({len(skipped)} unreadable skipped, e.g. {skipped[0]})' if skipped else ''}\n"
          f"Reference: {reference.label}\nExtractor: {extractor.label}")
    features = extractor.extract(images, log=print)
    rows = [{"name": f"images at {images_url}", "images": len(features), **evaluator.scores(features)}]
    _report(args, evaluator, others, rows, {"images_url": images_url}, args.out)
    return 0


def _check_baseline(args: argparse.Namespace, reference, others: list[str]) -> None:
    if args.real_baseline and not others:
        raise ValueError(f"--real-baseline needs real images outside the reference, but the reference is all "
                         f"{len(reference.items)} images at {args.data} (the workdir has no held-out split of it); "
                         f"give --num-real smaller than {len(reference.items)}")


def _report(args: argparse.Namespace, evaluator, others: list[str], rows: list[dict[str, Any]],
            document: dict[str, Any], out: str | None) -> None:
    """Adds the real baseline, prints the table and notes, and writes the JSON document to `out` (if any)."""
    from animegan import storage
    from animegan.metrics.evaluation import sample_items

    extractor, reference = evaluator.extractor, evaluator.reference
    if args.real_baseline:
        features = evaluator.real_features(reference.source_url, sample_items(others, rows[0]["images"], args.seed))
        rows.append({"name": "real images outside the reference", "images": len(features),
                     **evaluator.scores(features)})
    for row in rows:
        row.pop("seconds", None)
        row["extractor"] = extractor.label
    document = {**document, "data": reference.source_url, "reference": reference.label,
                "reference_images": len(reference.items), "extractor": extractor.label,
                "comparable_with_published_fid": extractor.comparable, "seed": args.seed, "rows": rows}
    notes = _notes(extractor, rows)
    if notes:
        document["notes"] = notes
    print()
    print(format_table(rows))
    print(f"Reference: {len(reference.items)} real images")
    for note in notes:
        print(f"Note: {note}")
    if out:
        storage.write_text(out, json.dumps(document, indent=2) + "\n")
        print(f"Wrote {out}")


def _notes(extractor, rows: list[dict[str, Any]]) -> list[str]:
    from animegan.metrics.fid_weights import PYTORCH_FID

    notes = []
    if not extractor.comparable:
        notes.append(f"figures from {extractor.label}: compare them only with each other")
    if extractor.is_random:
        notes.append(IS_RANDOM_NOTE)
    elif any(row.get("inception_score") is None for row in rows):
        notes.append(f"no Inception Score: these FID weights have no classifier (convert {PYTORCH_FID.label} with "
                     f"`animegan fid-weights --from FILE` for it)")
    return notes


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows of scores as an aligned text table; a metric no row has is left out, a missing score shows n/a."""
    columns = [("images", "images", "{:d}"), ("FID", "fid", "{:.4f}"), ("KID", "kid", "{:.3e}"),
               ("KID std", "kid_std", "{:.1e}"), ("IS", "inception_score", "{:.3f}"),
               ("IS std", "inception_score_std", "{:.3f}")]
    columns = [column for column in columns if any(column[1] in row for row in rows)]
    name_width = max(len("images compared"), *(len(row["name"]) for row in rows))
    lines = ["images compared".ljust(name_width) + "".join(f"{title:>12}" for title, _, _ in columns)]
    for row in rows:
        cells = ["n/a" if row.get(key) is None else template.format(row[key]) for _, key, template in columns]
        lines.append(row["name"].ljust(name_width) + "".join(f"{cell:>12}" for cell in cells))
    return "\n".join(lines)
