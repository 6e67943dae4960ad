"""Audit of the error paths: feed the library and the command line the bad inputs and faults a user can cause, and
count how many get a clear answer.

Each case runs in its own Python process against the source tree given by ``--tree`` (default: this checkout), so
the same script measures an older commit too (``git worktree add /tmp/before <commit>``, then
``--tree /tmp/before``). Outcomes:

- ``clear``: the command exits non-zero with at most two lines on stderr (argparse's usage line plus the error)
  and no traceback, or the API raises a ``ValueError`` / ``TypeError`` (a ``UserError`` included); and the message
  contains the case's keyword (the argument, file or problem it must name);
- ``misleading``: a clear-looking error whose message lacks that keyword;
- ``traceback``: a traceback, or an exception of another type (``RuntimeError`` from inside torch, ...);
- ``silent``: accepted without a word where it must be refused.

A few cases are valid input that must simply work (a float16 folder loads as float32, a Haiku tree pickled with
protocol 2 loads): there ``clear`` means it worked.

    python benchmarks/edge_audit.py                       # this checkout: a markdown table and the counts
    python benchmarks/edge_audit.py --tree /tmp/before --json before.json

Synthetic inputs only; tiny models; about 2-4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

SETUP = r"""
import json, shutil, torch
from pathlib import Path
from perceivers.models import create_model
work = Path(WORK)
torch.manual_seed(0)
for name, folder in [("perceiver-ar-debug", "ar"), ("hip-debug", "hip"), ("perceiver-io-language-debug", "mlm"),
                     ("perceiver-io-flow-debug", "flow"), ("perceiver-io-digits", "digits")]:
    create_model(name).save_pretrained(work / folder)
from safetensors.torch import load_file, save_file
weights = load_file(work / "digits" / "model.safetensors")
for folder, change in [("int", lambda t: t.to(torch.int32)), ("half", lambda t: t.half()),
                       ("nan", lambda t: torch.full_like(t, float("nan")))]:
    shutil.copytree(work / "digits", work / folder)
    first = sorted(weights)[0]
    save_file({k: (change(v) if k == first or folder != "nan" else v) for k, v in weights.items()},
              str(work / folder / "model.safetensors"))
