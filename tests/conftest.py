"""Shared fixtures: a tiny IMDB-like archive, a local HTTP server and a tiny model."""

import http.server
import io
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import helpers  # noqa: E402

# The tests' models are tiny: one thread is faster and leaves the other core to a parallel run.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def own_cache_dir(tmp_path_factory, monkeypatch):
    """Each test's own cache folder as the default cache_dir: a test never reads or fills data/cache."""
    folder = tmp_path_factory.mktemp("cache")
    for function in (helpers.tokenize_all, helpers.pretrain_word_vectors):
        defaults = tuple(folder if value is helpers.CACHE_DIR else value for value in function.__defaults__)
        monkeypatch.setattr(function, "__defaults__", defaults)
    return folder


def make_archive(path, files, extra_members=()):
    """Write a tar.gz holding `files` ({member name: text}) and any extra TarInfo members."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra_members:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return Path(path)


def imdb_files(reviews_per_folder=2):
    """Member names and texts in the IMDB layout."""
    files = {"aclImdb/README": "tiny test copy"}
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            for i in range(reviews_per_folder):
                word = "great" if label == "pos" else "awful"
                files[f"aclImdb/{split}/{label}/{i}_5.txt"] = f"A {word} film number {i}.<br />Really {word}."
    return files


@pytest.fixture
def tiny_archive(tmp_path):
    return make_archive(tmp_path / "aclImdb_v1.tar.gz", imdb_files())


class _Handler(http.server.BaseHTTPRequestHandler):
    routes = {}

    def do_GET(self):  # noqa: N802 (the name http.server expects)
        body, claimed_length = self.routes.get(self.path, (None, None))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(claimed_length or len(body)))
        self.end_headers()
        self.wfile.write(body)  # a claimed length above len(body) simulates a broken download

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """A server on 127.0.0.1; set routes[path] = (body, claimed_length or None)."""
    routes = {}
    handler = type("Handler", (_Handler,), {"routes": routes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.routes = routes
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


class CreatesAFile:
    """Unpickling this object calls open(marker, "w"): code from the file runs, and leaves a trace."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class TinyModel(nn.Module):
    """A small one-direction LSTM classifier with the notebook model's interface."""

    def __init__(self, vocab_size=50, dim=8, pooling="max"):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        self.fc = nn.Linear(dim, 1)
        self.pooling = pooling

    def forward(self, tokens, lengths):
        return self.forward_embedded(self.embedding(tokens), lengths)

    def forward_embedded(self, embedded, lengths):
        out, _ = self.lstm(embedded)
        return self.fc(helpers.pool_over_time(out, lengths, self.pooling)).squeeze(1)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return TinyModel()


@pytest.fixture
def vocab():
    return helpers.build_vocab([["great", "film", "awful", "plot", "."]])


# Out-of-domain sets in the layout of the real ones (helpers.OOD_SETS), with sentences written for these tests:
# the real files are not committed. Their checksums differ from the published ones, and runs say so.
OOD_SENTENCES = {
    "amazon_cells_labelled.txt": [("Great phone, the battery lasts for days.", 1), ("Broke after a week.", 0),
                                  ("Excellent sound and a good price.", 1), ("The charger never worked.", 0),
                                  ("I love this headset.", 1), ("Terrible quality, do not buy.", 0)],
    "yelp_labelled.txt": [("The food was wonderful.", 1), ("Cold fries and a rude waiter.", 0),
                          ("Best pizza in town!", 1), ("We waited an hour for bland soup.", 0),
                          ("Friendly staff, great coffee.", 1), ("Never again.", 0)],
}
OOD_REVIEWS = {"neg": ["the plot is a mess and the acting is awful .\nboring from start to end .",
                       "a dull , lifeless film .\ni wanted my money back ."],
               "pos": ["a wonderful film .\nthe cast is superb and the story moving .",
                       "great fun , and a great ending ."]}


def write_ood_folder(folder):
    """A folder holding the three out-of-domain sets (tiny, made up) under their real file names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in OOD_SENTENCES.items():
        (folder / name).write_text("".join(f"{text}\t{label}\n" for text, label in rows), encoding="utf-8")
    reviews = {f"txt_sentoken/{label}/cv00{i}_{i}.txt": text for label, texts in OOD_REVIEWS.items()
               for i, text in enumerate(texts)}
    make_archive(folder / "review_polarity.tar.gz", reviews)
    return folder


@pytest.fixture(scope="session")
def ood_folder(tmp_path_factory):
    return write_ood_folder(tmp_path_factory.mktemp("ood"))
