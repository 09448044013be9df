#!/usr/bin/env python3
"""Checks our GGUF export against llama.cpp's own gguf-py (not needed by CI).

Run through scripts/gguf_py_check.sh, which writes the fixture with our writer
(tests/io_gguf_interop.rs, write_fixture_for_gguf_py) and then calls this script:

  1. gguf-py's GGUFReader opens ours.gguf: names, types and shapes as written.
  2. Our Q4_0 and Q8_0 bytes equal gguf-py's own numpy quantizers on the same input,
     byte for byte, so the RMSE is the same (printed for both).
  3. The I64 position ids read back as integers.
  4. The reverse: gguf-py writes a GGUF file with its GGUFWriter, and the script checks
     its layout against what our writer produces for the same tensors (same tensor data
     bytes), so both sides agree on the format.
"""
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

d = Path(sys.argv[1])
x = np.fromfile(d / "input.f32", dtype="<f4").reshape(64, 256)
r = gguf.GGUFReader(d / "ours.gguf")
by_name = {t.name: t for t in r.tensors}
assert set(by_name) == {"w.q4_0", "w.q8_0", "position_ids"}, by_name.keys()

for name, qt in [("w.q4_0", T.Q4_0), ("w.q8_0", T.Q8_0)]:
    t = by_name[name]
    assert t.tensor_type == qt, (name, t.tensor_type)
    assert list(t.shape) == [256, 64], (name, t.shape)
    ours = np.asarray(t.data).reshape(-1).tobytes()
    theirs = quantize(x, qt).reshape(-1).tobytes()
    assert ours == theirs, f"{name}: bytes differ from gguf-py's quantizer"
    back = dequantize(np.asarray(t.data), qt).reshape(64, 256)
    ref = dequantize(quantize(x, qt), qt).reshape(64, 256)
    rmse_ours = float(np.sqrt(np.mean((back - x) ** 2)))
    rmse_theirs = float(np.sqrt(np.mean((ref - x) ** 2)))
    print(f"{name}: bytes identical to gguf-py; RMSE ours {rmse_ours:.6f}, gguf-py {rmse_theirs:.6f}")
    assert rmse_ours == rmse_theirs

ids = by_name["position_ids"]
assert ids.tensor_type == T.I64, ids.tensor_type
assert np.asarray(ids.data).tolist() == list(range(16))
print("position_ids: I64, values 0..15")

# Reverse: gguf-py writes the same tensors; the data bytes must equal ours.
w = gguf.GGUFWriter(d / "theirs.gguf", arch="test")
w.add_tensor("w.q4_0", quantize(x, T.Q4_0), raw_shape=quantize(x, T.Q4_0).shape, raw_dtype=T.Q4_0)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
r2 = gguf.GGUFReader(d / "theirs.gguf")
t2 = r2.tensors[0]
assert t2.tensor_type == T.Q4_0 and list(t2.shape) == [256, 64], (t2.tensor_type, t2.shape)
assert np.asarray(t2.data).tobytes() == np.asarray(by_name["w.q4_0"].data).tobytes()
print("gguf-py's own file holds the same Q4_0 bytes as ours")
print("OK")
