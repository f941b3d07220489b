"""woof: fine-tune timm Vision Transformers on ImageWoof, fully and with LoRA, and compare."""


def load_models(root="models", device="cpu"):
    """The two fine-tuned models of the pipeline, ready for inference: {"full": m, "lora": m}."""
    from woof.models import load_models as load  # lazy: `import woof` stays cheap for every stage
    return load(root, device)


__all__ = ["load_models"]
