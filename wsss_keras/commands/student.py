"""`wsss train-student`: a compact keras-hub segmenter trained on a finished run's pseudo-labels,
for phones and other edge devices (export it with `wsss export --format tflite --precision int8`)."""

import click


def _arch_choices():
    # Listed without importing Keras: the backend is chosen by the group after parsing.
    return ("segformer_b0", "mobilenet_v3_small")


class _ArchParam(click.ParamType):
    """--arch: a student architecture; an unknown one is a one-line usage error naming the choices."""

    name = "arch"

    def convert(self, value, param, ctx):
        if value not in _arch_choices():
            self.fail(f"unknown student architecture {value!r}; choose one of {', '.join(_arch_choices())}.", param, ctx)
        return value


def register(cli):
    @cli.command("train-student")
    @click.argument("run_dir", type=click.Path(file_okay=False))
    @click.option("--arch", required=True, type=_ArchParam(), help=f"Student architecture: {', '.join(_arch_choices())}.")
    @click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
                  help="The dataset the run was trained on.")
    @click.option("--steps", default=None, type=click.IntRange(min=1), help="Training steps (default: the segmentation stage's).")
    @click.option("--student-weights", default=None, type=click.Path(file_okay=False),
                  help="Local keras-hub preset folder of the arch's ImageNet backbone (MiTBackbone for segformer_b0, "
                       "MobileNetBackbone for mobilenet_v3_small); default: from scratch.")
    @click.option("--input-size", default=256, show_default=True, type=click.IntRange(min=32),
                  help="Side of the square input the student runs at (SegFormer needs a square one).")
    @click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
    @click.option("--learning-rate", default=1e-3, show_default=True, type=click.FloatRange(min=0.0, min_open=True))
    @click.option("--kd-weight", default=0.0, show_default=True, type=click.FloatRange(min=0.0),
                  help="Weight of the distillation term on the run's final network's logits (0: off).")
    @click.option("--kd-temperature", default=2.0, show_default=True, type=click.FloatRange(min=0.0, min_open=True),
                  help="Softmax temperature of the distillation term.")
    def train_student(run_dir, arch, data_dir, steps, student_weights, input_size, batch_size, learning_rate, kd_weight,
                      kd_temperature):
        """Train a compact student on RUN_DIR's pseudo-labels; saves RUN_DIR/student_<ARCH>.keras.

        RUN_DIR is a finished run folder (`wsss quickstart`, `wsss run`): its pseudo_labels/ are the
        targets and its final network (segmenter.keras, else model.keras) the teacher with
        --kd-weight > 0. The student works with predict, evaluate, report, export and serve.
        """
        from wsss_keras.pipelines.student import train_student as train

        settings = {"input_size": input_size, "batch_size": batch_size, "learning_rate": learning_rate,
                    "kd_weight": kd_weight, "kd_temperature": kd_temperature}
        # fit_steps prints the saved path itself.
        train(run_dir, data_dir, arch, steps=steps, student_weights=student_weights, settings=settings, echo=click.echo)
