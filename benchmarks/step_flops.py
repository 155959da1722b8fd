"""Floating-point operations of one training step, counted analytically from the layer shapes.

    .venv/bin/python benchmarks/step_flops.py                      # the default model
    .venv/bin/python benchmarks/step_flops.py --noise-dim 100 --width 32

Only the multiply-adds of the dense and convolution layers are counted (2 FLOPs
each); batch norm, activations, the losses, Adam and the EMA are elementwise,
under 1% of the FLOPs, and bound by memory traffic rather than arithmetic.

Per image, for a layer with forward cost F:
- forward: F. Conv2D: 2*Hout*Wout*k*k*Cin*Cout; Conv2DTranspose (each input
  pixel scatters a k x k x Cout patch): 2*Hin*Win*k*k*Cin*Cout; Dense: 2*in*out.
- backward: F for the gradient of its weights, if they are being trained in
  this pass, plus F for the gradient of its input, if anything before it needs
  one. So 2F for a layer whose weights and inputs both need gradients, F for a
  layer of a network that is only passed through (the discriminator in the
  generator's step), and the first layer never needs its input's gradient.

The step (animegan/gan.py) is, per image of the batch:
- discriminator step: G forward (no gradient), D forward on the real and on the
  generated batch, D backward on both (weights; inputs but the first layer's):
  G_f + 2 D_f + 2 (2 D_f - D_first);
- generator step: G forward on fresh noise, D forward, D backward for the input
  gradients only, G backward (weights; inputs but the first layer's):
  G_f + D_f + D_f + (2 G_f - G_first).
Total: 4 G_f + 8 D_f - 2 D_first - G_first.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@dataclass(frozen=True)
class StepFlops:
    generator_forward: float  # per image
    generator_first_layer: float
    discriminator_forward: float
    discriminator_first_layer: float
    discriminator_step: float
    generator_step: float
    per_image: float  # the whole step, per image of the batch
    layers: dict  # name -> forward FLOPs per image


def layer_flops(layer) -> float:
    """Forward FLOPs per image of one dense or convolution layer (0 for every other layer)."""
    from keras import layers

    if isinstance(layer, layers.Conv2DTranspose):
        height, width, channels_in = layer.input.shape[1:]
        kernel_height, kernel_width = layer.kernel_size
        return 2.0 * height * width * kernel_height * kernel_width * channels_in * layer.filters
    if isinstance(layer, layers.Conv2D):
        height, width, channels_out = layer.output.shape[1:]
        kernel_height, kernel_width = layer.kernel_size
        return 2.0 * height * width * kernel_height * kernel_width * layer.input.shape[-1] * channels_out
    if isinstance(layer, layers.Dense):
        return 2.0 * layer.input.shape[-1] * layer.units
    return 0.0


def _forward(model) -> tuple[float, float, dict]:
    per_layer = {layer.name: layer_flops(layer) for layer in model.layers}
    per_layer = {name: flops for name, flops in per_layer.items() if flops}
    first = next(iter(per_layer.values()))
    return sum(per_layer.values()), first, per_layer


def count(config) -> StepFlops:
    """The step's FLOPs for a TrainConfig's model shapes."""
    from animegan.models import build_discriminator, build_generator

    g_forward, g_first, g_layers = _forward(build_generator(config))
    d_forward, d_first, d_layers = _forward(build_discriminator(config))
    discriminator_step = g_forward + 2 * d_forward + 2 * (2 * d_forward - d_first)
    generator_step = g_forward + 2 * d_forward + (2 * g_forward - g_first)
    layers = {f"generator/{name}": flops for name, flops in g_layers.items()}
    layers.update({f"discriminator/{name}": flops for name, flops in d_layers.items()})
    return StepFlops(g_forward, g_first, d_forward, d_first, discriminator_step, generator_step,
                     discriminator_step + generator_step, layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise-dim", type=int, default=300)
    parser.add_argument("--width", type=int, default=64, help="generator and discriminator base width")
    args = parser.parse_args()
    from animegan.config import TrainConfig

    flops = count(TrainConfig(noise_dim=args.noise_dim, generator_width=args.width, discriminator_width=args.width))
    for name, value in flops.layers.items():
        print(f"{name:28s} {value / 1e6:9.1f} MFLOP forward per image")
    print(json.dumps({key: value for key, value in asdict(flops).items() if key != "layers"}, indent=2))


if __name__ == "__main__":
    main()
