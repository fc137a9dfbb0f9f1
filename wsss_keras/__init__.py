"""wsss-keras: weakly supervised semantic segmentation in Keras 3.

Importing this package does not import Keras, so the backend can still be chosen
(`wsss --backend`, `KERAS_BACKEND`, or `wsss_keras.backend.set_backend`) after it.
"""

__version__ = "0.1.0"