shutil.copytree(work / "digits", work / "nested")
(work / "nested" / "config.json").write_text('{"a": ' * 100000 + "1" + "}" * 100000)
(work / "a_file").write_text("not a folder")
"""

# (name, kind, keyword, payload). kind "cli": arguments of `python -m perceivers.cli.main`; "api": a snippet that
# must raise; "train": the CLI after a 2-step digits run in WORK/run, then payload(prepare) tampers with it.
CASES: list[tuple[str, str, str, object]] = [
    ("convert to-hf on a Perceiver AR folder", "cli", "perceiver", ["convert", "to-hf", "{W}/ar", "{W}/o1"]),
    ("convert to-hf on a HiP folder", "cli", "hip", ["convert", "to-hf", "{W}/hip", "{W}/o2"]),
    ("generate --max-new-tokens 10**12", "cli", "max-new-tokens",
     ["generate", "--checkpoint", "{W}/ar", "--max-new-tokens", "1000000000000"]),
    ("train --device nonsense", "cli", "device", ["train", "digits", "--device", "nonsense", "--out", "{W}/r1"]),
    ("eval --device bogus", "cli", "--device", ["eval", "digits", "--checkpoint", "{W}/digits", "--device", "bogus"]),
    ("eval --device cuda without CUDA", "cli", "cuda",
     ["eval", "digits", "--checkpoint", "{W}/digits", "--device", "cuda"]),
    ("eval on integer weights", "cli", "int", ["eval", "digits", "--checkpoint", "{W}/int"]),
    ("eval on float16 weights (loads as float32)", "cli_ok", "accuracy", ["eval", "digits", "--checkpoint", "{W}/half"]),
    ("eval on NaN weights", "cli", "nan", ["eval", "digits", "--checkpoint", "{W}/nan"]),
    ("eval on a deeply nested config.json", "cli", "config.json", ["eval", "digits", "--checkpoint", "{W}/nested"]),
    ("eval digits on a Perceiver AR checkpoint", "cli", "classif", ["eval", "digits", "--checkpoint", "{W}/ar"]),
    ("eval digits on an MLM checkpoint", "cli", "classif", ["eval", "digits", "--checkpoint", "{W}/mlm"]),
    ("eval digits on a HiP checkpoint", "cli", "classif", ["eval", "digits", "--checkpoint", "{W}/hip"]),
    ("eval digits on a flow checkpoint", "cli", "classif", ["eval", "digits", "--checkpoint", "{W}/flow"]),
    ("models with an unknown filter", "cli", "nosuchmodel", ["models", "nosuchmodel"]),
    ("train hip-mae --data natural without scikit-image", "cli", "perceivers[",
     ["train", "hip-mae", "--data", "natural", "--steps", "1", "--out", "{W}/r2", "--no-progress"]),
    ("train --steps and --epochs together", "cli", "epochs",
     ["train", "digits", "--steps", "1", "--epochs", "2", "--out", "{W}/r3", "--no-progress"]),
    ("train --out on an existing file", "cli", "a_file", ["train", "digits", "--out", "{W}/a_file", "--steps", "1"]),
    ("resume with a changed lr", "train", "lr", ["--lr", "0.5"]),
    ("resume with a changed batch size", "train", "batch_size", ["--batch_size", "16"]),
    ("resume with another optimizer", "train", "optimizer", ["--optimizer", "lamb"]),
    ("resume: meta.json with a negative step", "train", "meta.json", "meta_negative"),
    ("resume: meta.json nested 100,000 deep", "train", "meta.json", "meta_nested"),
    ("resume: rng-rank0.pt replaced by a text file", "train", "rng-rank0.pt", "rng_text"),
    ("resume: rng-rank0.pt holding a plain tensor", "train", "rng-rank0.pt", "rng_tensor"),
    ("resume: optimizer.pt holding a list", "train", "optimizer.pt", "optim_list"),
    ("resume: optimizer.pt missing", "train", "optimizer.pt", "optim_missing"),
    ("from_pretrained on a folder with one float16 tensor", "api", "dtype",
     ("m = from_pretrained(W + '/half'); dtypes = {p.dtype for p in m.parameters()}; "
     "raise SystemExit('accepted' if len(dtypes) > 1 else 'ok')")),
    ("from_pretrained on NaN weights", "api", "nan", "from_pretrained(W + '/nan')"),
    ("a model on the meta device called directly", "api", "meta",
     "m = create_model('perceiver-io-digits', device='meta'); m(torch.zeros(1, 1, 8, 8))"),
    ("create_model(device='nonsense')", "api", "device", "create_model('perceiver-io-digits', device='nonsense')"),
    ("create_model(device='cuda') without CUDA", "api", "cuda", "create_model('perceiver-io-digits', device='cuda')"),
    ("HiP with batch 0", "api", "batch", ("m = create_model('hip-debug'); x = m.example_inputs(2)['inputs']; "
     "m({k: v[:0] for k, v in x.items()})")),
    ("HiP with float64 inputs", "api", "float64", ("m = create_model('hip-debug'); x = m.example_inputs(2)['inputs']; "
     "m({k: v.double() for k, v in x.items()})")),
    ("Perceiver IO under autocast with float64 inputs", "api", "float64",
     ("m = create_model('perceiver-io-digits')\nwith torch.autocast('cpu', torch.bfloat16): m(torch.zeros(1, 1, 8, 8, "
     "dtype=torch.float64))")),
    ("MLM with int8 token ids (integer ids)", "api", "int8", ("m = create_model('perceiver-io-language-debug'); "
     "m(torch.zeros(1, 8, dtype=torch.int8)); raise SystemExit('ok')")),
    ("tokenizer decode(None)", "api", "ids", ("from perceivers.tokenizers import BytesTokenizer; "
     "BytesTokenizer().decode(None)")),
    ("tokenizer decode of a float tensor", "api", "ids", ("from perceivers.tokenizers import BytesTokenizer; "
     "BytesTokenizer().decode(torch.tensor([1.5, 2.5]))")),
    ("fill_mask(model, None)", "api", "text", ("from perceivers.generation.fill_mask import fill_mask; "
     "fill_mask(from_pretrained(W + '/mlm'), None)")),
    ("MLM with decoder num_outputs=100", "api", "num_outputs",
     ("m = create_model('perceiver-io-language-debug', decoder={'num_outputs': 100}); "
     "raise SystemExit('accepted')")),
    ("generate with bool prompt_lengths", "api", "prompt_lengths",
     ("from perceivers.generation.generate import generate; m = create_model('perceiver-ar-debug').eval(); "
     "generate(m, torch.ones(2, 4, dtype=torch.long), torch.tensor([True, True]), max_new_tokens=2)")),
    ("beam search with length_penalty=nan", "api", "length_penalty",
     ("from perceivers.generation.generate import generate; m = create_model('perceiver-ar-debug').eval(); "
     "generate(m, [[1, 2, 3]], max_new_tokens=2, num_beams=2, length_penalty=float('nan'))")),
    ("generate with max_new_tokens=10**12", "api", "max_new_tokens",
     ("from perceivers.generation.generate import generate; m = create_model('perceiver-ar-debug').eval(); "
     "generate(m, [[1, 2, 3]], max_new_tokens=10**12)")),
    ("Haiku tree pickled with protocol 2 (valid: must load)", "api", "\0", "haiku_protocol"),
    ("Haiku pickle declaring a 3 GiB array in 89 bytes", "api", "shape", "haiku_bomb"),
    ("Haiku pickle calling os.system", "api", "refus", "haiku_evil"),
]

HAIKU = {
    "haiku_protocol": "import pickle, numpy as np\nfrom perceivers.converters.haiku import load_haiku_pickle\n"
                      "p = W + '/p2.pkl'; open(p, 'wb').write(pickle.dumps({'a/b': {'w': np.zeros(3)}}, protocol=2))\n"
                      "load_haiku_pickle(p); raise SystemExit('ok')",
    "haiku_bomb": "import pickle, numpy as np\nfrom perceivers.converters.haiku import load_haiku_pickle\n"
                  "from numpy.core.multiarray import _reconstruct\n"
                  "class Big:\n    def __reduce__(self):  # numpy's own array pickle, with a shape its bytes lack\n"
                  "        return (_reconstruct, (np.ndarray, (0,), b'b'),\n"
                  "                (1, (1 << 28, 3), np.dtype('float32'), False, b'0000'))\n"
                  "p = W + '/bomb.pkl'; open(p, 'wb').write(pickle.dumps({'a/b': {'w': Big()}}, protocol=4))\n"
                  "import resource\n"
                  "try:\n    load_haiku_pickle(p)\n"
                  "finally:  # refused or not, it must not have allocated the declared 3 GiB\n"
                  "    if resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 1 << 20:\n"
                  "        raise SystemExit('accepted')",
    "haiku_evil": "import pickle, os\nfrom perceivers.converters.haiku import load_haiku_pickle\n"
                  "class Evil:\n    def __reduce__(self):\n        return (os.system, ('echo pwned',))\n"
                  "p = W + '/evil.pkl'; open(p, 'wb').write(pickle.dumps({'a': Evil()}))\nload_haiku_pickle(p)",
}

API_WRAPPER = r"""
import json, sys, torch
from perceivers.models import create_model
from perceivers import from_pretrained
W = {work!r}
try:
{body}
    result = {{"outcome": "silent"}}
