"""A ToCo + DOEI model trained on one backend saves as one .keras file that loads on the other
two and gives the same CAMs (max abs difference <= 1e-4), each backend in its own process."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

TRAIN = textwrap.dedent(
    """
    import sys
    import keras, numpy as np
    from tests.backend.test_toco import tiny_toco, toco_batch
    from wsss_keras.methods.doei import DOEI
    from wsss_keras.pipelines.inference import MultiScaleCams
    keras.utils.set_random_seed(0)
    model = tiny_toco(DOEI())
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images, targets = toco_batch()
    for _ in range(2):
        model.train_on_batch(images, targets)
    model.save(sys.argv[1])
    np.save(sys.argv[2], images)
    np.save(sys.argv[3], np.asarray(MultiScaleCams(model, (1.0, 0.5), True).predict_on_batch(images)))
    """
)

CAMS = textwrap.dedent(
    """
    import sys
    import numpy as np
    from wsss_keras.pipelines.inference import MultiScaleCams
    from wsss_keras.pipelines.model_io import load_model
    model = load_model(sys.argv[1])
    assert model.doei is not None and int(np.asarray(model.train_steps)) == 2
    np.save(sys.argv[3], np.asarray(MultiScaleCams(model, (1.0, 0.5), True).predict_on_batch(np.load(sys.argv[2]))))
    """
)


def run(backend, script, *args):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=root)
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, f"{backend}:\n{result.stderr[-4000:]}"


@pytest.mark.parametrize("source", ["jax"])  # the GPU recipes' backend; the others load its file
def test_cams_agree_across_backends(tmp_path, source):
    model, images, reference = tmp_path / "toco.keras", tmp_path / "images.npy", tmp_path / f"cams_{source}.npy"
    run(source, TRAIN, model, images, reference)
    expected = np.load(reference)
    assert expected.shape == (2, 32, 32, 3) and expected.max() > 0.5
    for target in ("tensorflow", "jax", "torch"):
        if target == source:
            continue
        out = tmp_path / f"cams_{source}_on_{target}.npy"
        run(target, CAMS, model, images, out)
        np.testing.assert_allclose(np.load(out), expected, atol=1e-4, err_msg=f"trained on {source}, loaded on {target}")
