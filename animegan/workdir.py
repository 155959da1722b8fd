"""Where everything a run produces lives, under one workdir URL (local path or gs://)."""

from __future__ import annotations

from dataclasses import dataclass

from animegan import storage

CHECKPOINTS = "checkpoints"  # Ray Train's run name: checkpoints land in <workdir>/checkpoints/
LEASE = "lease"  # the live run's lease (animegan/lease.py); it belongs to no run, so --restart leaves it


@dataclass(frozen=True)
class RunLayout:
    workdir: str

    def path(self, *parts: str) -> str:
        return storage.join(self.workdir, *parts)

    @property
    def config(self) -> str:
        return self.path("config.json")

    @property
    def metrics(self) -> str:
        return self.path("metrics.jsonl")

    @property
    def samples(self) -> str:
        return self.path("samples")

    def sample(self, step: int) -> str:
        return self.path("samples", f"step-{step:08d}.png")

    @property
    def checkpoints(self) -> str:
        return self.path(CHECKPOINTS)

    @property
    def data_index(self) -> str:
        return self.path("data-index.json")

    @property
    def status(self) -> str:
        """status.json: how the last attempt ended ("finished" or "diverged") and at which step."""
        return self.path("status.json")

    @property
    def generator(self) -> str:
        return self.path("generator.keras")

    @property
    def generator_info(self) -> str:
        return self.path("generator.json")

    @property
    def startup(self) -> str:
        """startup.json: where the time to the first training step went (animegan/startup.py)."""
        return self.path("startup.json")

    @property
    def wandb_run(self) -> str:
        return self.path("wandb-run.json")

    @property
    def wandb_logged(self) -> str:
        """What the W&B run already holds: its last logged step and running summaries (animegan/wandb_record.py)."""
        return self.path("wandb-logged.json")

    @property
    def lease(self) -> str:
        """The lease of the run that holds the workdir now (animegan/lease.py)."""
        return self.path(LEASE)

    @property
    def archive(self) -> str:
        """Earlier runs set aside by `train --restart`, one folder each, laid out like a workdir."""
        return self.path("archive")
