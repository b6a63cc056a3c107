"""Feature networks for FID / KID / IS, and the on-disk cache they share.

A feature network maps a batch of images, in the dataset's own value range ([-1, 1] or [0, 1]), to
``(features, logits)``: ``features`` feed FID and KID, ``logits`` (class scores) feed the Inception
Score. Two choices (``evaluation.features``):

``inception``
    torch-fidelity's ``FeatureExtractorInceptionV3``, the port of the 2015-12-05 TensorFlow Inception
    graph used by every published FID (Heusel et al. 2017; the protocol of NVlabs/edm). Features are
    the 2048-d pool activations, logits the 1008-way ``logits_unbiased``. Protocol: images are clamped
    to their range *before* the conversion to uint8 (x ↦ round(255·clamp(x01, 0, 1))), grey images
    are repeated to three channels, and the resize to 299×299 is torch-fidelity's TF1-compatible
    bilinear interpolation without antialiasing (torchmetrics ≥ 1.8 antialiases by default, which
    shifts FID; here there is no such path). The weights come from a local file only
    (``evaluation.inception_weights``, or torch's hub cache), never from the network.

``classifier``
    ``diffusion_lab.nets.FeatureClassifier`` trained once on the dataset's own labels (cross-entropy,
    AdamW) and cached on disk: a cheap, domain-appropriate feature space for MNIST-like data on a CPU
    and wherever the Inception weights are not available. FID values in this space are not comparable
    with published Inception FIDs — only with each other.

Cache layout (``evaluation.cache_dir``): ``classifier/<dataset key>_<arch hash>.pt`` and
``real_features/<dataset key>_<split>_<network key>_<N>.pt`` (see ``diffusion_lab.metrics.fid``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILENAME}"
FEATURE_NETWORKS = ("inception", "classifier")


def default_cache_dir() -> Path:
    """``$DIFFUSION_LAB_CACHE``, else ``~/.cache/diffusion_lab``."""
    return Path(os.environ.get("DIFFUSION_LAB_CACHE", Path.home() / ".cache" / "diffusion_lab")).expanduser()


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file and a rename, so concurrent readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def short_hash(obj: Any, n: int = 10) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


_NOT_IDENTITY = {"batch_size", "num_workers", "prepare_data_per_node", "allow_zero_length_dataloader_with_multiple_devices",
                 "train_set", "val_set", "test_set", "trainer"}  # run-time state, not what the data is


def dataset_key(datamodule: Any) -> str:
    """A readable, stable name for what a datamodule serves: its class and its scalar settings
    (batch size and worker count excluded), e.g. ``digitsdatamodule-1c0ffee123``."""
    items = {}
    for k, v in sorted(vars(datamodule).items()):
        if k.startswith("_") or k in _NOT_IDENTITY:
            continue
        if isinstance(v, (bool, int, float, str)) or v is None or (
                isinstance(v, (tuple, list)) and all(isinstance(e, (bool, int, float, str)) for e in v)):
            items[k] = v
    name = getattr(datamodule, "name", None)
    prefix = type(datamodule).__name__.lower() + (f"_{name}" if isinstance(name, str) else "")
    return f"{prefix}-{short_hash(items)}"


def value_range_of(datamodule: Any) -> str:
    """'[-1,1]' or '[0,1]': the range the datamodule (and so the model) produces images in."""
    vr = getattr(datamodule, "value_range", None) or getattr(getattr(datamodule, "eval_tf", None), "value_range", None)
    return vr or "[-1,1]"


def to_unit_range(x: Tensor, value_range: str) -> Tensor:
    """Images in ``value_range`` → [0, 1], clamped (clamp first: converting an overshoot truncates)."""
    x = x.float()
    if value_range == "[-1,1]":
        x = (x + 1.0) / 2.0
    return x.clamp(0.0, 1.0)


class FeatureNetwork(nn.Module):
    """Base: ``forward(images) -> (features (B, num_features), logits (B, num_classes))``.

    ``key`` identifies the network (its weights) in cache file names; ``name`` is the user's choice."""

    name: str = ""
    key: str = ""
    num_features: int = 0
    value_range: str = "[-1,1]"

    def train(self, mode: bool = True) -> "FeatureNetwork":  # feature networks never leave eval mode
        return super().train(False)


