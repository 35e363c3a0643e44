"""The allowed values of every config option that takes one of a list, in one place.

The modules that use a value check it against these lists, and so does the config check that runs
before anything else (config_check.py); this module imports nothing, so that check stays fast.
"""

DEVICES = ("auto", "cpu", "cuda", "mps")  # runtime.select_device
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto first: PRECISIONS[1:] are the named ones (runtime, precision)
TEST_WEIGHTS = ("best", "last")  # state.weights_to_test: the best epoch's by validation, or the final ones
MONITORS = ("val_loss", "val_acc")  # stopping.BestTracker: what "best" means
TTA_LEVELS = ("none", "flip", "flip_translate")  # augmentation.tta_views
FLIPS = (True, False, "alternating")  # augmentation.FlipCrop
PADDING_MODES = ("zeros", "reflect")  # augmentation.FlipCrop
POLICIES = ("autoaugment", "randaugment", "trivialaugment")  # augmentation.TorchvisionPolicy
NORMALIZATIONS = ("cifar10", "dataset", "half", "unit")  # data.normalize.Normalize
DATASETS = ("cifar10", "cifar100", "folder")  # data.load_data: conf/data/<name>.yaml
LABELS = ("fine", "coarse")  # data.sources.RawData.with_labels: coarse is CIFAR-100's 20 superclasses
INTERVALS = ("epoch", "step")  # schedulers: when a schedule steps
INITS = ("torch", "keras")  # models.build_model: the layers' own initialisation, or Keras's (models/keras_init.py)
DROPOUT_SCOPES = ("rising", "uniform")  # models.kerascnn.KerasCNN: the readings of 004's dropout rates
