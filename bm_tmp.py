import sys; sys.path.insert(0, "benchmarks")
import models, keras, numpy as np, keras_collapse as kc
m = models.mobilenet_v2_style(lock="all")
small, rep = kc.surgery(m, return_report=True)
print([e.kind for e in rep.done].count("bias_channel"), "bias channels;", rep.after.layers, "layers; dev", rep.deviation)
print(sorted(set(type(l).__name__ for l in small.layers)))
x = np.random.default_rng(0).standard_normal((2,)+m.input_shape[1:]).astype("float32")
print(np.max(np.abs(keras.ops.convert_to_numpy(small(x)) - keras.ops.convert_to_numpy(m(x)))))
for e in rep.skipped:
    if e.kind == "bias_channel": print(e)
