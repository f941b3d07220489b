"""python -m woof.predict on photos of any size and kind, with and without built models."""
import pytest
import torch
from PIL import Image

from conftest import WNIDS
from woof import predict
from woof.errors import run_stage
from woof.models import create_model, save_model


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """Two small saved models (random weights at 32 px), as the train stages save them."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    for method in ("full", "lora"):
        model = create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, pretrained=False)
        save_model(model, root / method, {"model": "vit_tiny_patch16_224", "num_classes": 10, "image_size": 32,
                                          "method": method, "classes": WNIDS})
    return root


def photo(path, size, fmt):
    Image.effect_noise(size, 60).convert("RGB").save(path, fmt)
    return str(path)


def test_top5_of_every_model_for_odd_sizes_and_the_attention_picture(models_dir, random_weights, tmp_path,
                                                                     monkeypatch, capsys):
    monkeypatch.setenv("WOOF_WEIGHTS", str(random_weights))  # the zero-shot head's pretrained weights
    png, jpg = photo(tmp_path / "wide.png", (333, 41), "PNG"), photo(tmp_path / "tall.jpg", (57, 401), "JPEG")
    out = tmp_path / "attention.png"
    predict.main([png, jpg, "--models-dir", str(models_dir), "--attention", str(out)])
    lines = [line for line in capsys.readouterr().out.splitlines() if " %" in line]
    assert len(lines) == 6  # three models x two photos
    assert {line.split()[0] for line in lines} == {"full", "lora", "zero_shot"}
    for line in lines:
        breeds = line.split(": ", 1)[1].split(", ")
        assert len(breeds) == 5
        probs = [float(b.rsplit(" ", 2)[-2]) for b in breeds]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.05
    assert any("Samoyed" in line or "beagle" in line or "dingo" in line for line in lines)  # breed names, not wnids
    assert out.read_bytes()[:4] == b"\x89PNG"
    # One model only.
    predict.main([png, "--model", "lora", "--models-dir", str(models_dir)])
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["lora"]


@pytest.mark.parametrize("case", ["text file", "missing photo", "no models", "attention file"])
def test_one_line_for_what_is_wrong(models_dir, tmp_path, capsys, case):
    good = photo(tmp_path / "dog.png", (64, 48), "PNG")
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    args = {"text file": [str(text), "--models-dir", str(models_dir)],
            "missing photo": [str(tmp_path / "nope.png"), "--models-dir", str(models_dir)],
            "no models": [good, "--models-dir", str(tmp_path / "nowhere")],
            "attention file": [good, "--models-dir", str(tmp_path / "nowhere"), "--attention", "maps.pdf"]}[case]
    with pytest.raises(SystemExit) as ended:
        run_stage(predict.main, args)
    err = capsys.readouterr().err
    assert ended.value.code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert {"text file": "notes.jpg is not an image", "missing photo": "nope.png not found",
            "no models": "nowhere/full/model.safetensors not found: build the models first",
            "attention file": "--attention maps.pdf: name a .png or .jpg file"}[case] in err
