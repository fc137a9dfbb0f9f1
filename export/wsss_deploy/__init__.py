"""wsss-keras's deployment runtime: runs exported models with no Keras or TensorFlow installed.

- `wsss_deploy.litert_runner`: segment images with a `.tflite` and its `manifest.json`
  (`python -m wsss_deploy.litert_runner`), for edge devices. Needs numpy, Pillow and
  ai-edge-litert (`pip install "wsss-keras[edge]"` or just those three).
- `wsss_deploy.onnx_runner`: an exported `model.onnx`, checked against its manifest, under
  onnxruntime.
- `wsss_deploy.serve`: the HTTP inference server on an ONNX export (`wsss serve DIR` or
  `python -m wsss_deploy.serve DIR`). Needs `pip install "wsss-keras[serve]"`.
"""
