"""Stage evaluate: the zero-shot baseline and both fine-tuned models on the val split."""
from woof.data import load_classes, load_split
from woof.evaluate import classification_metrics, per_class_accuracy, predict
from woof.io import load_params, write_csv, write_json
from woof.models import create_model, data_config, load_model

if __name__ == "__main__":
    params = load_params()
    batch_size, precision = params["evaluate"]["batch_size"], params.get("train", {}).get("precision", "fp32")
    classes = load_classes("data/prepared/classes.json")
    images, labels = load_split("data/prepared/val.safetensors")
    names = [c["name"] for c in classes]
    # The untrained model whose 10-class head is the ImageNet head restricted to our breeds.
    models = {"zero_shot": create_model(params["model"]["name"], num_classes=len(classes),
                                        img_size=params["data"]["image_size"],
                                        weights=params["model"].get("weights"),
                                        class_indices=[c["imagenet_index"] for c in classes])}
    models.update({m: load_model(f"models/{m}")[0] for m in ("full", "lora")})
    metrics, per_class = {}, []
    for method, model in models.items():
        cfg = data_config(model, params["data"]["image_size"])
        logits, speed = predict(model, images, cfg, batch_size, precision=precision, desc=f"evaluate {method}")
        metrics[method] = {**classification_metrics(logits, labels), "images_per_s": speed}
        accs = per_class_accuracy(logits, labels, len(classes))
        per_class += [{"class": n, "method": method, "accuracy": a} for n, a in zip(names, accs)]
        write_csv(f"plots/predictions_{method}.csv",
                  [{"actual": names[a], "predicted": names[p]} for a, p in zip(labels, logits.argmax(1))])
        print(method, metrics[method])
    write_json("metrics/evaluate.json", metrics)
    write_csv("plots/per_class.csv", per_class)
