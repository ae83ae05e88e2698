"""Load exports the way a user without cod-train does: run as ``python -I -S isolated.py SITE JOBS OUT``.

``-I -S``: no user site, no current directory, no ``.pth`` files (so not the editable install of cod_train);
SITE (the venv's site-packages) is the one path added. JOBS is a torch file ``[{"dir", "ids", "gguf"}...]``;
OUT gets, per job, the fp32 logits and the greedy continuation, or the error. Kept free of cod_train imports.
"""

import sys

sys.path.append(sys.argv[1])

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

try:
    import cod_train  # noqa: F401
    HAS_COD = True
except ImportError:
    HAS_COD = False


def run(job: dict) -> dict:
    kw = {"gguf_file": job["gguf"]} if job.get("gguf") else {"trust_remote_code": True}
    model = AutoModelForCausalLM.from_pretrained(job["dir"], dtype=torch.float32, **kw).eval()
    ids = job["ids"]
    out = {"class": type(model).__name__, "module": type(model).__module__}
    with torch.no_grad():
        out["logits"] = model(input_ids=ids).logits
        out["greedy"] = model.generate(ids, max_new_tokens=job.get("new", 8), do_sample=False, pad_token_id=0)
    if job.get("text"):
        out["token_ids"] = AutoTokenizer.from_pretrained(job["dir"], **kw)(job["text"])["input_ids"]
    return out


def main() -> None:
    torch.set_num_threads(1)
    results = {"has_cod_train": HAS_COD, "jobs": []}
    for job in torch.load(sys.argv[2]):
        try:
            results["jobs"].append(run(job))
        except Exception as err:  # reported per job, so one failure does not hide the others
            results["jobs"].append({"error": f"{type(err).__name__}: {err}"})
    torch.save(results, sys.argv[3])


if __name__ == "__main__":
    main()
