"""Train the DCGAN as a Ray job: `animegan train` with the same flags, plus --smoke-test.

From the repository root, with RAY_ADDRESS pointing at the cluster's dashboard
(http://127.0.0.1:8265 after `cluster/local.sh start` or `ray dashboard cluster/gcp.yaml`):

    python jobs/submit.py -- python jobs/train.py --smoke-test
    python jobs/submit.py -- python jobs/train.py --data gs://BUCKET/faces-packed \
        --workdir gs://BUCKET/runs/faces --workers 4 --gpus-per-worker 1 --cpus-per-worker 4

or with Ray's own command (without forwarding your W&B and cloud settings, see jobs/submit.py):

    ray job submit --runtime-env jobs/runtime_env.yaml -- python jobs/train.py --smoke-test

--smoke-test trains a tiny model for 10 steps on the built-in demo faces, in about a
minute: it shows that the cluster runs TensorFlow workers and that the workdir is
writable. Flags given after it override its settings. Submitting the same command with
the same --workdir resumes the run.
"""

import sys
from pathlib import Path

# The job runs the animegan of the working dir it was submitted with, not whatever is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from animegan.job_entry import SMOKE_TEST_MODEL, run_job  # noqa: E402

SMOKE_TEST = [*SMOKE_TEST_MODEL, "--steps", "10", "--log-every", "5", "--sample-every", "10",
              "--checkpoint-every", "10"]

if __name__ == "__main__":
    sys.exit(run_job("train", sys.argv[1:], smoke_test=SMOKE_TEST,
                     smoke_test_help="train a tiny model for 10 steps on the built-in demo faces"))