except SystemExit as exc:
    result = {{"outcome": "silent" if str(exc) == "accepted" else "clear", "message": str(exc)}}
except (ValueError, TypeError) as exc:
    result = {{"outcome": "raised", "type": type(exc).__name__, "message": str(exc)}}
except BaseException as exc:
    result = {{"outcome": "traceback", "type": type(exc).__name__, "message": str(exc)[:300]}}
print("AUDIT" + json.dumps(result))
"""

TAMPER = r"""
import json, shutil, torch
from pathlib import Path
step = sorted((Path(RUN) / "checkpoints").glob("step-*"))[-1]
kind = KIND
if kind == "meta_negative":
    meta = json.loads((step / "meta.json").read_text()); meta["step"] = -5
    (step / "meta.json").write_text(json.dumps(meta))
elif kind == "meta_nested":
    (step / "meta.json").write_text('{"a": ' * 100000 + "1" + "}" * 100000)
elif kind == "rng_text":
    (step / "rng-rank0.pt").write_text("hello")
elif kind == "rng_tensor":
    torch.save(torch.zeros(3), step / "rng-rank0.pt")
elif kind == "optim_list":
    torch.save([1, 2, 3], step / "optimizer.pt")
elif kind == "optim_missing":
    (step / "optimizer.pt").unlink()
