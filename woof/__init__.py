"""woof: fine-tune pretrained timm models on ImageWoof, fully and with low-rank adapters, and compare.

The fine-tuned models of the pipeline: `from woof.models import load_models`."""
