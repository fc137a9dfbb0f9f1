"""WSSS methods and hosts: one module per method, each a keras.Model with `compute_loss`,
`cams(images)` and/or `segment(images)` used by the pipelines."""
