"""Every serialisable class of `wsss_keras` is registered once, under its own name, and every
method's model leaves the saved metadata to `WSSSModel` (issue #25, item 3).

A `.keras` file names its classes `wsss_keras>ClassName`; two names for one class, or a name
that is not the class's, would make files written by one version unreadable by the next.
"""

import importlib
import inspect
import pkgutil

import keras

import wsss_keras
from wsss_keras.methods.base import WSSSModel

METADATA = ("class_names", "image_mean", "image_std", "recipe")


def import_all():
    for module in pkgutil.walk_packages(wsss_keras.__path__, prefix="wsss_keras."):
        if module.name.endswith("__main__"):
            continue  # runs the export CLI when imported
        importlib.import_module(module.name)


def registered():
    """{class: [registered names]} for the classes registered by wsss_keras."""
    names = {}
    for name, obj in keras.saving.get_custom_objects().items():
        if inspect.isclass(obj) and obj.__module__.startswith("wsss_keras."):
            names.setdefault(obj, []).append(name)
    return names


def subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)


def test_one_registered_name_per_class_and_it_is_the_class_name():
    import_all()
    names = registered()
    assert len(names) > 30, sorted(cls.__name__ for cls in names)  # the package's layers and models
    for cls, found in names.items():
        assert found == [f"wsss_keras>{cls.__name__}"], (cls, found)


def test_every_method_model_is_registered_and_leaves_metadata_to_the_base():
    import_all()
    names = registered()
    models = [cls for cls in subclasses(WSSSModel) if cls.__module__.startswith("wsss_keras.")]
    assert {"ToCo", "AMR", "CamNetwork", "IRNet", "SSC", "WeCLIP", "SSR", "DeepLabV2"} <= {c.__name__ for c in models}
    for cls in models:
        assert cls in names, f"{cls.__name__} is not registered: a saved model could not be loaded"
        own = inspect.signature(cls.__init__).parameters
        assert not set(METADATA) & set(own), (cls.__name__, "declares", set(METADATA) & set(own))
        assert "kwargs" in own, f"{cls.__name__} must pass the metadata on to WSSSModel"


def test_the_metadata_round_trips_through_the_base_config():
    class Probe(WSSSModel):
        def __init__(self, width, **kwargs):
            super().__init__(**kwargs)
            self.width = width

        def get_config(self):
            return {**super().get_config(), "width": self.width}

    model = Probe(3, class_names=["background", "cat"], image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.5, 1.0),
                  recipe={"name": "r"}, name="probe")
    config = model.get_config()
    assert config["class_names"] == ["background", "cat"] and config["image_std"] == [0.25, 0.5, 1.0]
    copy = Probe.from_config(config)
    assert (copy.width, copy.class_names, copy.image_mean, copy.image_std, copy.recipe, copy.name) == (
        3, ["background", "cat"], (0.5, 0.5, 0.5), (0.25, 0.5, 1.0), {"name": "r"}, "probe")
