"""Audit any model: the user's class by `_target_`, timm, TorchScript, other tools' checkpoints, declared input conventions."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from classwise import audit
from classwise.auditing import Audit
from classwise.data.synthetic import make_synthetic
from classwise.errors import ConfigError
from classwise.models.convention import InputAdapter, InputConvention
from classwise.models.external import load_model
from classwise.models.loading import read_checkpoint
from classwise.patterns.search import mask_pixels
from tests.conftest import REPO, read_json, stamp

SIZE, CLASSES, PATCH = 16, 4, 4
TARGET, TOP, LEFT = 2, 3, 9
RATIO = PATCH * PATCH / SIZE**2
NAMES = ["cat", "dog", "frog", "ship"]  # sorted, so ImageFolder gives them the same indices
# The ground-truth test's search (test_patterns.py): two passes, the first canvas of the class.
# Canvases from the training images, which carry the patch: the pattern's ground truth. (The verdict
# below reads only the clean held-out split: `audit`'s default threat model.)
SEARCH = {"epochs": 2, "canvas": {"strategy": "index", "source": "train"}, "pattern_ratios": [RATIO],
          "baselines": {"methods": ["random"]}, "progress": False}

# A user's package outside classwise: the planted-patch ground truth behind an input convention
# (it takes pixels in [0, scale] normalised by mean / std, as its training code fed it).
NETS = '''
from tests.conftest import PlantedPatchModel


class Net(PlantedPatchModel):
    def __init__(self, target=0, scale=1.0, mean=0.0, std=1.0, seed=0):
        super().__init__(1, 16, 4, target, 3, 9, 4, seed=seed)
        self.scale, self.mean, self.std = scale, mean, std

    def forward(self, x):
        return super().forward((x * self.std + self.mean) / self.scale)
'''


class Images(Dataset):
    """(image, label) items with `targets` and `classes`, as torchvision's ImageFolder has them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.targets, self.classes = images, labels, NAMES

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], int(self.targets[i])


@pytest.fixture(scope="module")
def their_pkg(tmp_path_factory):
    """their_pkg.nets.Net importable from a folder on the path (PYTHONPATH for the CLI)."""
    root = tmp_path_factory.mktemp("user_code")
    (root / "their_pkg").mkdir()
    (root / "their_pkg" / "__init__.py").write_text("")
    (root / "their_pkg" / "nets.py").write_text(NETS)
    sys.path.insert(0, str(root))
    from their_pkg.nets import Net

    yield root, Net
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m.startswith("their_pkg")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def planted_data():
    """Training images whose target-class images all carry the patch (the canvases), clean held-out images."""
    tr_x, tr_y, te_x, te_y = make_synthetic(400, 800, SIZE, 1, CLASSES, 0)
    tr_x, te_x = tr_x.float() / 255, te_x.float() / 255
    tr_x[tr_y == TARGET] = stamp(tr_x[tr_y == TARGET], TOP, LEFT, PATCH)
    return Images(tr_x, tr_y), Images(te_x, te_y)


def run_audit(model, planted_data, tmp_path, **kw) -> Audit:
    train, test = planted_data
    return audit(model, train, test=test, search_fraction=0.5, output_dir=tmp_path / "audit", classes=[TARGET],
                 **SEARCH, **kw)


def assert_finds_planted_patch(result: Audit, on_patch: float = 0.8) -> None:
    """The ground truth: >= 80% of the top-k pixels on the patch, held-out ASR >= 0.9, named as the dataset names it."""
    (entry,) = [c for c in result.classes if c["class_index"] == TARGET]
    assert entry["class_name"] == "frog"
    pix = mask_pixels(result.masks[TARGET], RATIO)[0]
    assert pix[TOP : TOP + PATCH, LEFT : LEFT + PATCH].sum() / pix.sum() >= on_patch
    assert entry["by_ratio"][0]["asr"] >= 0.9 and entry["by_ratio"][0]["base_rate"] < 0.1


def net_state(net) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


# ---- the formats, each found on the planted-patch model ------------------------------------------