# --------------------------------------------------------------------------------------------- Inception
def resolve_inception_weights(path: str | os.PathLike | None) -> Path:
    """The local Inception weights file: ``path`` if given, else torch-fidelity's file in torch's hub
    cache. Stops with one sentence that says how to get the file when it is missing."""
    if path is None:
        path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME
        given = "evaluation.inception_weights is not set and torch's hub cache has no " + INCEPTION_FILENAME
    else:
        given = f"evaluation.inception_weights={path} does not exist"
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{given}; download {INCEPTION_URL} on a machine with internet, copy it here and pass "
            "evaluation.inception_weights=/path/to/" + INCEPTION_FILENAME + " (or use evaluation.features=classifier)."
        )
    return path


class InceptionFeatures(FeatureNetwork):
    """torch-fidelity's InceptionV3 from a local weights file: 2048-d pool features and 1008 logits."""

    name = "inception"
    num_features = 2048

    def __init__(self, weights_path: str | os.PathLike | None = None, value_range: str = "[-1,1]"):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = resolve_inception_weights(weights_path)
        try:  # check the file safely first (torch-fidelity itself unpickles it with weights_only=False)
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"evaluation.inception_weights={path} is not a readable InceptionV3 state_dict "
                             f"({type(e).__name__}); use the file {INCEPTION_URL}.") from None
        if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
            raise ValueError(f"evaluation.inception_weights={path} is not an InceptionV3 state_dict (no Mixed_7c "
                             f"weights); use the file {INCEPTION_URL}.")
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=str(path))
        self.value_range = value_range
        st = path.stat()
        self.key = f"inception-{short_hash([path.name, st.st_size, int(st.st_mtime)], 8)}"

    @torch.no_grad()
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u8 = (to_unit_range(x, self.value_range) * 255.0).round().to(torch.uint8)
        if u8.shape[1] == 1:
            u8 = u8.expand(-1, 3, -1, -1)
        if u8.shape[1] != 3:
            raise ValueError(f"evaluation.features=inception needs 1- or 3-channel images, got {u8.shape[1]} channels; "
                             "use evaluation.features=classifier.")
        feats, logits = self.net(u8)
        return feats, logits


def write_random_inception_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save a state_dict of torch-fidelity's InceptionV3 architecture with random weights.

    For tests and CPU timings where the real weights cannot be downloaded: the features are
    meaningless, but every step of the pipeline (loading, resizing, extraction) is the real one."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    original = tfi.FeatureExtractorInceptionV3.load_state_dict
    original_url = tfi.load_state_dict_from_url
    torch.manual_seed(seed)
    try:  # build the architecture without its download / load step
        tfi.FeatureExtractorInceptionV3.load_state_dict = lambda self, sd, *a, **k: None
        tfi.load_state_dict_from_url = lambda *a, **k: {}
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        tfi.FeatureExtractorInceptionV3.load_state_dict = original
        tfi.load_state_dict_from_url = original_url
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


# --------------------------------------------------------------------------------------------- classifier
class ClassifierFeatures(FeatureNetwork):
    """A trained ``FeatureClassifier``: its bottleneck features and its class logits."""

    name = "classifier"

    def __init__(self, classifier: nn.Module, key: str, value_range: str = "[-1,1]"):
        super().__init__()
        self.classifier = classifier.eval()
        self.classifier.requires_grad_(False)
        self.num_features = int(classifier.feature_dim)
        self.key, self.value_range = key, value_range
        lo = -1.0 if value_range == "[-1,1]" else 0.0
        self._lo = lo

    @torch.no_grad()
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.float().clamp(self._lo, 1.0)
        feats = self.classifier.features(x)
        return feats, self.classifier.head(feats)


