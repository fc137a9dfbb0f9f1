"""`wsss` subcommands, one module per group. Each exposes `register(cli)` and imports Keras
only inside command bodies, so `--backend` still takes effect."""
