"""Backbones with access to their insides: one folder per family (vit, clip, resnet), each with
its model code apart from its checkpoint converters, and exposing `ARCHS` and
`load_pretrained(source, arch, **kwargs)`. `registry` maps arch names to families;
`checkpoint` reads local checkpoint files strictly. Importing this package imports no Keras."""
