"""Stage preprocess: data/raw -> data/prepared/{train,val,test}.safetensors + classes.json, files.json"""
from woof import config
from woof.data import preprocess
from woof.errors import run_stage
from woof.io import write_json
from woof.models import check_image_size, create_model, data_config


def main():
    cfg = config.load()
    check_image_size(cfg.model.name, cfg.data.image_size)
    # Only the model's preprocessing config is needed here, so random weights do (no download).
    model = create_model(cfg.model.name, img_size=cfg.data.image_size, pretrained=False)
    stats = preprocess("data/raw", "data/prepared", data_config(model, cfg.data.image_size),
                       train_fraction=cfg.data.train_fraction, seed=cfg.data.seed, split=cfg.data.split)
    write_json("metrics/data.json", stats)
    print(stats)


if __name__ == "__main__":
    run_stage(main)
