"""Backend-agnostic building blocks in keras.ops (CAMs, PAR, ...)."""
