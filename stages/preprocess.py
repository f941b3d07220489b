"""Stage preprocess: data/raw -> data/prepared/{train,val}.safetensors + classes.json"""
from woof.data import preprocess
from woof.io import load_params, write_json
from woof.models import create_model, data_config

if __name__ == "__main__":
    params = load_params()
    data = params["data"]
    # Only the model's preprocessing config is needed here, so random weights do (no download).
    model = create_model(params["model"]["name"], img_size=data["image_size"], pretrained=False)
    stats = preprocess("data/raw", "data/prepared", data_config(model, data["image_size"]),
                       train_fraction=data["train_fraction"], seed=data["seed"], split=data["split"])
    write_json("metrics/data.json", stats)
    print(stats)
