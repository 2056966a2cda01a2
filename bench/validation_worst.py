"""Worst-case prompt validation: milliseconds per hostile or huge graph, validate_prompt and POST /prompt.

Each case is built once, then timed `--repeat` times (the worst run is reported): first
`farm.graph.validation.validate_prompt` on a fresh parse of the body (validation coerces in
place), then the whole `POST /prompt` through Flask's test client against a throwaway SQLite
farm (parsing, the storable-value and nesting checks, validation, and for accepted prompts the
insert). Each run starts after an untimed gc.collect(). The goal: no case over 200 ms on a
10,000-node graph; the cases with thousands of errors answer megabytes, and encoding them is a
good part of their POST time. Prints a table; run:
`.venv/bin/python bench/validation_worst.py [--repeat N] [--nodes N]`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from farm.graph.validation import validate_prompt  # noqa: E402

EMPTY = {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}


def save(source: str, prefix: str = "w") -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": [source, 0], "filename_prefix": prefix}}


def invert(source: str) -> dict:
    return {"class_type": "ImageInvert", "inputs": {"image": [source, 0]}}


def blend(first: str, second: str, mode: str = "normal") -> dict:
    return {"class_type": "ImageBlend", "inputs": {"image1": [first, 0], "image2": [second, 0],
                                                   "blend_factor": 0.5, "blend_mode": mode}}


def chain(n: int) -> dict:
    """EmptyImage, n - 2 inverts, SaveImage: the deepest graph of n nodes."""
    prompt = {"0": dict(EMPTY)}
    for index in range(1, n - 1):
        prompt[str(index)] = invert(str(index - 1))
    prompt[str(n - 1)] = save(str(n - 2))
    return prompt


def chain_failing_at_root(n: int) -> dict:
    prompt = chain(n)
    prompt["0"] = {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0}}
    return prompt


def chain_every_node_wrong(n: int) -> dict:
    """Blends whose blend_mode is not a choice: n errors, each upstream of the output."""
    prompt = {"0": dict(EMPTY)}
    for index in range(1, n - 1):
        prompt[str(index)] = blend(str(index - 1), "0", mode="no such mode")
    prompt[str(n - 1)] = save(str(n - 2))
    return prompt


def ring(n: int) -> dict:
    """One cycle through n - 1 inverts, read by one output."""
    prompt = {str(index): invert(str((index + 1) % (n - 1))) for index in range(n - 1)}
    prompt["out"] = save("0")
    return prompt


def back_edges(n: int) -> dict:
    """A chain of blends where every node also links back to the top: n cycles, of lengths 1..n."""
    top = str(n - 2)
    prompt = {str(index): blend(str(index - 1) if index else top, top) for index in range(n - 1)}
    prompt["out"] = save(top)
    return prompt


def outputs_over_failing_chain(n: int) -> dict:
    """n / 2 failing chain nodes, each also read by its own output: n / 2 failing outputs."""
    half = n // 2
    prompt = chain_failing_at_root(half + 1)
    del prompt[str(half)]
    for index in range(half - 1):
        prompt[f"out{index}"] = save(str(index + 1))
    return prompt


def outputs_over_wrong_chain(n: int) -> dict:
    """As above, but every chain node has an error of its own (the worst for dependent_outputs)."""
    half = n // 2
    prompt = chain_every_node_wrong(half + 1)
    del prompt[str(half)]
    for index in range(half - 1):
        prompt[f"out{index}"] = save(str(index + 1))
    return prompt


def wide(n: int) -> dict:
    """n - 1 outputs reading one EmptyImage."""
    prompt = {"0": dict(EMPTY)}
    for index in range(1, n):
        prompt[str(index)] = save("0", f"p{index}")
    return prompt


def missing_links(n: int) -> dict:
    """n - 1 outputs, each linked to a node that does not exist or to an output index out of range."""
    prompt = {"0": dict(EMPTY)}
    for index in range(1, n):
        link = [f"missing{index}", 0] if index % 2 else ["0", index]
        prompt[str(index)] = {"class_type": "SaveImage", "inputs": {"images": link, "filename_prefix": "m"}}
    return prompt


def wrong_types(n: int) -> dict:
    """n - 1 outputs fed the wrong type of value (a number where an IMAGE link belongs)."""
    prompt = {"0": dict(EMPTY)}
    for index in range(1, n):
        prompt[str(index)] = {"class_type": "SaveImage", "inputs": {"images": 7, "filename_prefix": ["0", 0]}}
    return prompt


def cases(n: int) -> dict[str, str]:
    """Case name -> the POST /prompt body, as text (some bodies are not expressible as Python JSON)."""
    bodies = {name: json.dumps({"prompt": build(n)}) for name, build in (
        (f"chain {n}", chain),
        (f"chain {n}, root invalid", chain_failing_at_root),
        (f"chain {n}, every node invalid", chain_every_node_wrong),
        (f"ring of {n}", ring),
        (f"{n} back edges (cycles 1..{n})", back_edges),
        (f"{n // 2} outputs on a failing chain", outputs_over_failing_chain),
        (f"{n // 2} outputs on an invalid chain", outputs_over_wrong_chain),
        (f"{n} outputs on one node", wide),
        (f"{n} missing links", missing_links),
        (f"{n} wrong input types", wrong_types),
    )}
    small = chain(3)
    small["2"]["inputs"]["filename_prefix"] = "__X__"
    template = json.dumps({"prompt": small})
    bodies["10 MB string input"] = template.replace('"__X__"', json.dumps("x" * 10_000_000))
    bodies["10 MB class_type"] = json.dumps({"prompt": {"1": {"class_type": "x" * 10_000_000, "inputs": {}}}})
    bodies["100,000 nested lists in an input"] = template.replace('"__X__"', "[" * 100_000 + "]" * 100_000)
    bodies["100,000 nested lists as the body"] = "[" * 100_000 + "]" * 100_000
    bodies["NaN in an input"] = template.replace('"__X__"', "NaN")
    bodies["10**400 in an input"] = template.replace('"__X__"', "1" + "0" * 400)
    return bodies


def timed(function, repeat: int, setup=lambda: None) -> tuple[float, float, object]:
    """The median and worst of `repeat` runs of function(setup()), in ms (setup is not timed), and
    the last result."""
    times, result = [], None
    for _ in range(repeat):
        argument = setup()
        result = None
        gc.collect()  # untimed: a run does not pay for the garbage of the one before
        started = time.perf_counter()
        result = function(argument)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times), result


def make_client(folder: str):
    from farm.config import load_settings
    from farm.db.migrate import upgrade
    from farm.services.context import make_context
    from web import create_app

    class NoSender:
        def send(self, assignment):
            pass

    url = f"sqlite:///{folder}/farm.db"
    upgrade(url)
    settings = load_settings(env={}, data_dir=f"{folder}/data", models_dir=f"{folder}/models", database_url=url)
    context = make_context(settings, sender=NoSender())
    return create_app(settings, context=context).test_client(), context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the worst is reported (default 3)")
    parser.add_argument("--nodes", type=int, default=10_000, help="nodes in the graph cases (default 10000)")
    args = parser.parse_args()
    import logging

    logging.disable(logging.CRITICAL)  # refused prompts are expected here; Flask logs any 500 anyway
    folder = tempfile.mkdtemp(prefix="farm-bench-")
    client, context = make_client(folder)
    registry, env = context.registry, context.node_env_for("default")

    def parse(body: str):
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exception:
            return f"not parsed ({type(exception).__name__})"

    def validate(parsed):
        if not isinstance(parsed, dict):
            return parsed if isinstance(parsed, str) else "not a prompt body"
        result = validate_prompt(parsed["prompt"], registry, env)
        return "ok" if result.ok else result.error["type"]

    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"{args.repeat} runs per case: median / worst ms")
    print(f"{'case':44} {'body bytes':>10} {'validate_prompt':>17} {'POST /prompt':>15} {'status':>6}  "
          f"{'answer bytes':>12}  answer")
    worst_validate = worst_post = 0.0
    for name, body in cases(args.nodes).items():
        validate_median, validate_worst, outcome = timed(validate, args.repeat, lambda: parse(body))
        post_median, post_worst, response = timed(lambda _: client.post("/prompt", data=body), args.repeat)
        answer = response.get_json(silent=True)
        kind = answer.get("error", {}).get("type", "accepted") if isinstance(answer, dict) else "not JSON"
        print(f"{name:44} {len(body):>10} {validate_median:>8.1f} /{validate_worst:>6.1f} "
              f"{post_median:>7.1f} /{post_worst:>6.1f} {response.status_code:>6}  {len(response.data):>12}  "
              f"{kind} (validate_prompt alone: {outcome})")
        worst_validate, worst_post = max(worst_validate, validate_worst), max(worst_post, post_worst)
    print(f"{'worst case, ms':44} {'':>10} {worst_validate:>17.1f} {worst_post:>15.1f}")
    context.database.dispose()


if __name__ == "__main__":
    main()
