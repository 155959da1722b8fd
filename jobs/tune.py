"""Run a hyperparameter sweep as a Ray job: `animegan tune` with the same flags, plus --smoke-test.

From the repository root, with RAY_ADDRESS pointing at the cluster's dashboard:

    python jobs/submit.py -- python jobs/tune.py --data gs://BUCKET/faces-packed \
        --workdir gs://BUCKET/sweeps/lr --trials 16 --gpus-per-worker 1 --cpus-per-worker 4
    python jobs/submit.py -- python jobs/tune.py --smoke-test

--smoke-test runs a sweep of 3 trials of 10 steps each with a tiny model on the
built-in demo faces: it shows that Tune can schedule trials on the cluster.
Flags given after it override its settings.
"""

import sys
from pathlib import Path

# The job runs the animegan of the working dir it was submitted with, not whatever is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from animegan.job_entry import SMOKE_TEST_MODEL, run_job  # noqa: E402

# No evaluation (it needs Inception weights, which a fresh cluster lacks): trials compare on loss/g.
SMOKE_TEST = [*SMOKE_TEST_MODEL, "--trials", "3", "--max-steps", "10", "--metric", "loss/g"]

if __name__ == "__main__":
    sys.exit(run_job("tune", sys.argv[1:], smoke_test=SMOKE_TEST,
                     smoke_test_help="a sweep of 3 trials of 10 steps with a tiny model on the demo faces"))
