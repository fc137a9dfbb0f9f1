"""`wsss export`: a trained model as SavedModel, ONNX or TFLite, with a manifest and a self-check."""

import click


@click.command("export")
@click.argument("model_path", metavar="MODEL.keras", type=click.Path(dir_okay=False))
@click.option("--format", "formats", type=click.Choice(["saved_model", "onnx", "tflite", "triton"]), multiple=True,
              default=("onnx",), help="Artifact format; repeat for several (each then gets OUT/<format>_<precision>/). "
                                      "triton: a Triton Inference Server model repository (ONNX + config.pbtxt).")
@click.option("--precision", "precisions", type=click.Choice(["fp32", "fp16", "int8"]), multiple=True,
              default=("fp32",), help="Precision; repeat for several. TFLite takes fp32, fp16 and int8, ONNX fp32 and int8 "
                   "(onnxruntime's static quantisation); SavedModel and Triton are float32.")
@click.option("--calibration", type=click.Path(file_okay=False), default=None,
              help="Folder of images (or a VOC root) to calibrate int8 on; also the self-check's images.")
@click.option("--samples", type=click.Path(file_okay=False), default=None,
              help="Folder of images for the self-check [default: the calibration images, else synthetic scenes].")
@click.option("--eval-data", type=click.Path(file_okay=False), default=None,
              help="Labelled dataset root (VOC layout): fp16/int8 checks also report the mIoU of Keras and of the artifact.")
@click.option("--eval-split", default="val", help="Split of --eval-data to score.")
@click.option("--input-size", type=(click.IntRange(min=16), click.IntRange(min=16)), default=None,
              help="Height and width the network runs at (images of any size are resized to it inside the graph) "
                   "[default: the recipe's CAM resize or training crop, else 448].")
@click.option("--dynamic", is_flag=True, help="Run the network at each image's own size instead of --input-size.")
@click.option("--output", type=click.Choice(["logits", "labels", "cams"]), default="logits",
              help="logits: logits and their argmax labels; labels: only the label map; cams: CAMs of a CAM network.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=None,
              help="Share of pixels whose fp16/int8 labels must match the model's [default: 0.995 fp16, 0.98 int8].")
@click.option("--int8-scope", type=click.Choice(["full", "weights"]), default="full", show_default=True,
              help="int8: full quantises every op it can, keeping op types in float only while the self-check "
                   "fails (for integer-only accelerators; ONNX: static, calibrated); weights quantises only "
                   "convolutions and dense layers (TFLite) or dense layers with activations quantised at run "
                   "time (ONNX: dynamic, no calibration): more accurate, and measured faster on an x86 CPU.")
@click.option("--onnx-attention", type=click.Choice(["standard", "onnxruntime"]), default="standard", show_default=True,
              help="ONNX: attention in ONNX's own ops, or as onnxruntime's fused MultiHeadAttention (a contrib op: "
                   "faster on onnxruntime, which is then the only runtime that loads the file).")
@click.option("--opset", type=click.IntRange(min=13), default=17, help="ONNX opset.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
def export(model_path, formats, precisions, calibration, samples, eval_data, eval_split, input_size, dynamic, output,
           min_agreement, int8_scope, onnx_attention, opset, out):
    """Export MODEL.keras for deployment and check the artifact against the model.

    The exported graph takes uint8 RGB images (B, H, W, 3) of any size and does the resizing
    and normalisation inside; a manifest.json beside the artifact gives classes, palette,
    input and outputs. The artifact runs on sample images next to the Keras model; the command
    fails when they part (labels must agree on 99.9 % of pixels and logits within 1e-3 for
    float32, 99.5 % for fp16, 98 % for int8). Runs on TensorFlow (a subprocess from JAX or
    PyTorch).
    """
    from wsss_keras.export import export_model

    if dynamic and input_size:
        raise click.UsageError("--dynamic and --input-size exclude each other: the network runs at the image's size, or at one size.")
    manifests = export_model(model_path, out, formats, precisions, input_size, dynamic, output, calibration, samples,
                             eval_data, eval_split, opset=opset, min_agreement=min_agreement,
                             int8_scope=int8_scope, onnx_attention=onnx_attention, echo=click.echo)
    for manifest in manifests:
        artifact = manifest["artifact"]
        click.echo(f"wrote {artifact['format']} {artifact['precision']} ({artifact['bytes'] / 1e6:.2f} MB) with its manifest")


def register(cli):
    cli.add_command(export)
