"""Datasets: parquet schemas and the leave-one-out split (`sequences`), MovieLens-100K preparation (`ml100k`),
and synthetic clustered catalogs for scale (`synth`)."""
