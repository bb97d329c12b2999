"""Make a default run's executed notebook the committed one: `python sweeps/publish.py EXECUTED DESTINATION`.

Used by `make publish`. The committed notebook must run as it is: papermill's injected-parameters
cell is dropped, and a run that was not a default one, did not finish, or whose outputs name a path
of this machine is refused with nothing written.
"""

import base64
import io
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import helpers  # noqa: E402

# Settings that say only where a run reads or writes; any other injected value makes a run non-default.
LOCATION_PARAMETERS = ("imdb_archive", "run_dir", "ood_data")


def publish_notebook(executed, destination):
    """Copy a run's executed notebook to `destination` as the committed notebook, fit to run as it is.

    Dropped: papermill's injected-parameters cell (so "Run all" uses the defaults), its record of
    paths and per-cell timestamps; images are stored in fewer bytes with the same pixels. Refused,
    with nothing written: a run given any parameter other than where to read and write (one given a
    default's own value is a default run), a run that failed or was not run to the end, and outputs
    that name a path of this machine (the repository, the home folder, the archive or run folder).
    """
    notebook = json.loads(Path(executed).read_text(encoding="utf-8"))
    injected_cells = [c for c in notebook["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    injected = {}
    for cell in injected_cells:
        injected.update(helpers.injected_parameters(["".join(cell["source"])]))
    defaults = {}
    for cell in notebook["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            defaults.update(helpers.assigned_values("".join(cell["source"])))
    not_default = sorted(name for name, value in injected.items()
                         if name not in LOCATION_PARAMETERS and (name not in defaults or defaults[name] != value))
    if not_default:
        raise ValueError(f"{executed} was run with {', '.join(not_default)} set; publish only a default run")
    notebook["cells"] = [c for c in notebook["cells"] if c not in injected_cells]
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    failed = [o for c in code for o in c.get("outputs", []) if o["output_type"] == "error"]
    if failed or not all(c.get("execution_count") for c in code):
        raise ValueError(f"{executed} is not one complete run: it holds errors, or cells that were not run")
    papermill_info = notebook.get("metadata", {}).get("papermill", {})
    for key in ("input_path", "output_path", "parameters", "environment_variables"):
        papermill_info.pop(key, None)
    for cell in notebook["cells"]:  # per-cell timestamps say nothing to a reader; keep each cell's duration
        metadata = cell.get("metadata", {})
        metadata.pop("execution", None)
        if "papermill" in metadata:
            metadata["papermill"] = {k: v for k, v in metadata["papermill"].items() if k == "duration"}
    for cell in code:
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}):
                output["data"]["image/png"] = compact_png(output["data"]["image/png"])
    text = json.dumps(notebook)
    paths = [str(helpers.REPO_DIR), str(Path.home()), str(injected.get("imdb_archive", "")),
             str(injected.get("ood_data", ""))]
    if Path(str(injected.get("run_dir", ""))).is_absolute():
        paths.append(str(injected["run_dir"]))
    found = sorted({p for p in paths if len(p) > 1 and (p in text or json.dumps(p)[1:-1] in text)})
    if found:
        raise ValueError(f"{executed} names paths of this machine in its outputs: {', '.join(found)}")
    helpers.write_atomic(destination, json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return destination


def compact_png(png_base64):
    """The same picture in fewer bytes: a fully opaque RGBA PNG re-encoded as RGB, optimised; pixels unchanged."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(png_base64)))
    if image.mode == "RGBA" and image.getchannel("A").getextrema() == (255, 255):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    smaller = base64.b64encode(buffer.getvalue()).decode("ascii")
    return smaller if len(smaller) < len(png_base64) else png_base64


def main(argv=None):
    """The command line: EXECUTED_NOTEBOOK DESTINATION; a refusal exits with status 1 and says why."""
    import argparse

    parser = argparse.ArgumentParser(prog="python sweeps/publish.py", description=__doc__.splitlines()[0])
    parser.add_argument("executed", help="the run's executed notebook, e.g. runs/<time>/sentiment_lstm.ipynb")
    parser.add_argument("destination", help="the committed notebook to write, e.g. notebooks/sentiment_lstm.ipynb")
    args = parser.parse_args(argv)
    try:
        publish_notebook(args.executed, args.destination)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(1, f"error: {err}\n")
    print(f"published {args.executed} as {args.destination}")


if __name__ == "__main__":
    main()
