//! Fuzz the candle-compress file loader on arbitrary bytes: opening (header, manifest,
//! part checks) and loading every item must return `Err` or values that agree with the
//! manifest — never panic, overread or allocate without bound.
#![no_main]

use candle_compress::io::safetensors::{CompressedFile, CompressedWriter, ItemKind, Loaded};
use candle_compress::Compressed;
use candle_core::Device;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = CompressedFile::from_bytes(data.to_vec()) else {
        return;
    };
    let cpu = Device::Cpu;
    for item in file.items() {
        match &item.kind {
            ItemKind::Compressed(entry) => {
                let Ok(value) = file.load_compressed(&item.name) else {
                    continue;
                };
                // A value that loads matches its manifest entry and decodes to its shape.
                assert_eq!(value.shape().dims(), &entry.shape[..]);
                assert_eq!(value.scheme(), entry.scheme);
                let t = value
                    .decompress(&cpu)
                    .expect("a validated value decompresses");
                assert_eq!(t.dims(), &entry.shape[..]);
                // Re-saving and reloading gives the same value.
                let mut w = CompressedWriter::new();
                w.add_compressed(&item.name, &value).expect("fresh writer");
                let again = CompressedFile::from_bytes(w.to_bytes().expect("serializes"))
                    .expect("our own file opens");
                assert_eq!(again.load_compressed(&item.name).expect("reloads"), value);
            }
            ItemKind::QuantLinear(entry) => {
                if let Ok(layer) = file.load_quant_linear(&item.name) {
                    assert_eq!(layer.in_features(), entry.in_features);
                    assert_eq!(layer.out_features(), entry.out_features);
                }
            }
            ItemKind::Plain { shape, .. } => {
                if let Ok(t) = file.load_plain(&item.name, &cpu) {
                    assert_eq!(t.dims(), &shape[..]);
                }
            }
        }
    }
    // Loading everything at once never panics either.
    if let Ok(all) = file.load_all(&cpu) {
        for v in all.values() {
            if let Loaded::Compressed(c) = v {
                let _ = c.size_bytes();
            }
        }
    }
});
