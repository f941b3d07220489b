"""Stage fetch: the ImageWoof archive -> data/raw/{train,val}/<wnid>/*.JPEG"""
from woof.data import fetch
from woof.io import load_params

if __name__ == "__main__":
    p = load_params()["fetch"]
    fetch(p["url"], "data/raw", sha256=p.get("sha256"))
