"""Stage fetch: the ImageWoof archive -> data/raw/{train,val}/<wnid>/*.JPEG"""
from woof import config
from woof.data import archive_location, fetch
from woof.errors import run_stage


def main():
    cfg = config.load().fetch
    fetch(archive_location(cfg), "data/raw", sha256=cfg.sha256)


if __name__ == "__main__":
    run_stage(main)
