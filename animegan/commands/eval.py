"""`animegan eval`: FID, KID and Inception Score of a trained generator against real images.

    animegan eval --checkpoint runs/faces --data faces.zip --num 1000 --inception-weights random --real-baseline

The reference is the workdir's held-out split of --data when it has one (never
trained on), else the images at --data. The real-image features are cached in
the workdir (real-stats/), so a second evaluation reads no images.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

IS_RANDOM_NOTE = "Inception Score from a randomly initialised classifier: a smoke number only"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="FID, KID and Inception Score of a trained generator",
        description="Score the newest generator in a workdir against real images: the workdir's held-out split "
                    "of --data when it has one, else the images at --data. Prints a table and writes it as JSON.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="WORKDIR", help="the training run's workdir")
    parser.add_argument("--data", required=True, metavar="URL", help="the real images (folder, glob, .zip, gs://...)")
    parser.add_argument("--num", type=int, default=1000, help="generated images (default 1000)")
    parser.add_argument("--num-real", type=int, metavar="M",
                        help="use M of the reference images, chosen by --seed (default: all)")
    parser.add_argument("--real-baseline", action="store_true",
                        help="also score --num real images outside the reference (the run's training images): "
                             "the floor a perfect generator reaches at this sample size")
    parser.add_argument("--inception-weights", default="fid", metavar="WEIGHTS",
                        help="fid (default: the standard FID network, from the cache `animegan fid-weights` fills), "
                             "a copy of that cache folder (path or URL), or random (tests; figures not comparable "
                             "with published FID)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the generated images (default 0)")
    parser.add_argument("--batch-size", type=int, default=50, help="images per Inception batch (default 50)")
    parser.add_argument("--out", metavar="JSON", help="where to write the results (default <WORKDIR>/eval/step-<step>.json)")
    parser.add_argument("--stats-cache", metavar="URL",
                        help="folder for cached real-image features (default <WORKDIR>/real-stats)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.num < 4:
        raise ValueError(f"--num must be at least 4 (KID compares subsets of half the images), got {args.num}")
    if args.num_real is not None and args.num_real < 4:
        raise ValueError(f"--num-real must be at least 4, got {args.num_real}")
    from animegan import storage
    from animegan.data.index import DataIndex
    from animegan.generation import load_generator
    from animegan.metrics.during_training import real_stats_cache
    from animegan.metrics.evaluation import Evaluator, choose_reference, sample_items
    from animegan.metrics.features import InceptionExtractor
    from animegan.workdir import RunLayout

    # A missing weights file fails here, first. Batches no larger than --num: every batch is padded to that size.
    extractor = InceptionExtractor(args.inception_weights, min(args.batch_size, args.num))
    generator = load_generator(args.checkpoint)
    layout = RunLayout(storage.absolute(args.checkpoint))
    index = DataIndex.load(layout.data_index) if storage.exists(layout.data_index) else None
    reference, others = choose_reference(args.data, index, args.num_real, args.seed)
    if args.real_baseline and not others:
        raise ValueError(f"--real-baseline needs real images outside the reference, but the reference is all "
                         f"{len(reference.items)} images at {args.data} (the workdir has no held-out split of it); "
                         f"give --num-real smaller than {len(reference.items)}")
    evaluator = Evaluator(extractor, reference, args.stats_cache or real_stats_cache(layout.workdir))

    print(f"Generator: {generator.source} (step {generator.step})\nReference: {reference.label}\n"
          f"Extractor: {extractor.label}")
    rows = [{"name": f"generator (step {generator.step})", "images": args.num,
             **evaluator.evaluate_generator(generator, args.num, args.seed)}]
    if args.real_baseline:
        items = sample_items(others, args.num, args.seed)
        features = evaluator.real_features(reference.source_url, items)
        rows.append({"name": "real images outside the reference", "images": len(features),
                     **evaluator.scores(features)})
    for row in rows:
        row.pop("seconds", None)
        row["extractor"] = extractor.label

    document = {
        "checkpoint": layout.workdir, "generator_source": generator.source, "generator_step": generator.step,
        "data": reference.source_url, "reference": reference.label, "reference_images": len(reference.items),
        "extractor": extractor.label, "comparable_with_published_fid": extractor.comparable, "seed": args.seed,
        "rows": rows,
    }
    notes = _notes(extractor, rows)
    if notes:
        document["notes"] = notes
    print()
    print(format_table(rows))
    for note in notes:
        print(f"Note: {note}")
    out = args.out or layout.path("eval", f"step-{generator.step:08d}.json")
    storage.write_text(out, json.dumps(document, indent=2) + "\n")
    print(f"Wrote {out}")
    return 0


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
