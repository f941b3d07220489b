"""woof: fine-tune timm Vision Transformers on ImageWoof, fully and with LoRA, and compare."""
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]  # the repository: models/ is found from anywhere


def load_models(root=None, device="cpu"):
    """The two fine-tuned models of the pipeline, ready for inference: {"full": m, "lora": m}.
    root: the folder holding full/ and lora/ (default: the project's models/)."""
    root = Path(root) if root is not None else PROJECT / "models"
    for method in ("full", "lora"):
        if not (root / method / "model.safetensors").exists():
            raise FileNotFoundError(f"{root / method}/model.safetensors not found: run `dvc repro` (or `make`) "
                                    f"in {PROJECT} first")
    from woof.models import load_models as load  # lazy: `import woof` stays cheap for every stage
    return load(root, device)


__all__ = ["PROJECT", "load_models"]
