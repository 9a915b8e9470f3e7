"""Getting images in: dataset readers, the synthetic sample, the Beam job that
decodes images and caches their features, GCS staging. Imports only `core`."""
