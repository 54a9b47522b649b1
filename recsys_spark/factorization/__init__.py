"""Latent factor models: MLlib ALS / NMF wrappers and our own partition-parallel SVD, SVD++ and NMF."""