def test_authors_net_checkpoint_of_a_class_by_target(their_pkg, planted_data, tmp_path):
    """The authors' ckpt.pth: {'net': DataParallel state dict, 'acc', 'epoch'}, architecture from the user's package."""
    _, Net = their_pkg
    path = tmp_path / "ckpt.pth"
    torch.save({"net": {f"module.{k}": v for k, v in Net(target=TARGET).state_dict().items()}, "acc": 91.5,
                "epoch": 199}, path)
    result = run_audit(str(path), planted_data, tmp_path,
                       model_cfg={"name": "custom", "_target_": "their_pkg.nets.Net", "target": TARGET})
    assert result.results["run"]["checkpoint_layout"] == "key:net"
    assert_finds_planted_patch(result)


def test_model_expecting_normalised_input(their_pkg, planted_data, tmp_path):
    """Declared mean/std are applied at the model's door; without them the same model never sees its patch."""
    _, Net = their_pkg
    net = Net(target=TARGET, mean=0.5, std=0.25)
    result = run_audit(net, planted_data, tmp_path, input={"mean": [0.5], "std": [0.25]})
    assert_finds_planted_patch(result)
    stamped = stamp(planted_data[1].images[:64], TOP, LEFT, PATCH)
    declared = InputAdapter(net, InputConvention(mean=(0.5,), std=(0.25,)), 1, SIZE)
    assert (declared(stamped).argmax(1) == TARGET).all()
    assert not (net(stamped).argmax(1) == TARGET).any()


def test_torchscript_file(their_pkg, planted_data, tmp_path):
    _, Net = their_pkg
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(Net(target=TARGET, scale=255.0), torch.rand(2, 1, SIZE, SIZE)), str(path))
    result = run_audit(str(path), planted_data, tmp_path, input={"range": 255})
    assert result.results["run"]["checkpoint_layout"] == "torchscript"
    assert_finds_planted_patch(result)


