//! Property tests over random and mutated bytes for every reader of untrusted files
//! (issue 15 point 19's `cargo test` part; the fuzz targets in `fuzz/` go further): the
//! safetensors reader, our compressed files, compressed-tensors checkpoints (random
//! safetensors bytes *and* random `config.json` bytes) and `QuantLoader`. Each must return
//! `Err` or consistent values, never panic.

use candle_compress::io::compressed_tensors::{
    quantization_config, CtCheckpoint, CtFormat, CtWriter,
};
use candle_compress::io::loader::QuantLoader;
use candle_compress::io::reader::SafetensorsReader;
use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
use candle_compress::nn::{QuantConfig, QuantLinear};
use candle_compress::Compressor;
use candle_core::{Device, Tensor};
use proptest::prelude::*;

fn our_file() -> Vec<u8> {
    let t = Tensor::randn(0f32, 1., (4, 64), &Device::Cpu).unwrap();
    let mut w = CompressedWriter::new();
    w.add_compressed(
        "t",
        &"int4:32"
            .parse::<candle_compress::scheme::Scheme>()
            .unwrap()
            .compress(&t)
            .unwrap(),
    )
    .unwrap();
    w.add_quant_linear(
        "fc",
        &QuantLinear::new(&t, None, &QuantConfig::w8a8()).unwrap(),
    )
    .unwrap();
    w.add_plain(
        "b",
        &Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap(),
    )
    .unwrap();
    w.to_bytes().unwrap()
}

fn ct_file(cfg: QuantConfig) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let t = Tensor::randn(0f32, 1., (4, 64), &Device::Cpu).unwrap();
    let mut w = CtWriter::new();
    w.add_quant_linear("fc", &QuantLinear::new(&t, None, &cfg).unwrap())
        .unwrap();
    let (st, cj) = (
        dir.path().join("m.safetensors"),
        dir.path().join("config.json"),
    );
    w.write(&st, &cj, None).unwrap();
    (std::fs::read(st).unwrap(), std::fs::read(cj).unwrap())
}

/// Loads everything a file offers through every reader; only panics matter.
fn exercise(bytes: &[u8], config: &[u8]) {
    let cpu = Device::Cpu;
    if let Ok(r) = SafetensorsReader::from_bytes(bytes.to_vec()) {
        for n in r.names() {
            let raw = r.read(&n).expect("a listed tensor reads");
            assert_eq!(raw.shape, r.info(&n).unwrap().shape);
        }
    }
    if let Ok(f) = CompressedFile::from_bytes(bytes.to_vec()) {
        let _ = f.load_all(&cpu);
        let vb = QuantLoader::from_file(f);
        let _ = vb.quant_linear(64, 4, "fc");
        let _ = vb.get(&[4], "b");
    }
    if let Ok(r) = SafetensorsReader::from_bytes(bytes.to_vec()) {
        if let Ok(c) = CtCheckpoint::from_config_bytes(r, config) {
            let vb = QuantLoader::from_ct_checkpoint(c);
            if let Ok(l) = vb.quant_linear(64, 4, "fc") {
                assert_eq!((l.in_features(), l.out_features()), (64, 4));
            }
        }
    }
    if let Ok(r) = SafetensorsReader::from_bytes(bytes.to_vec()) {
        if let Ok(vb) = QuantLoader::quantize_reader_on_load(r, QuantConfig::w8a8()) {
            let _ = vb.quant_linear(64, 4, "fc");
        }
    }
}

fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)]) -> Vec<u8> {
    for &(at, v) in edits {
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] = v;
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_any_reader(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                           config in proptest::collection::vec(any::<u8>(), 0..128)) {
        exercise(&bytes, &config);
    }

    #[test]
    fn mutated_files_never_panic_any_reader(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
                                            which in 0usize..3) {
        let (bytes, config) = match which {
            0 => (our_file(), quantization_config(CtFormat::IntQuantized, &[]).to_string().into_bytes()),
            1 => ct_file(QuantConfig::w8a8()),
            _ => ct_file(QuantConfig::w4a8(32).unwrap()),
        };
        exercise(&mutate(bytes.clone(), &edits), &config);
        exercise(&bytes, &mutate(config, &edits));
    }

    #[test]
    fn truncated_files_are_errors(cut in 0usize..4096, which in 0usize..2) {
        let bytes = if which == 0 { our_file() } else { ct_file(QuantConfig::w8a8()).0 };
        let cut = cut % bytes.len();
        prop_assert!(SafetensorsReader::from_bytes(bytes[..cut].to_vec()).is_err());
    }
}
