"""Triton Inference Server: the `config.pbtxt` of the model repository `wsss export --format
triton` writes around the ONNX graph."""

from wsss_keras.export.manifest import output_descriptions

# Triton's dynamic batcher: the most images per call, and how long a request waits for others.
TRITON_MAX_BATCH = 8
TRITON_QUEUE_DELAY_US = 5000


def triton_config(name, label_count, output):
    """Triton Inference Server's config.pbtxt (protobuf text format) for the exported ONNX graph:
    the onnxruntime backend, batch dimension first, dynamic batching. Triton batches only
    requests whose images share a size, as `wsss serve` does."""
    dims = {"logits": ("TYPE_FP32", [-1, -1, label_count]), "labels": ("TYPE_UINT8", [-1, -1]),
            "cams": ("TYPE_FP32", [-1, -1, label_count - 1])}
    names = [o["name"] for o in output_descriptions(label_count, output)]

    def tensor(tensor_name, data_type, shape):
        return (f'  {{\n    name: "{tensor_name}"\n    data_type: {data_type}\n'
                f'    dims: [ {", ".join(str(d) for d in shape)} ]\n  }}')

    outputs = ",\n".join(tensor(n, *dims[n]) for n in names)
    return (f'# Written by `wsss export --format triton`; model.onnx and its manifest.json are in 1/.\n'
            f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {TRITON_MAX_BATCH}\n'
            f'input [\n{tensor("image", "TYPE_UINT8", [-1, -1, 3])}\n]\noutput [\n{outputs}\n]\n'
            f'dynamic_batching {{\n  max_queue_delay_microseconds: {TRITON_QUEUE_DELAY_US}\n}}\n'
            f'instance_group [\n  {{\n    kind: KIND_AUTO\n    count: 1\n  }}\n]\n')
