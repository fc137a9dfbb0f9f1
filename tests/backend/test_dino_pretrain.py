"""The DINO-style stand-in (`methods.dino_pretrain`): the teacher is the student's moving
average, the centre the teacher's, the loss DINO's cross-entropy; on every backend's trainer."""

import keras
import numpy as np

from wsss_keras.backbones.vit.stem_vit import StemViT
from wsss_keras.methods.dino_pretrain import DINOPretrainer


def tiny_vit():
    return StemViT(stem={"widths": (4, 8), "convs_per_stage": 1, "norm": "group"}, hidden_dim=8, num_layers=1,
                   num_heads=2, mlp_dim=16, pos_embed_grid=4)


def tiny_model(total_steps=10, momentum=0.9):
    return DINOPretrainer(tiny_vit(), total_steps=total_steps, momentum=momentum, prototypes=6, head_hidden=8, bottleneck=4)


def views(batch=2, local=2, seed=0):
    rng = np.random.default_rng(seed)
    return {"global_views": rng.normal(size=(batch, 2, 16, 16, 3)).astype("float32"),
            "local_views": rng.normal(size=(batch, local, 8, 8, 3)).astype("float32")}


def numpy_weights(variables):
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def test_a_step_moves_the_teacher_to_the_students_average_and_the_centre_to_the_teachers_mean():
    keras.utils.set_random_seed(0)
    model = tiny_model(momentum=0.9)
    # The teacher starts as the student's copy; move it away so the average is visible.
    rng = np.random.default_rng(1)
    for variable in model.teacher.weights + model.teacher_head.weights:
        variable.assign(keras.ops.convert_to_numpy(variable) + 0.1 * rng.normal(size=variable.shape).astype("float32"))
    teacher_before = numpy_weights(model.teacher.weights + model.teacher_head.weights)
    student_before = numpy_weights(model.student.weights + model.student_head.weights)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    x = views()
    model.fit(x, np.zeros((2,), "float32"), batch_size=2, epochs=1, verbose=0)

    # Step 0's momentum is `momentum`; the student the teacher averaged is the one before the step.
    teacher_after = numpy_weights(model.teacher.weights + model.teacher_head.weights)
    for after, teacher, student in zip(teacher_after, teacher_before, student_before):
        np.testing.assert_allclose(after, 0.9 * teacher + 0.1 * student, rtol=1e-5, atol=1e-6)
    # The student did learn, so the two now differ.
    student_after = numpy_weights(model.student.weights + model.student_head.weights)
    assert max(np.abs(a - b).max() for a, b in zip(student_after, student_before)) > 1e-4
    # The centre: 0.9 * 0 + 0.1 * the mean of the teacher's outputs on the global views of the step,
    # recomputed here with the teacher's weights of that step.
    flat = x["global_views"].transpose(1, 0, 2, 3, 4).reshape(4, 16, 16, 3)
    outputs = keras.ops.convert_to_numpy(model.teacher_head(model.teacher(flat)["class_tokens"][:, 0]))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.center), 0.1 * outputs.mean(0, keepdims=True),
                               rtol=1e-4, atol=1e-6)
    assert float(keras.ops.convert_to_numpy(model.step)) == 1.0


def test_teacher_momentum_rises_to_one_on_a_cosine():
    model = tiny_model(total_steps=10, momentum=0.9)
    for step, expected in ((0, 0.9), (5, 0.95), (10, 1.0), (20, 1.0)):
        model.step.assign(float(step))
        assert abs(float(keras.ops.convert_to_numpy(model.teacher_momentum())) - expected) < 1e-6


def test_loss_is_dinos_cross_entropy_over_pairs_of_different_views():
    model = tiny_model()
    rng = np.random.default_rng(2)
    student, teacher = rng.normal(size=(4, 3, 6)).astype("float32"), rng.normal(size=(2, 3, 6)).astype("float32")
    loss = float(keras.ops.convert_to_numpy(model.compute_loss(y_pred={"student": student, "teacher": teacher})))

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    targets, log_probs = softmax(teacher / 0.04), np.log(softmax(student / 0.1))
    pairs = [(-(targets[i] * log_probs[j]).sum(-1)).mean() for i in range(2) for j in range(4) if i != j]
    assert abs(loss - np.mean(pairs)) < 1e-3 * max(1.0, abs(loss))