"""


def run_python(tree: Path, code: str, *, env: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, str, str]:
    full_env = {**os.environ, "PYTHONPATH": str(tree), **(env or {})}
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=tree)
    return proc.returncode, proc.stdout, proc.stderr


def run_cli(tree: Path, args: list[str], *, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    full_env = {**os.environ, "PYTHONPATH": str(tree), "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    try:
        proc = subprocess.run([sys.executable, "-m", "perceivers.cli.main", *args], check=False,
                              capture_output=True, text=True,
                              timeout=300, env=full_env, cwd=tree)
    except subprocess.TimeoutExpired:
        return -1, "", "timed out after 300 s"
    return proc.returncode, proc.stdout, proc.stderr


def classify_cli(rc: int, stderr: str, keyword: str) -> tuple[str, str]:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if "Traceback" in stderr or rc == -1:
        return "traceback", last
    if rc == 0:
        return "silent", last
    if len(lines) > 2:
        return "traceback", last
    return ("clear" if keyword.lower() in stderr.lower() else "misleading"), last


def classify_api(stdout: str, keyword: str) -> tuple[str, str]:
    line = next((ln for ln in stdout.splitlines() if ln.startswith("AUDIT")), None)
    if line is None:
        return "traceback", "(no result: the process died)"
    result = json.loads(line[len("AUDIT"):])
    message = result.get("message", "")
    if result["outcome"] == "raised":
        return ("clear" if keyword.lower() in message.lower() else "misleading"), f"{result['type']}: {message}"
    if result["outcome"] == "clear":  # the snippet checked the behaviour itself and it held
        return "clear", message
    return result["outcome"], (f"{result.get('type', '')}: {message}" if message else "accepted")


def blocked_skimage(work: Path) -> Path:
    """A folder that, first on ``PYTHONPATH``, makes ``import skimage`` fail as on an install without the ``images``
    extra."""
    fake = work / "no_skimage"
    (fake / "skimage").mkdir(parents=True, exist_ok=True)
    (fake / "skimage" / "__init__.py").write_text("raise ImportError('No module named skimage')\n")
    return fake


def audit(tree: Path, work: Path, progress: bool = True) -> list[dict[str, str]]:
    rc, _, err = run_python(tree, f"WORK = {str(work)!r}\n" + SETUP)
    if rc != 0:
        raise SystemExit(f"set-up failed in {tree}:\n{err[-3000:]}")
    run_dir = work / "run"
    rc, _, err = run_cli(tree, ["train", "digits", "--steps", "2", "--checkpoint_every", "1", "--out", str(run_dir),
                                "--no-progress", "--eval_every", "0"])
    if rc != 0:  # older trees may not know every key; fall back to the plainest run
        rc, _, err = run_cli(tree, ["train", "digits", "--steps", "2", "--checkpoint_every", "1", "--out",
                                    str(run_dir), "--no-progress"])
    if rc != 0:
        raise SystemExit(f"the 2-step digits run failed in {tree}:\n{err[-3000:]}")
    rows = []
    for i, (name, kind, keyword, payload) in enumerate(CASES):
        if progress:
            print(f"[{i + 1}/{len(CASES)}] {name}", file=sys.stderr, flush=True)
        if kind == "cli_ok":  # the right answer is to work
            rc, out, err = run_cli(tree, [a.replace("{W}", str(work)) for a in payload])  # type: ignore[union-attr]
            ok = rc == 0 and keyword in out
            outcome, message = ("clear", out.strip().splitlines()[-1]) if ok else classify_cli(rc or 1, err, "\0")
        elif kind == "cli":
            args = [a.replace("{W}", str(work)) for a in payload]  # type: ignore[union-attr]
            env = None
            if "natural" in args:
                env = {"PYTHONPATH": f"{blocked_skimage(work)}{os.pathsep}{tree}"}
            outcome, message = classify_cli(*run_cli(tree, args, env=env)[::2], keyword)
        elif kind == "train":
            case_run = work / f"run-{i}"
            subprocess.run(["cp", "-r", str(run_dir), str(case_run)], check=True)
            extra: list[str] = []
            if isinstance(payload, str):
                code = f"RUN = {str(case_run)!r}\nKIND = {payload!r}\n" + TAMPER
                if run_python(tree, code)[0] != 0:
                    raise SystemExit(f"tampering {payload} failed")
            else:
                extra = list(payload)
            # the same length as the run (a finished run still loads and checks its checkpoint on resume), so that only
            # the tampering or the one changed setting differs
            args = ["train", "digits", "--steps", "2", "--out", str(case_run), "--resume", "--no-progress", *extra]
            outcome, message = classify_cli(*run_cli(tree, args)[::2], keyword)
        else:
            body = HAIKU.get(str(payload), str(payload))
            code = API_WRAPPER.format(work=str(work), body=textwrap.indent(body, "    "))
            outcome, message = classify_api(run_python(tree, code)[1], keyword)
        rows.append({"case": name, "kind": kind, "outcome": outcome, "message": message[:160]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1],
                        help="source tree to audit (default: this checkout)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = audit(args.tree.resolve(), Path(tmp))
    print("| case | kind | outcome | message |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['kind']} | {r['outcome']} | {r['message'].replace('|', '/')} |")
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("clear", "misleading", "traceback", "silent")}
    print("\n" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + f" (of {len(rows)})")
    if args.json:
        args.json.write_text(json.dumps({"tree": str(args.tree), "counts": counts, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
