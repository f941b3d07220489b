"""woof: fine-tune timm Vision Transformers on ImageWoof, fully and with LoRA, and compare."""
from woof.models import load_models

__all__ = ["load_models"]
