"""Stage evaluate: the zero-shot baseline and both fine-tuned models on the val split."""
from woof.data import load_classes, load_split
from woof.evaluate import evaluate_models
from woof.io import load_params, write_csv, write_json
from woof.models import create_model, load_model

if __name__ == "__main__":
    params = load_params()
    classes = load_classes("data/prepared/classes.json")
    images, labels = load_split("data/prepared/val.safetensors")
    # The untrained model whose 10-class head is the ImageNet head restricted to our breeds.
    models = {"zero_shot": create_model(params["model"]["name"], num_classes=len(classes),
                                        img_size=params["data"]["image_size"],
                                        weights=params["model"]["weights"],
                                        class_indices=[c["imagenet_index"] for c in classes])}
    models.update({m: load_model(f"models/{m}")[0] for m in ("full", "lora")})
    metrics, per_class, predictions = evaluate_models(
        models, images, labels, [c["name"] for c in classes], params["data"]["image_size"],
        params["evaluate"]["batch_size"], params["train"]["precision"])
    for method, rows in predictions.items():
        write_csv(f"plots/predictions_{method}.csv", rows)
    write_csv("plots/per_class.csv", per_class)
    write_json("metrics/evaluate.json", metrics)
    for method, m in metrics.items():
        print(f"{method:>9}: top-1 {m['top1']:.4f}  top-5 {m['top5']:.4f}  loss {m['loss']:.4f}  "
              f"{m['images_per_s']:.0f} img/s")
