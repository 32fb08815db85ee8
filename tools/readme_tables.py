"""Prints the README's result tables from the committed JSON under results/.

    python tools/readme_tables.py            # all tables whose JSON exists

Nothing here measures anything: it formats what the benchmark tools wrote, so the
README's figures can be regenerated and checked against their files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _load(name):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def bench_table():
    rows = []
    for model in ("cnn", "mobilenet"):
        data = _load(f"bench_{model}.json")
        if data is None:
            continue
        f = data["float"]
        rows.append((model, "float", 32, 32, f"{100 * f['accuracy']:.2f}",
                     f"{f['size_bytes'] / 1024:.1f}", ""))
        for r in data["runs"]:
            rows.append((model, r["method"], f"{r['weight_bits_avg']:.2f}", r["activation_bits"],
                         f"{100 * r['accuracy']:.2f}", f"{r['size_bytes'] / 1024:.1f}",
                         r["seconds"]))
    if rows:
        print(_table(("model", "method", "avg weight bits", "act bits", "top-1 %", "size KiB",
                      "seconds"), rows))


def export_table():
    rows = []
    for model in ("cnn", "mobilenet"):
        data = _load(f"bench_{model}.json")
        for r in (data or {}).get("export", []):
            keras_acc = r.get("keras_accuracy")
            acc = (f"{100 * keras_acc:.2f} -> " if keras_acc is not None and
                   r["variant"] != "float" else "") + f"{100 * r['tflite_accuracy']:.2f}"
            diff = r.get("max_logit_diff_steps")
            rows.append((model, r["variant"], f"{r['bytes']:,}", f"{r['ratio_to_float']:.3f}",
                         f"{r['latency_ms']:.3f}", f"{r['latency_ratio_to_float']:.2f}", acc,
                         "" if diff is None else f"{diff:.0f}",
                         "" if "packed_bytes" not in r else f"{r['packed_bytes']:,}"))
    if rows:
        print(_table(("model", "variant", "file bytes", "x float", "latency ms", "x float",
                      "top-1 Keras -> TFLite", "max logit diff (steps)", ".aqnn bytes"), rows))


def quantizer_tables():
    data = _load("quantizer.json")
    if data is None:
        return
    rows, bn = [], []
    for model, entry in data["models"].items():
        t = entry["timing"]
        rows.append((model, f"{t['fixed_bits_ratio']:.2f}x", f"{t['trainable_bits_ratio']:.2f}x",
                     f"{t['mixture_8_ratio']:.2f}x"))
        for r in entry.get("bn_qat", []):
            bn.append((model, entry["float_top1"], r["method"], r["top1_finalized"],
                       r["qat_seconds"]))
    print(_table(("model", "fixed bits (<= 1.5x)", "trainable bits (<= 2x)",
                  "8-candidate mixture (<= 4x)"), rows))
    print()
    if bn:
        print(_table(("model", "float top-1 %", "QAT (2 ep)", "top-1 % (finalized)", "seconds"),
                     bn))


def sensitivity_table():
    for name in ("sensitivity.json", "sensitivity_symmetric.json"):
        data = _load(name)
        if data is not None:
            print(f"`results/{name}`:\n")
            _sensitivity(data)
            print()


def _sensitivity(data):
    rows, rank = [], []
    for model, entry in data["models"].items():
        for r in entry["uniform"] + entry["search"]:
            mct = r.get("mct_top1")
            rows.append((model, entry["float_top1"], r["method"], f"{r['weight_bits_avg']:.2f}",
                         f"{r['top1']:.2f}", f"{r['size_bytes'] / 1024:.1f}", r["seconds"],
                         "" if mct is None else mct))
        rank.append((model, entry["rank"]["spearman_rho"], len(entry["rank"]["policies"])))
    print(_table(("model", "float %", "method (A8)", "avg w bits", "top-1 %", "KiB", "seconds",
                  "MCT top-1 % (issue 13)"), rows))
    print()
    print(_table(("model", "Spearman rho (predicted distortion vs val top-1)", "policies"),
                 rank))


def search_table():
    data = _load("search.json")
    if data is None:
        return
    rows = []
    hgq2 = _load("hgq2.json")
    for model, entry in data["models"].items():
        for r in entry["float_plus"]:
            rows.append((model, r["method"], 32, f"{r['top1']:.2f}", "", "", "", ""))
        for setting, float_row in zip(entry["settings"], entry["float_plus"]):
            for r in setting:
                rows.append((model, r["method"], f"{r['weight_bits_avg']:.2f}",
                             f"{r['top1']:.2f}", f"{float_row['top1'] - r['top1']:.2f}",
                             f"{r['size_bytes'] / 1024:.1f}", r["seconds"],
                             r.get("search_epoch_ratio", "")))
            if hgq2 and model == "cnn" and "A4" in setting[0]["method"]:
                r = hgq2["row"]
                rows.append((model, r["method"] + " (`results/hgq2.json`)",
                             f"{r['weight_bits_avg']:.2f}", f"{r['top1']:.2f}",
                             f"{float_row['top1'] - r['top1']:.2f}", "", r["seconds"], ""))
    print(_table(("model", "method", "avg w bits", "top-1 %", "gap to float + N ep", "KiB",
                  "seconds", "search epoch / float epoch"), rows))


def rl_tables():
    data = _load("rl.json")
    if data is None:
        return
    rows = []
    for model, entry in data["models"].items():
        rows.append((f"{model} (float {entry['float_top1']:.2f})", "", "", "", "", ""))
        for r in entry["rows"]:
            before = r.get("top1_val_before_finetune")
            rows.append(("", r["method"], f"{r['weight_bits_avg']:.2f}", f"{r['top1']:.2f}",
                         "" if before is None else f"{before:.2f}", r["seconds"]))
    print(_table(("model", "method", "avg w bits", "top-1 % (test)",
                  "val % before fine-tune", "seconds"), rows))
    tuner = data.get("tuner")
    if tuner:
        print()
        print(_table(("tune_ptq, {} trials".format(tuner["trials"]), "trials / min", "seconds",
                      "best val accuracy"),
                     [("serial", tuner["serial"]["trials_per_minute"],
                       tuner["serial"]["seconds"], tuner["serial"]["best_accuracy"]),
                      (f"Ray, {tuner['ray']['workers']} workers (start-up "
                       f"{tuner['ray']['startup_seconds']} s apart)",
                       tuner["ray"]["trials_per_minute"], tuner["ray"]["seconds"],
                       tuner["ray"]["best_accuracy"])]))
    cost = (_load("rl_cost.json") or {}).get("cost") or data.get("cost")
    if cost:
        print()
        print(_table(("model", "searched layers", "sensitivity s", "rl s (episodes)",
                      "rl s / episode", "dnas+qpl 1 epoch s (images)",
                      "of which trace + epoch s", "dnas+qpl avg w bits", "TFLite bytes"),
                     [(c["model"], c["layers"], c["sensitivity_seconds"],
                       f"{c['rl_seconds']} ({c['rl_episodes']})", c["rl_episode_seconds"],
                       f"{c['dnas_qpl_seconds']} ({c['dnas_qpl_images']})"
                       if "dnas_qpl_seconds" in c else "",
                       c.get("dnas_qpl_epoch_seconds", ""),
                       c.get("dnas_qpl_weight_bits_avg", ""),
                       c.get("dnas_qpl_tflite_bytes", "")) for c in cost]))


def tuner_table():
    data = _load("tuner.json")
    if data is None:
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_tuner import _table  # the tool's own formatting of its report

    print(_table(data))


def lowbit_tables():
    """QAT variants (results/lowbit_qat_*.json) and PTQ rows (results/lowbit_ptq.json)."""
    qat = []
    for path in sorted(RESULTS.glob("lowbit_qat_*.json")):
        data = _load(path.name)
        for model, result in (data or {}).get("models", {}).items():
            floats = {r["method"]: r for r in result["rows"] if r["bits"] == 32}
            for r in result["rows"]:
                if r["bits"] == 32 or "distill" not in r:
                    continue
                ref = next((f for f in floats.values()
                            if f"lr {r['learning_rate']:g})" in f["method"]), None)
                gap = "" if ref is None else f"{100 * (ref['accuracy'] - r['accuracy']):.2f}"
                flat = r.get("accuracy_per_tensor_activations")
                int8 = r.get("accuracy_per_tensor_int8_activations")
                flat = "" if flat is None else f"{100 * flat:.2f} / {100 * int8:.2f}"
                qat.append((model, r["method"], f"{100 * r['accuracy']:.2f}", flat,
                            "" if ref is None else f"{100 * ref['accuracy']:.2f}", gap,
                            r["seconds"]))
    if qat:
        print(_table(("model", "QAT (5 ep)", "top-1 %", "per-tensor acts, same bits / int8 %",
                      "float + 5 ep %", "gap", "seconds"), qat))
    data = _load("lowbit_ptq.json")
    rows = []
    for model, result in (data or {}).get("models", {}).items():
        for r in result["rows"]:
            if "distill" in r or r["bits"] == 32:
                continue
            rows.append((model, r["method"], f"{100 * r['accuracy']:.2f}",
                         f"{100 * (result['float_accuracy'] - r['accuracy']):.2f}",
                         f"{r['size_bytes'] / 1024:.1f}" if "size_bytes" in r else "",
                         r.get("adders_per_sample", ""), r.get("digits_per_weight", ""),
                         r.get("calibration_seconds", r.get("seconds", ""))))
    if rows:
        print(_table(("model", "PTQ", "top-1 %", "gap to float", "KiB", "adders / sample",
                      "digits / weight", "seconds"), rows))


def vit_table():
    """The vit rows (results/vit.json, tools/bench_vit.py)."""
    data = _load("vit.json")
    if data is None:
        return
    rows = []
    for r in data["rows"]:
        gap = "" if r.get("gap") is None else f"{100 * r['gap']:.2f}"
        fraction = r.get("quantized_fraction")
        rows.append((r["method"], f"{100 * r['accuracy']:.2f}", gap,
                     "" if fraction is None else f"{100 * fraction:.1f}",
                     r.get("weight_bits_avg", ""), f"{r['size_bytes'] / 1024:.1f}"
                     if "size_bytes" in r else ""))
    print(_table(("vit", "top-1 %", "gap to float", "params quantized %", "avg w bits",
                  "KiB"), rows))


def main():
    for fn in (bench_table, export_table, quantizer_tables, sensitivity_table, search_table,
               rl_tables, tuner_table, lowbit_tables, vit_table):
        print(f"\n## {fn.__name__}\n")
        fn()
    return 0


if __name__ == "__main__":
    sys.exit(main())
