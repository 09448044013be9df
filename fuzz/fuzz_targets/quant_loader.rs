//! Fuzz `QuantLoader` over arbitrary safetensors bytes, through each of its backends: a
//! file of ours, a float checkpoint quantized on load, and a compressed-tensors checkpoint
//! (preset config). `contains`, `get` and `quant_linear` must return `Err` or values of
//! the requested shape — never panic.
#![no_main]

use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
use candle_compress::io::loader::QuantLoader;
use candle_compress::io::reader::SafetensorsReader;
use candle_compress::io::safetensors::CompressedFile;
use candle_compress::nn::QuantConfig;
use libfuzzer_sys::fuzz_target;

fn exercise(vb: &QuantLoader, names: &[(String, Vec<usize>)]) {
    for (name, shape) in names {
        let _ = vb.contains(name);
        if let Ok(t) = vb.get(shape, name) {
            assert_eq!(t.dims(), &shape[..]);
        }
        let prefix = name
            .strip_suffix(".weight_packed")
            .or_else(|| name.strip_suffix(".weight"))
            .unwrap_or(name);
        if let [out, inp] = shape[..] {
            for inp in [inp, inp * 8, inp * 2] {
                if let Ok(l) = vb.pp(prefix).quant_linear(inp, out, "") {
                    assert_eq!((l.in_features(), l.out_features()), (inp, out));
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(reader) = SafetensorsReader::from_bytes(data.to_vec()) else {
        return;
    };
    let names: Vec<(String, Vec<usize>)> = reader
        .names()
        .into_iter()
        .filter_map(|n| reader.info(&n).map(|i| (n.clone(), i.shape.clone())))
        .collect();
    // Keep quantize-on-load within the harness's memory: skip huge float tensors.
    let small = names.iter().all(|(_, s)| {
        s.iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .is_some_and(|n| n <= 1 << 20)
    });
    if let Ok(file) = CompressedFile::from_bytes(data.to_vec()) {
        exercise(&QuantLoader::from_file(file), &names);
    }
    if small {
        if let Ok(vb) = QuantLoader::quantize_reader_on_load(reader, QuantConfig::w8a8()) {
            exercise(&vb, &names);
        }
    }
    for format in [
        CtFormat::IntQuantized,
        CtFormat::PackQuantized { group: 32 },
    ] {
        let Ok(reader) = SafetensorsReader::from_bytes(data.to_vec()) else {
            return;
        };
        if let Ok(ckpt) = CtCheckpoint::from_parts(reader, &quantization_config(format, &[])) {
            exercise(&QuantLoader::from_ct_checkpoint(ckpt), &names);
        }
    }
});
