"""Stage fetch: the ImageWoof archive -> data/raw/{train,val}/<wnid>/*.JPEG"""
from woof.data import archive_location, fetch
from woof.io import load_params

if __name__ == "__main__":
    p = load_params()["fetch"]
    fetch(archive_location(p), "data/raw", sha256=p.get("sha256"))
