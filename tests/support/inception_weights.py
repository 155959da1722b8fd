"""InceptionV3 weight files in Keras's .h5 layout, made here, since tests never download anything.

The files Keras downloads for `keras.applications.InceptionV3` are HDF5 files
with a `layer_names` attribute and one group per layer holding `weight_names`
and one dataset per weight; `write_keras_h5` writes exactly that layout.
"""

from __future__ import annotations

import h5py
import numpy as np


def write_keras_h5(model, path) -> None:
    """Saves `model`'s weights in the layout of Keras's downloadable application weight files."""
    with h5py.File(path, "w") as file:
        names = [layer.name for layer in model.layers]
        file.attrs["layer_names"] = [name.encode("utf8") for name in names]
        file.attrs["backend"] = b"tensorflow"
        file.attrs["keras_version"] = b"2.1.6"
        for layer in model.layers:
            group = file.create_group(layer.name)
            weight_names = [f"{layer.name}/{variable.path.rsplit('/', 1)[-1]}:0" for variable in layer.weights]
            group.attrs["weight_names"] = [name.encode("utf8") for name in weight_names]
            for name, variable in zip(weight_names, layer.weights):
                group.create_dataset(name, data=np.asarray(variable.numpy()))


def inception_network(include_top: bool, seed: int):
    """An InceptionV3 with the random extractor's seeded weights (any seed), classifier or not."""
    import keras

    from animegan.metrics.features import seeded_initialisation

    if include_top:
        network = keras.applications.InceptionV3(include_top=True, weights=None, classifier_activation=None)
    else:
        network = keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg")
    seeded_initialisation(network, seed)
    return network
