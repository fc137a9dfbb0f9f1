"""Grad-CAM through `ops/grad.py` is the same on TensorFlow, JAX and PyTorch: an SSR model
(CMPA's aligned space, so ISA/TSA are inside the differentiated function) saved on one backend
gives the same CAMs on the other two (max abs difference <= 1e-4), each in its own process."""

import os
import subprocess
import sys
import textwrap

import numpy as np

SAVE = textwrap.dedent(
    """
    import sys
    import keras, numpy as np
    from tests.backend.test_weclip import batch, tiny_ssr
    model = tiny_ssr()
    images, labels, _ = batch()
    model.save(sys.argv[1])
    np.save(sys.argv[2], images)
    np.save(sys.argv[3], labels)
    """
)

CAMS = textwrap.dedent(
    """
    import sys
    import numpy as np
    from keras import ops
    from wsss_keras.pipelines.model_io import load_model
    model = load_model(sys.argv[1])
    cams = model.cam_maps(np.load(sys.argv[2]), np.load(sys.argv[3]))
    np.save(sys.argv[4], ops.convert_to_numpy(cams))
    """
)


def run(backend, script, *args):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=root)
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, f"{backend}:\n{result.stderr[-4000:]}"


def test_gradcams_agree_across_backends(tmp_path):
    model, images, labels = tmp_path / "ssr.keras", tmp_path / "images.npy", tmp_path / "labels.npy"
    run("jax", SAVE, model, images, labels)
    cams = {}
    for backend in ("tensorflow", "jax", "torch"):
        out = tmp_path / f"cams_{backend}.npy"
        run(backend, CAMS, model, images, labels, out)
        cams[backend] = np.load(out)
    reference = cams["jax"]
    assert reference.shape == (2, 4, 4, 3)
    # Present classes have a real signal (absent ones are out of the softmax and zero).
    present = np.load(labels).astype(bool)
    assert np.abs(reference[0][..., present[0]]).max() > 1e-3
    for backend in ("tensorflow", "torch"):
        np.testing.assert_allclose(cams[backend], reference, atol=1e-4, err_msg=f"{backend} vs jax")
