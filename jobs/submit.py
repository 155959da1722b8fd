"""Submit a job from your machine, forwarding W&B and Google Cloud settings, and follow its logs.

    export RAY_ADDRESS=http://127.0.0.1:8265     # cluster/local.sh start, or: ray dashboard cluster/gcp.yaml
    export WANDB_PROJECT=faces                   # W&B settings are forwarded; the key never is (see below)
    .venv/bin/python jobs/submit.py -- python jobs/train.py --smoke-test
    .venv/bin/python jobs/submit.py --no-pip -- python jobs/train.py --smoke-test   # a laptop's .venv
    .venv/bin/python jobs/submit.py --no-pip --ray-token-file ~/.ray/animegan-gke-token \
        -- python jobs/train.py --smoke-test            # a cluster of cluster/: its image, its token

It sends the repository as the job's working dir with jobs/runtime_env.yaml, adds the
settings listed in `--help` that are set in your shell, prints the job's logs until it
ends, and exits 0 when the job succeeded. It never sends WANDB_API_KEY: Ray shows a
job's runtime env to anyone who can reach its dashboard. The job reads the key on the
cluster (README, "Weights & Biases"), and the command says where. The clusters' Ray token
(--ray-token-file, or Ray's RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH) goes in a request header
only: never printed, never part of the job. The same runtime env (without secrets) for
Ray's own command:

    ray job submit --runtime-env-json "$(.venv/bin/python jobs/submit.py --print-runtime-env)" -- python jobs/train.py
"""

import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from animegan.submission import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], runtime_env_file=REPOSITORY / "jobs" / "runtime_env.yaml", base_dir=REPOSITORY))