def _labelled_tensors(ds: Any, what: str) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for i in range(len(ds)):
        item = ds[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ValueError(f"evaluation.features=classifier needs a labelled dataset, but the {what} split has no "
                             "labels; use evaluation.features=inception.")
        xs.append(item[0])
        ys.append(int(item[1]))
    return torch.stack(xs).float(), torch.tensor(ys, dtype=torch.long)


def _check_classifiable(datamodule: Any) -> None:
    if len(getattr(datamodule, "data_shape", ())) != 3:
        raise ValueError(f"evaluation.features=classifier is for images, but the data shape is {datamodule.data_shape}; "
                         "low-dimensional data uses evaluation.metrics=[swd, w2, mmd, nll].")
    if getattr(datamodule, "num_classes", None) is None:
        raise ValueError(f"evaluation.features=classifier needs class labels, but dataset {type(datamodule).__name__} "
                         "is unlabelled; use evaluation.features=inception.")


CLASSIFIER_RECIPE = {"epochs": 15, "lr": 2e-3, "batch_size": 128}  # defaults of train_feature_classifier


def train_feature_classifier(datamodule: Any, widths: Iterable[int] = (32, 64, 128), feature_dim: int = 128,
                             epochs: int = 15, lr: float = 2e-3, batch_size: int = 128, seed: int = 0,
                             progress: bool = True) -> tuple[nn.Module, dict]:
    """Train a ``FeatureClassifier`` on the datamodule's train split (cross-entropy, AdamW with a cosine
    learning-rate decay, small random translations); returns it in eval mode and
    ``{"val_accuracy", "epochs", ...}`` measured on the val split."""
    from diffusion_lab.nets import FeatureClassifier

    _check_classifiable(datamodule)
    datamodule.setup()
    x, y = _labelled_tensors(datamodule.train_set, "train")
    val = datamodule.val_set if datamodule.val_set is not None and len(datamodule.val_set) else None
    xv, yv = _labelled_tensors(val, "val") if val is not None else (x[:0], y[:0])
    g = torch.Generator().manual_seed(seed)
    # the global RNG (initialisation, dropout) is forked: training the classifier never shifts the
    # random stream of the diffusion training it runs inside (exact resume)
    with torch.random.fork_rng(devices=[]), torch.enable_grad():  # enable_grad: callers may be in no_grad
        torch.manual_seed(seed)
        net = FeatureClassifier(in_channels=x.shape[1], num_classes=int(datamodule.num_classes), widths=tuple(widths),
                                feature_dim=feature_dim)
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        steps_per_epoch = max(1, len(x) // batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        pad = max(1, x.shape[-1] // 8)
        net.train()
        _fit(net, opt, sched, x, y, g, epochs, steps_per_epoch, batch_size, pad, progress)
    net.eval()
    acc = float("nan")
    if len(xv):
        with torch.no_grad():
            acc = float((net(xv).argmax(1) == yv).float().mean())
    return net, {"val_accuracy": acc, "epochs": epochs, "train_size": len(x)}


def _fit(net, opt, sched, x, y, g, epochs, steps_per_epoch, batch_size, pad, progress) -> None:
    bar = tqdm(range(epochs), desc="training the FID feature classifier", leave=False, disable=not progress)
    for _ in bar:
        perm = torch.randperm(len(x), generator=g)
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            xb = x[idx]
            # random translation by up to `pad` pixels (replicate padding): cheap augmentation
            dx, dy = (int(v) for v in torch.randint(-pad, pad + 1, (2,), generator=g))
            xb = torch.roll(torch.nn.functional.pad(xb, (pad,) * 4, mode="replicate"), (dy, dx), (2, 3))[
                ..., pad:pad + x.shape[-2], pad:pad + x.shape[-1]]
            loss = torch.nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        bar.set_postfix(loss=loss.item())


def load_or_train_classifier(datamodule: Any, cache_dir: str | os.PathLike | None = None, seed: int = 0,
                             progress: bool = True, barrier: Callable[[], None] | None = None, is_writer: bool = True,
                             **train_kwargs: Any) -> ClassifierFeatures:
    """The cached feature classifier of this dataset, trained first when there is none.

    Under DDP only the writer (rank 0) trains and saves; everyone then passes ``barrier`` and loads."""
    from diffusion_lab.nets import FeatureClassifier

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    _check_classifiable(datamodule)
    unknown = sorted(set(train_kwargs) - {"widths", "feature_dim", "epochs", "lr", "batch_size"})
    if unknown:
        raise ValueError(f"evaluation.classifier.{unknown[0]} is not an option of the feature classifier; use widths, "
                         "feature_dim, epochs, lr or batch_size.")
    train_kwargs = {k: (list(v) if not isinstance(v, (str, bytes)) and hasattr(v, "__iter__") else v)
                    for k, v in train_kwargs.items()}
    arch = {"widths": list(train_kwargs.get("widths", (32, 64, 128))), "feature_dim": int(train_kwargs.get("feature_dim", 128))}
    # the file name changes with the training recipe and with the network's code (its parameter shapes)
    shapes = [[k, list(v.shape)] for k, v in FeatureClassifier(in_channels=int(datamodule.data_shape[0]),
                                                               num_classes=int(datamodule.num_classes),
                                                               widths=tuple(arch["widths"]),
                                                               feature_dim=arch["feature_dim"]).state_dict().items()]
    recipe = {**CLASSIFIER_RECIPE, **train_kwargs, **arch, "seed": seed, "shapes": shapes}
    path = cache / "classifier" / f"{dataset_key(datamodule)}_{short_hash(recipe, 8)}.pt"
    if is_writer and not path.is_file():
        net, info = train_feature_classifier(datamodule, seed=seed, progress=progress, **train_kwargs)
        atomic_save({"state_dict": net.state_dict(), "arch": arch, "in_channels": int(datamodule.data_shape[0]),
                     "num_classes": int(datamodule.num_classes), "info": info}, path)
        log.info("trained the FID feature classifier (val accuracy %.3f), cached at %s", info["val_accuracy"], path)
    if barrier is not None:
        barrier()
    blob = torch.load(path, map_location="cpu", weights_only=True)
    net = FeatureClassifier(in_channels=blob["in_channels"], num_classes=blob["num_classes"],
                            widths=tuple(blob["arch"]["widths"]), feature_dim=blob["arch"]["feature_dim"])
    net.load_state_dict(blob["state_dict"])
    digest = hashlib.sha1(b"".join(t.detach().cpu().numpy().tobytes() for t in blob["state_dict"].values())).hexdigest()
    feats = ClassifierFeatures(net, key=f"classifier-{digest[:8]}", value_range=value_range_of(datamodule))
    feats.info = dict(blob.get("info", {}), path=str(path))
    return feats


def build_feature_network(kind: str, datamodule: Any, inception_weights: str | None = None,
                          cache_dir: str | os.PathLike | None = None, progress: bool = True,
                          barrier: Callable[[], None] | None = None, is_writer: bool = True,
                          classifier: dict | None = None) -> FeatureNetwork:
    """``kind`` = 'inception' | 'classifier' (see the module docstring)."""
    if kind == "inception":
        return InceptionFeatures(inception_weights, value_range=value_range_of(datamodule))
    if kind == "classifier":
        return load_or_train_classifier(datamodule, cache_dir, progress=progress, barrier=barrier, is_writer=is_writer,
                                        **(classifier or {}))
    raise ValueError(f"evaluation.features={kind!r} is not a feature network; choose one of {FEATURE_NETWORKS}.")


@torch.no_grad()
def extract_features(net: FeatureNetwork, images: Tensor, batch_size: int = 256, device: torch.device | str | None = None,
                     progress: bool = False, desc: str = "features") -> tuple[Tensor, Tensor]:
    """(features, logits) of a batch of images, in chunks of ``batch_size``, with a progress bar."""
    device = torch.device(device) if device is not None else next(net.parameters()).device
    feats, logits = [], []
    starts = range(0, images.shape[0], batch_size)
    for s in tqdm(starts, desc=desc, leave=False, disable=not progress):
        f, lg = net(images[s:s + batch_size].to(device))
        feats.append(f.float().cpu())
        logits.append(lg.float().cpu())
    if not feats:
        return torch.zeros(0, net.num_features), torch.zeros(0, 1)
    return torch.cat(feats), torch.cat(logits)
