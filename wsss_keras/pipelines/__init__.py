"""The stages a user runs. Each stage reads and writes files, so any stage can be rerun alone."""
