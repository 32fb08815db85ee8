"""HGQ2 (learned per-weight bitwidths, Keras 3) on the reference cnn, beside `autoqnn.search`.

    python tools/bench_hgq2.py --data ../shared/data/fashion_mnist.npz --epochs 5 \\
        --train-subset 20000 --search-subset 5000 --qat-epochs 3 --json results/hgq2.json

HGQ2 (`pip install hgq2`, the `bench` extra) learns a bitwidth for every weight and every
activation element, but only in models written with its layers (`hgq.layers`), and has no
depthwise layer: so `cnn` only. The twin of the float reference cnn (tools/benchmark.py)
replaces Conv2D / Dense with `QConv2D` / `QDense` (BatchNormalization, ReLU, pooling stay
Keras layers), copies the trained weights and trains for `--qat-epochs` on the first
`--search-subset` training images: the epoch budget of tools/bench_search.py's rows (2
search + 1 fine-tune epochs). Weights start at `--weight-bits` (sign included: HGQ2's
"kbi" fixed point with b = bits - 1 magnitude bits, the integer bits following each
tensor's maximum), activations at `--activation-bits` unsigned fixed point (i + f bits,
learned per element); `--beta` is HGQ2's EBOPs (resource) regularisation strength, kept
small so the bits stay near the start (a matched budget, not a resource search).

Reported: top-1 on the test split (chooses nothing: the best epoch is chosen on the
validation split carved from the training images), the average learned weight bitwidth
(HGQ2's `fbits`, sign included, 0 for a pruned weight, parameter-weighted over the
kernels) and the average activation bitwidth at the quantized inputs.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from common import (  # noqa: E402
    LOSS,
    accuracy,
    load_splits,
    reference_parser,
    train_reference,
    write_json,
)

from autoqnn.finetune import qat_optimizer  # noqa: E402


def hgq2_twin(model, weight_bits: int, activation_bits: int, beta: float):
    """The HGQ2 twin of a Sequential-shaped float model (Conv2D / Dense -> HGQ2 layers)."""
    from hgq.config import LayerConfigScope, QuantizerConfig
    from hgq.layers import QConv2D, QDense

    iq = QuantizerConfig("kif", "datalane", k0=False, i0=activation_bits // 2,
                         f0=activation_bits - activation_bits // 2)
    inputs = keras.Input(model.input_shape[1:])
    x = inputs
    with LayerConfigScope(beta0=beta, enable_ebops=True):
        for layer in model.layers[1:]:
            config = layer.get_config()
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
                # Integer bits covering the layer's largest weight (the "i" of kbi).
                top = float(np.max(np.abs(layer.kernel.numpy())))
                kq = QuantizerConfig("kbi", "weight", b0=weight_bits - 1,
                                     i0=math.ceil(math.log2(top)))
            if isinstance(layer, keras.layers.Conv2D):
                twin = QConv2D(**{k: v for k, v in config.items() if k in _CONV_KEYS},
                               kq_conf=kq, iq_conf=iq)
            elif isinstance(layer, keras.layers.Dense):
                twin = QDense(**{k: v for k, v in config.items() if k in _DENSE_KEYS},
                              kq_conf=kq, iq_conf=iq)
            else:
                twin = type(layer).from_config(config)
            x = twin(x)
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
                twin.kernel.assign(layer.kernel)
                if layer.use_bias:
                    twin.bias.assign(layer.bias)
            else:
                twin.set_weights(layer.get_weights())
    return keras.Model(inputs, x, name="hgq2_" + model.name)


_CONV_KEYS = {"filters", "kernel_size", "strides", "padding", "dilation_rate", "activation",
              "use_bias", "name"}
_DENSE_KEYS = {"units", "activation", "use_bias", "name"}


def average_bits(model) -> tuple[float, float]:
    """(parameter-weighted mean weight fbits over the kernels, mean input-quantizer bits)."""
    from keras import ops

    total, count, act = 0.0, 0, []
    for layer in model.layers:
        kq = getattr(layer, "kq", None)
        if kq is None:
            continue
        bits = np.broadcast_to(ops.convert_to_numpy(kq.quantizer.fbits), layer.kernel.shape)
        total += float(bits.sum())
        count += bits.size
        iq = getattr(layer, "iq", None)
        if iq is not None:
            act.append(float(np.mean(ops.convert_to_numpy(iq.quantizer.fbits))))
    return total / count, float(np.mean(act)) if act else float("nan")


def run(model, train, val, test, args) -> dict:
    keras.utils.set_random_seed(args.seed)
    twin = hgq2_twin(model, args.weight_bits, args.activation_bits, args.beta)
    steps = math.ceil(len(train[0]) / 128) * args.qat_epochs
    twin.compile(qat_optimizer(args.learning_rate, steps), LOSS, metrics=["accuracy"])
    start_bits = average_bits(twin)
    start_val = float(twin.evaluate(*val, batch_size=256, verbose=0)[1])
    print(f"  before training: val {start_val:.4f}", flush=True)
    start = time.perf_counter()
    best, weights, history = -1.0, None, []
    for epoch in range(args.qat_epochs):
        twin.fit(*train, epochs=1, batch_size=128, verbose=0)
        val_acc = float(twin.evaluate(*val, batch_size=256, verbose=0)[1])
        w_bits, a_bits = average_bits(twin)
        history.append({"epoch": epoch + 1, "val_accuracy": val_acc,
                        "weight_bits_avg": w_bits, "activation_bits_avg": a_bits})
        print(f"  epoch {epoch + 1}: val {val_acc:.4f}  weight bits {w_bits:.3f}  "
              f"activation bits {a_bits:.3f}", flush=True)
        if val_acc > best:
            best, weights = val_acc, twin.get_weights()
    seconds = time.perf_counter() - start
    twin.set_weights(weights)
    w_bits, a_bits = average_bits(twin)
    return {"method": f"HGQ2 W{args.weight_bits} start, A{args.activation_bits} start, "
                      f"beta {args.beta:g}, {args.qat_epochs} ep",
            "top1": round(100 * accuracy(twin, *test), 2),
            "weight_bits_avg": round(w_bits, 3), "activation_bits_avg": round(a_bits, 3),
            "start_bits": [round(b, 3) for b in start_bits],
            "val_accuracy_before_training": round(start_val, 4), "seconds": round(seconds, 1),
            "history": history}


def main(argv=None):
    parser = reference_parser(__doc__.split("\n")[0])
    parser.set_defaults(model=["cnn"])
    parser.add_argument("--search-subset", type=int, default=5000)
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--weight-bits", type=int, default=3)
    parser.add_argument("--activation-bits", type=int, default=4)
    parser.add_argument("--beta", type=float, default=1e-7)
    parser.add_argument("--learning-rate", type=float, default=2e-4,
                        help="tools/bench_search.py's learning rate of the 3.0-bit setting")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.model != ["cnn"]:
        parser.error("HGQ2 has no depthwise layer: --model cnn only")
    train, val, test = load_splits(args.data, args.train_subset, val_size=2000)
    model, _ = train_reference("cnn", train, epochs=args.epochs)
    short = (train[0][:args.search_subset], train[1][:args.search_subset])
    out = {"command": "python tools/bench_hgq2.py " + " ".join(
        argv if argv is not None else sys.argv[1:]),
           "float_top1": round(100 * accuracy(model, *test), 2),
           "row": run(model, short, val, test, args)}
    print(out["row"]["method"], out["row"]["top1"], out["row"]["weight_bits_avg"], flush=True)
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
