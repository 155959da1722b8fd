"""Generate images from a trained run as a Ray job: `animegan generate` with the same flags, plus --smoke-test.

From the repository root, with RAY_ADDRESS pointing at the cluster's dashboard:

    python jobs/submit.py -- python jobs/generate.py --checkpoint gs://BUCKET/runs/faces \
        --num 100000 --out gs://BUCKET/faces-100k --format shards --workers 8 --gpus-per-worker 1
    python jobs/submit.py -- python jobs/generate.py --smoke-test --checkpoint gs://BUCKET/runs/faces

--smoke-test writes 32 images with 2 Ray workers into <checkpoint>/smoke-test-images/
and their grid into <checkpoint>/smoke-test-grid.png (unless --out says otherwise), so
it needs only --checkpoint: a workdir that a training job (even `jobs/train.py
--smoke-test`) wrote.
"""

import sys
from pathlib import Path

# The job runs the animegan of the working dir it was submitted with, not whatever is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from animegan.job_entry import flag_value, has_flag, run_job  # noqa: E402


def smoke_test(argv: list[str]) -> list[str]:
    flags = ["--num", "32", "--batch-size", "8", "--workers", "2", "--cpus-per-worker", "1"]
    checkpoint = flag_value(argv, "--checkpoint")
    if checkpoint and not has_flag(argv, "--out"):
        # The smoke test's own folder: replaced on every run, whatever generator wrote it before.
        workdir = checkpoint.rstrip("/")
        flags += ["--out", f"{workdir}/smoke-test-images", "--grid", f"{workdir}/smoke-test-grid.png",
                  "--overwrite"]
    return flags


if __name__ == "__main__":
    arguments = sys.argv[1:]
    sys.exit(run_job("generate", arguments, smoke_test=smoke_test(arguments),
                     smoke_test_help="write 32 images and a grid from --checkpoint with 2 Ray workers, "
                                     "into <checkpoint>/smoke-test-images"))