def test_saved_trainer_keeps_its_teacher(tmp_path):
    keras.utils.set_random_seed(0)
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    model.fit(views(), np.zeros((2,), "float32"), batch_size=2, epochs=1, verbose=0)
    path = str(tmp_path / "dino.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    image = np.random.default_rng(3).normal(size=(1, 24, 16, 3)).astype("float32")
    expected = model.teacher(image, return_attention=True)["attention"][-1]
    got = loaded.teacher(image, return_attention=True)["attention"][-1]
    assert tuple(got.shape) == (1, 2, 1 + 12 * 8, 1 + 12 * 8)  # stride 2: a 12 x 8 token grid
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(expected), atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded.center), keras.ops.convert_to_numpy(model.center))


def test_the_last_layer_stays_fixed_for_its_first_steps():
    keras.utils.set_random_seed(0)
    model = DINOPretrainer(tiny_vit(), total_steps=10, prototypes=6, head_hidden=8, bottleneck=4, freeze_last_layer_steps=1)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    last = keras.ops.convert_to_numpy(model.student_head.last).copy()
    first_layer = keras.ops.convert_to_numpy(model.student_head.mlp[0].kernel).copy()
    model.fit(views(), np.zeros((2,), "float32"), batch_size=2, epochs=1, verbose=0)  # step 1: frozen
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.student_head.last), last)
    assert np.abs(keras.ops.convert_to_numpy(model.student_head.mlp[0].kernel) - first_layer).max() > 0
    model.fit(views(seed=1), np.zeros((2,), "float32"), batch_size=2, epochs=1, verbose=0)  # step 2: free
    assert np.abs(keras.ops.convert_to_numpy(model.student_head.last) - last).max() > 0


def numpy_gelu(x):
    from math import erf

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))


def test_batch_normalised_head_is_linear_bn_gelu_and_ignores_what_all_images_share():
    from wsss_keras.methods.dino_pretrain import DINOHead

    keras.utils.set_random_seed(0)
    head = DINOHead(prototypes=5, hidden=6, bottleneck=3, batch_norm=True)
    head.build((None, 4))
    rng = np.random.default_rng(0)
    for scale, shift in head.norms:  # not the initial ones and zeros, so they show in the result
        scale.assign(rng.uniform(0.5, 1.5, size=scale.shape).astype("float32"))
        shift.assign(rng.normal(size=shift.shape).astype("float32"))
    features = rng.normal(size=(8, 4)).astype("float32")

    # NumPy, from the head's weights: Linear, batch norm with the batch's statistics, GELU, twice;
    # then the normalised bottleneck against unit-norm prototypes.
    x = features
    for layer, (scale, shift) in zip(head.mlp[:2], head.norms):
        x = x @ keras.ops.convert_to_numpy(layer.kernel) + keras.ops.convert_to_numpy(layer.bias)
        x = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) * keras.ops.convert_to_numpy(scale) + keras.ops.convert_to_numpy(shift)
        x = numpy_gelu(x)
    x = x @ keras.ops.convert_to_numpy(head.mlp[2].kernel) + keras.ops.convert_to_numpy(head.mlp[2].bias)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    last = keras.ops.convert_to_numpy(head.last)
    expected = x @ (last / np.linalg.norm(last, axis=0, keepdims=True))
    got = keras.ops.convert_to_numpy(head(features))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # What every image shares is what makes an untrained teacher's outputs alike; with batch norm
    # it is gone after the first layer, without it the outputs move.
    shared = 5.0 * rng.normal(size=(1, 4)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head(features + shared)), got, rtol=1e-3, atol=1e-4)
    plain = DINOHead(prototypes=5, hidden=6, bottleneck=3)
    plain.build((None, 4))
    moved = keras.ops.convert_to_numpy(plain(features + shared)) - keras.ops.convert_to_numpy(plain(features))
    assert np.abs(moved).max() > 1e-2


def test_a_trainer_with_batch_normalised_heads_trains_and_saves(tmp_path):
    keras.utils.set_random_seed(0)
    model = DINOPretrainer(tiny_vit(), total_steps=10, prototypes=6, head_hidden=8, bottleneck=4, head_batch_norm=True)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    shift_before = keras.ops.convert_to_numpy(model.student_head.norms[0][1]).copy()
    model.fit(views(batch=4), np.zeros((4,), "float32"), batch_size=4, epochs=1, verbose=0)
    # The norms' scale and shift are trained like the rest of the head.
    assert np.abs(keras.ops.convert_to_numpy(model.student_head.norms[0][1]) - shift_before).max() > 0
    path = str(tmp_path / "dino.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert loaded.teacher_head.batch_norm and loaded.get_config()["head_batch_norm"] is True
    features = np.random.default_rng(2).normal(size=(3, 8)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded.student_head(features)),
                               keras.ops.convert_to_numpy(model.student_head(features)), atol=1e-6)
