//! Fuzz the compressed-tensors checkpoint reader with arbitrary safetensors bytes *and* an
//! arbitrary `config.json`: opening and loading every layer and float tensor must return
//! `Err` or values consistent with the stored shapes — never panic, overread or allocate
//! without bound.
//!
//! Input layout: byte 0 picks a preset config when the config bytes are not JSON (so the
//! fuzzer reaches layer loading quickly), bytes 1..3 (LE u16) are the config length, then
//! the config bytes, then the safetensors bytes.
#![no_main]

use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
use candle_compress::io::reader::SafetensorsReader;
use candle_core::{Device, Module, Tensor};
use libfuzzer_sys::fuzz_target;

/// A valid `quantization_config` (as JSON text), one of four layouts.
fn preset(choice: u8) -> String {
    let w4_int = r#"{"quant_method": "compressed-tensors", "format": "int-quantized",
        "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 4,
        "type": "int", "symmetric": true, "strategy": "group", "group_size": 32},
        "input_activations": null}}}"#;
    match choice % 4 {
        0 => quantization_config(CtFormat::IntQuantized, &[]).to_string(),
        1 => quantization_config(CtFormat::PackQuantized { group: 32 }, &[]).to_string(),
        2 => quantization_config(CtFormat::PackQuantized { group: 64 }, &[]).to_string(),
        _ => w4_int.to_string(),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let len = usize::from(u16::from_le_bytes([data[1], data[2]])).min(data.len() - 3);
    let (config_bytes, st_bytes) = data[3..].split_at(len);
    let Ok(reader) = SafetensorsReader::from_bytes(st_bytes.to_vec()) else {
        return;
    };
    // Arbitrary config bytes first; when they are not JSON at all, a preset (so the
    // fuzzer also reaches layer loading).
    let ckpt = match CtCheckpoint::from_config_bytes(reader, config_bytes) {
        Ok(c) => c,
        Err(candle_compress::Error::Json(_)) => {
            let Ok(reader) = SafetensorsReader::from_bytes(st_bytes.to_vec()) else {
                return;
            };
            match CtCheckpoint::from_config_bytes(reader, preset(data[0]).as_bytes()) {
                Ok(c) => c,
                Err(_) => return,
            }
        }
        Err(_) => return,
    };
    let cpu = Device::Cpu;
    for name in ckpt.names() {
        let prefix = name
            .strip_suffix(".weight_packed")
            .or_else(|| name.strip_suffix(".weight"));
        if let Some(prefix) = prefix {
            if let Ok((layer, report)) = ckpt.load_quant_linear_with_report(prefix) {
                assert_eq!(layer.config().activations(), report.activations);
                // A layer that loads runs: a small input gives a finite output of its width.
                if layer.in_features() <= 4096 && layer.out_features() <= 4096 {
                    let x = Tensor::ones((1, layer.in_features()), candle_core::DType::F32, &cpu)
                        .expect("small tensor");
                    let y = layer.forward(&x).expect("a validated layer runs");
                    assert_eq!(y.dims(), &[1, layer.out_features()]);
                }
            }
        }
        if let Ok(t) = ckpt.load_float(&name, &cpu) {
            let info = ckpt.info(&name).expect("listed name has info");
            assert_eq!(t.dims(), &info.shape[..]);
        }
    }
});
