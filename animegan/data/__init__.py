"""Images in: listing sources, decoding, augmentation and the per-worker tf.data pipeline."""