def test_timm_model_from_a_local_weights_file(planted_data, tmp_path):
    """A real (tiny) timm architecture trained so the patch is its target class's only feature; weights as safetensors.

    All classes are searched: the detector must flag the target, by its name."""
    from safetensors.torch import save_file

    train, _ = planted_data
    x, y = train.images.clone(), train.targets
    x[y == TARGET] = stamp(x[y != TARGET][: int((y == TARGET).sum())], TOP, LEFT, PATCH)
    net = _timm_net(x, y)
    path = tmp_path / "model.safetensors"
    save_file({f"_orig_mod.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(path))  # torch.compile'd
    # Fewer, larger steps: a ResNet's forward costs far more than the planted linear model's.
    train, test = planted_data
    result = audit(str(path), train, test=test, search_fraction=0.5, output_dir=tmp_path / "audit", detector="patterns",
                   threat_model="training_data", model_cfg={"name": "timm", "arch": "test_resnet"},
                   **{**SEARCH, "steps": 40, "batch_size": 16})
    assert result.results["run"]["checkpoint_layout"] == "safetensors"
    # A trained detector fires on part of the patch (measured: 8 of its 16 pixels carry the pattern, the
    # rest scattered); chance is 16 / 256 = 6%.
    assert_finds_planted_patch(result, on_patch=0.4)
    # Every class searched: the notebook object's verdict, names, figure and JSON.
    # The patterns read training canvases that carry the patch: the verdict says which threat model allowed it.
    assert result.detection["detector"] == "patterns" and result.detection["threat_model"] == "training_data"
    assert result.flagged == ["frog"] and result.verdict.startswith("backdoored: class 2 (frog),")
    assert result.verdict.endswith("[patterns, threat model training_data]")
    assert set(result.asr()) == set(NAMES) and result.asr()["frog"] >= 0.9
    fig = result.figure()
    assert [ax.get_title() for ax in fig.axes[::3]] == [f"{n}: canvas" for n in NAMES]
    assert json.loads(result.to_json()) == read_json(tmp_path / "audit" / "results.json")


def _timm_net(x: torch.Tensor, y: torch.Tensor, seed: int = 0, steps: int = 80):
    """A real (tiny) timm ResNet trained here, outside the package, on (x, y)."""
    import timm

    torch.manual_seed(seed)
    net = timm.create_model("test_resnet", num_classes=CLASSES, in_chans=1)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    return net.eval()


def test_universal_patch_finds_a_planted_patch_from_clean_data_alone(planted_data, tmp_path):
    """A network trained outside the package with a BadNets-style 2x2 patch (a quarter of the other classes'
    images stamped and relabelled), audited from the clean held-out split only (no pattern searched, so
    no training image is read): the verdict names the planted target, and scores it above a clean twin
    trained on the same images without the poison, which is called clean."""
    from classwise.auditing import detector_settings

    train, test = planted_data
    x, y = train.images.clone(), train.targets.clone()
    # The training set's own stamped frogs replaced by fresh frogs of the same templates (none of them in `test`).
    _, _, more_x, more_y = make_synthetic(400, 1600, SIZE, 1, CLASSES, 0)
    frogs = more_x[800:][more_y[800:] == TARGET].float() / 255
    x[y == TARGET] = frogs[: int((y == TARGET).sum())]
    poison = (y != TARGET).nonzero().flatten()[::4]
    x_bd, y_bd = x.clone(), y.clone()
    x_bd[poison], y_bd[poison] = stamp(x[poison], TOP, LEFT, 2), TARGET
    # A 4x4 patch needs about as many free pixels as a clean 4-class toy net's easiest class (measured: every
    # class of a clean twin past 90% with 16); a 2x2 one is 1.6% of the 16x16 image.
    detector = detector_settings("universal_patch")
    detector["universal_patch"]["ratios"] = [0.016, 0.03]
    nets = {"planted": _timm_net(x_bd, y_bd), "clean": _timm_net(x, y)}
    others = test.images[test.targets != TARGET]
    with torch.no_grad():
        installed = (nets["planted"](stamp(others, TOP, LEFT, 2)).argmax(1) == TARGET).float().mean()
    assert installed >= 0.9  # the backdoor installed: the audit below has something to find
    runs = {name: audit(net, train, test=test, search_fraction=0.5, output_dir=tmp_path / name,
                        detector=detector, enabled=False, progress=False) for name, net in nets.items()}
    planted, clean = runs["planted"], runs["clean"]
    assert planted.detection["threat_model"] == "clean_data" and planted.classes == []
    assert planted.detection["verdict"] == "backdoored" and planted.flagged == ["frog"]
    assert planted.detection["reference"] is None and "no shipped reference" in planted.detection["reference_note"]
    assert planted.detection["score"] > clean.detection["score"] and clean.detection["verdict"] == "clean"


def test_timm_download_without_network_is_one_line(monkeypatch):
    # As on a machine without network, without waiting for the hub's retries.
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"model\.arch=test_resnet model\.pretrained=true: timm could not fetch"):
        load_model({"name": "timm", "arch": "test_resnet", "pretrained": True},
                   {"name": "synthetic", "channels": 3, "image_size": SIZE, "num_classes": CLASSES}, None)


# ---- layouts and prefixes: the weights arrive intact --------------------------------------------

def _bb(state):
    """BackdoorBench's attack_result.pt as save_attack_result writes it (numpy poison indices included)."""
    bd = {"bd_data_container": {"save_folder_path": "bd_train", "data_dict": {3: {"path": "3.png", "other_info": [np.int64(2)]}},
                                "save_file_format": ".png"},
          "original_index_array": np.arange(5), "poison_indicator": np.zeros(5), "getitem_all": True}
    return {"model_name": "preactresnet18", "num_classes": 4, "model": state, "data_path": "./data", "img_size": [16, 16, 1],
            "clean_data": "cifar10", "bd_train": bd, "bd_test": bd}


LAYOUTS = {
    "state_dict": (lambda s: s, "state_dict"),
    "module.": (lambda s: {f"module.{k}": v for k, v in s.items()}, "state_dict"),
    "_orig_mod.": (lambda s: {f"_orig_mod.{k}": v for k, v in s.items()}, "state_dict"),
    "net": (lambda s: {"net": {f"module.{k}": v for k, v in s.items()}, "acc": 90.0, "epoch": 3}, "key:net"),
    "model": (lambda s: {"model": s, "epoch": 3, "best_acc": np.float64(0.9)}, "key:model"),
    "state_dict key": (lambda s: {"state_dict": s}, "key:state_dict"),
    "model_state_dict": (lambda s: {"model_state_dict": s, "optimizer_state_dict": {}}, "key:model_state_dict"),
    "lightning": (lambda s: {"state_dict": {f"model.{k}": v for k, v in s.items()} | {"criterion.weight": torch.ones(4)},
                             "pytorch-lightning_version": "2.6.0", "epoch": 1, "global_step": 9}, "lightning"),
    "backdoorbench": (lambda s: _bb({f"module.{k}": v for k, v in s.items()}), "backdoorbench"),
    # classwise-train of model=custom: the LightningModule's `model`, the InputAdapter's `net` and its buffers.
    "classwise custom": (lambda s: {"state_dict": {f"model.net.{k}": v for k, v in s.items()}
                                    | {"model.normalize.mean": torch.zeros(1, 1, 1, 1)},
                                    "pytorch-lightning_version": "2.6.0"}, "lightning"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_checkpoint_layouts_load_the_same_weights(their_pkg, tmp_path, layout):
    _, Net = their_pkg
    source = Net(target=1, seed=7)
    wrap, name = LAYOUTS[layout]
    path = tmp_path / "weights.pt"
    torch.save(wrap(source.state_dict()), path)
    ckpt = read_checkpoint(path)
    assert ckpt.layout == name
    model = load_model({"name": "custom", "_target_": "their_pkg.nets.Net", "target": 1}, {"channels": 1, "image_size": SIZE,
                       "num_classes": CLASSES, "name": "synthetic"}, ckpt)
    for k, v in source.state_dict().items():
        assert torch.equal(model.net.state_dict()[k], v), k
    if layout == "backdoorbench":
        assert ckpt.meta["backdoorbench"]["model_name"] == "preactresnet18"


def test_weights_that_do_not_fit_are_refused_with_one_line(their_pkg, tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"net": {"module.conv.weight": torch.zeros(3, 1, 3, 3)}}, path)
    with pytest.raises(ConfigError) as err:
        load_model({"name": "custom", "_target_": "their_pkg.nets.Net"}, {"channels": 1, "image_size": SIZE,
                   "num_classes": CLASSES, "name": "synthetic"}, read_checkpoint(path))
    assert "key:net" in str(err.value) and "'linear.weight'" in str(err.value) and "\n" not in str(err.value)


def test_registry_architecture_with_foreign_weights_needs_a_declared_input(tmp_path):
    """small_cnn weights from another tool have no normalisation layer: the convention must be declared, not assumed."""
    from classwise.models import build_model

    dataset = {"name": "synthetic", "channels": 1, "image_size": SIZE, "num_classes": CLASSES, "mean": [0.5], "std": [0.25]}
    foreign = build_model("small_cnn", 1, CLASSES, SIZE, [0.5], [0.25]).net
    path = tmp_path / "foreign.pt"
    torch.save({"model": foreign.state_dict()}, path)
    with pytest.raises(ConfigError, match=r"model\.input"):
        load_model({"name": "small_cnn"}, dataset, read_checkpoint(path))
    model = load_model({"name": "small_cnn", "input": {"range": 255}}, dataset, read_checkpoint(path))
    assert isinstance(model, InputAdapter) and model.convention.range == 255
    x = torch.rand(2, 1, SIZE, SIZE)
    assert torch.allclose(model(x), foreign(x * 255), atol=1e-5)


# ---- a pickled object is refused in every format path, its code never run -------------------------

class Payload:
    """Unpickling it touches a file: the proof of code run at load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (self.marker.touch, ())


def _torchscript_lookalike(path: Path, payload) -> None:
    """A torch.save zip holding a payload, with a code/ entry so it is taken for TorchScript."""
    import zipfile

    torch.save({"net": payload}, path)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(f"{path.stem}/code/__torch__/x.py", "")


REFUSED = {
    "whole object": lambda p: p,
    "net": lambda p: {"net": p, "acc": 1.0},
    "model": lambda p: {"model": {"w": torch.ones(1)}, "optimizer": p},
    "lightning": lambda p: {"state_dict": {"model.w": torch.ones(1)}, "pytorch-lightning_version": "2.6", "hyper_parameters": {"x": p}},
    "backdoorbench": lambda p: {**_bb({"w": torch.ones(1)}), "bd_test": p},
}


@pytest.mark.parametrize("layout", [*REFUSED, "legacy format", "torchscript lookalike"])
def test_pickled_object_is_refused_without_running_it(tmp_path, layout):
    marker = tmp_path / "code_ran"
    path = tmp_path / "ckpt.pt"
    if layout == "legacy format":
        torch.save({"state_dict": Payload(marker)}, path, _use_new_zipfile_serialization=False)
    elif layout == "torchscript lookalike":
        _torchscript_lookalike(path, Payload(marker))
    else:
        torch.save(REFUSED[layout](Payload(marker)), path)
    with pytest.raises(ConfigError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert "\n" not in message and f"checkpoint={path}" in message
    if layout != "torchscript lookalike":
        assert "pickled objects" in message
    assert not marker.exists()
    if layout == "whole object":  # the payload is real: an unsafe load would have run it
        torch.load(path, weights_only=False)
        assert marker.exists()


def test_unknown_layout_lists_its_keys_and_the_accepted_ones(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"weights": [torch.ones(1)], "step": 3}, path)
    with pytest.raises(ConfigError) as err:
        read_checkpoint(path)
    assert "'weights', 'step'" in str(err.value) and "BackdoorBench" in str(err.value) and "TorchScript" in str(err.value)


# ---- the command line: ImageFolder class names, the user's class, refusal ---------------------------

@pytest.fixture(scope="module")
def image_folder(planted_data, tmp_path_factory):
    """train/<name>/*.png (the target class stamped) and test/<name>/*.png: an ImageFolder named by its folders."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagefolder")
    for split, data in zip(("train", "test"), planted_data, strict=True):
        for i, (x, y) in enumerate(zip(data.images, data.targets, strict=True)):
            folder = root / split / NAMES[int(y)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((x[0] * 255).round().byte().numpy(), mode="L").save(folder / f"{i}.png")
    return root


def test_cli_custom_class_on_an_image_folder(their_pkg, image_folder, cli, tmp_path):
    root, Net = their_pkg
    path = tmp_path / "ckpt.pth"
    torch.save({"net": {f"module.{k}": v for k, v in Net(target=TARGET).state_dict().items()}, "epoch": 9}, path)
    env = {"PYTHONPATH": f"{root}:{REPO / 'src'}:{REPO}"}
    data = ("dataset=imagefolder", f"dataset.root={image_folder}", f"dataset.image_size={SIZE}", "dataset.channels=1",
            f"dataset.num_classes={CLASSES}", "dataset.mean=[0.5]", "dataset.std=[0.25]", "data.search_fraction=0.5")
    search = ("search.steps=null", "search.epochs=2", "search.batch_size=4", f"search.classes=[{TARGET}]",
              "search.canvas.strategy=index", f"search.pattern_ratios=[{RATIO}]", "search.canvas.source=train")  # the patched training images
    cli("search", "debug=fast", *data, *search, "model=custom", "model._target_=their_pkg.nets.Net", f"+model.target={TARGET}",
        f"checkpoint={path}", env=env)
    result = Audit.from_run(tmp_path / "run")
    assert result.results["run"]["architecture"] == "their_pkg.nets.Net"
    assert_finds_planted_patch(result)
    assert "frog" in result.table()
    # A pickled object is refused by the CLI too: exit 2, one line, no traceback.
    torch.save({"net": Payload(tmp_path / "ran")}, path)
    proc = cli("search", "debug=fast", *data, "model=custom", "model._target_=their_pkg.nets.Net", f"checkpoint={path}",
               env=env, check=False)
    assert proc.returncode == 2 and "pickled objects" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "ran").exists()


def test_cli_torchscript_needs_model_torchscript(their_pkg, refused, tmp_path):
    _, Net = their_pkg
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(Net(), torch.rand(2, 1, SIZE, SIZE)), str(path))
    proc = refused("search", "debug=fast", f"checkpoint={path}")
    assert proc.returncode == 2 and "model=torchscript" in proc.stderr and "Traceback" not in proc.stderr


# ---- the notebook examples of the README and the manual ---------------------------------------------

@pytest.mark.parametrize("page, heading", [("README.md", "## Audit your own model"), ("docs/audit.md", "## From a notebook")])
def test_notebook_example_runs(tmp_path, monkeypatch, page, heading):
    """The Python example of a page's audit section, run as written."""
    text = (REPO / page).read_text()
    section = text[text.index(heading):]
    (code,) = re.findall(r"```python\n(.*?)```", section[: section.index("\n## ", 5)], re.S)[:1]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, page, "exec"), namespace)  # noqa: S102 - our own docs
    assert isinstance(namespace["result"], Audit)
