//! The candle-compress safetensors format: round trips, the documented layout read with the
//! `safetensors` crate directly, quantized models, and corrupt files.

use std::collections::HashMap;

use candle_compress::io::loader::{quant_linear, QuantLoader};
use candle_compress::io::safetensors::{
    load, save, CompressedFile, CompressedWriter, ItemKind, Loaded, KEY_LAYERS, KEY_TENSORS,
};
use candle_compress::nn::{ActivationQuant, QuantConfig, QuantLinear};
use candle_compress::scheme::{CompressedTensor, Scheme};
use candle_compress::{Compressed, Compressor, Error, Result};
use candle_core::{DType, Device, Module, Tensor};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

mod common;

use common::safetensors_raw::{parts_of, rebuild};

fn schemes() -> Vec<Scheme> {
    [
        "int8:64",
        "int8:32",
        "affine8:128",
        "affine4:64",
        "int4:32",
        "nf4:64",
        "nf4:7",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect()
}

fn sample(dims: &[usize], dtype: DType, seed: f64) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as f64 * 0.7311 + seed).sin() * 3.0) as f32)
        .collect();
    Ok(Tensor::from_vec(v, dims, &Device::Cpu)?.to_dtype(dtype)?)
}

#[test]
fn every_scheme_round_trips_bit_identical() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("all.safetensors");
    let mut compressed = HashMap::new();
    let shapes: [&[usize]; 4] = [&[16, 64], &[3, 5, 7], &[101], &[0, 4]];
    let dtypes = [DType::F32, DType::F16, DType::BF16, DType::F64];
    for (si, scheme) in schemes().into_iter().enumerate() {
        for (k, dims) in shapes.iter().enumerate() {
            let t = sample(dims, dtypes[(si + k) % 4], (si * 10 + k) as f64)?;
            compressed.insert(format!("s{si}.t{k}"), scheme.compress(&t)?);
        }
    }
    let plain = HashMap::from([
        ("norm.weight".to_string(), sample(&[8], DType::F32, 1.0)?),
        ("ids".to_string(), Tensor::new(&[1u32, 2, 3], &Device::Cpu)?),
        ("half".to_string(), sample(&[2, 3], DType::BF16, 2.0)?),
    ]);
    save(&path, &compressed, &plain)?;

    let loaded = load(&path)?;
    assert_eq!(loaded.len(), compressed.len() + plain.len());
    for (name, original) in &compressed {
        let Loaded::Compressed(back) = &loaded[name] else {
            panic!("{name} did not load as compressed");
        };
        assert_eq!(back, original, "{name}");
        assert_eq!(back.original_dtype(), original.original_dtype());
        assert_eq!(back.size_bytes(), original.size_bytes());
    }
    for (name, original) in &plain {
        let Loaded::Plain(back) = &loaded[name] else {
            panic!("{name} did not load as plain");
        };
        assert_eq!(back.dtype(), original.dtype());
        let a = back.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let b = original
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        assert_eq!(a, b, "{name}");
    }

    // One tensor on demand, decompressed exactly as the in-memory value.
    let file = CompressedFile::open(&path)?;
    let want = compressed["s3.t0"].decompress(&Device::Cpu)?;
    let got = file.load_tensor("s3.t0", &Device::Cpu)?;
    assert_eq!(got.dtype(), want.dtype());
    assert_eq!(
        got.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?,
        want.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?
    );
    Ok(())
}

#[test]
fn the_file_reads_with_the_safetensors_crate_as_documented() -> Result<()> {
    let w = sample(&[4, 64], DType::F32, 0.5)?;
    let int8 = "int8:32".parse::<Scheme>()?.compress(&w)?;
    let int4 = "int4:64".parse::<Scheme>()?.compress(&w)?;
    let aff4 = "affine4:16".parse::<Scheme>()?.compress(&w)?;
    let nf4 = "nf4:64".parse::<Scheme>()?.compress(&w)?;
    let layer = QuantLinear::new(
        &w,
        Some(&sample(&[4], DType::F32, 3.)?),
        &QuantConfig::w4a8(32)?,
    )?;
    let mut writer = CompressedWriter::new();
    writer.add_compressed("a", &int8)?;
    writer.add_compressed("b", &int4)?;
    writer.add_compressed("c", &aff4)?;
    writer.add_compressed("d", &nf4)?;
    writer.add_quant_linear("fc", &layer)?;
    writer.add_plain("norm", &sample(&[4], DType::F16, 0.)?)?;
    let bytes = writer.to_bytes()?;

    let st = SafeTensors::deserialize(&bytes)?;
    let info = |name: &str| {
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        (t.dtype(), t.shape().to_vec())
    };
    assert_eq!(info("a.q"), (Dtype::I8, vec![4, 64]));
    assert_eq!(info("a.scales"), (Dtype::F16, vec![8]));
    assert_eq!(info("b.packed"), (Dtype::U8, vec![128]));
    assert_eq!(info("b.scales"), (Dtype::F16, vec![4]));
    assert_eq!(info("c.codes"), (Dtype::U8, vec![128]));
    assert_eq!(info("c.scales"), (Dtype::F32, vec![16]));
    assert_eq!(info("c.zero_points"), (Dtype::F32, vec![16]));
    assert_eq!(info("d.packed"), (Dtype::U8, vec![128]));
    assert_eq!(info("d.absmax"), (Dtype::F32, vec![4]));
    assert_eq!(info("fc.weight"), (Dtype::U8, vec![4, 32]));
    assert_eq!(info("fc.weight_scale"), (Dtype::F32, vec![4, 2]));
    assert_eq!(info("fc.bias"), (Dtype::F32, vec![4]));
    assert_eq!(info("norm"), (Dtype::F16, vec![4]));
    assert_eq!(st.len(), 13);

    // Payload bytes are the in-memory parts.
    let CompressedTensor::Int8(t8) = &int8 else {
        panic!("int8 scheme gave another type")
    };
    let q: Vec<i8> = st.tensor("a.q")?.data().iter().map(|&b| b as i8).collect();
    assert_eq!(q, t8.codes());
    // The int4 layer rows: column 2j low nibble, codes + 8.
    let parts = layer.to_parts();
    let row0 = &st.tensor("fc.weight")?.data()[..32];
    for j in 0..64 {
        let nib = if j % 2 == 0 {
            row0[j / 2] & 0xF
        } else {
            row0[j / 2] >> 4
        };
        assert_eq!(nib as i8 - 8, parts.weights[j]);
    }

    let (_, meta) = SafeTensors::read_metadata(&bytes)?;
    let meta = meta.metadata().clone().expect("metadata present");
    assert_eq!(meta["format"], "candle-compress");
    assert_eq!(meta["format_version"], "1");
    let tensors: serde_json::Value = serde_json::from_str(&meta[KEY_TENSORS])?;
    assert_eq!(
        tensors["a"],
        serde_json::json!({"scheme": "int8:32", "shape": [4, 64], "dtype": "F32"})
    );
    assert_eq!(tensors["c"]["scheme"], "affine4:16");
    let layers: serde_json::Value = serde_json::from_str(&meta[KEY_LAYERS])?;
    assert_eq!(
        layers["fc"],
        serde_json::json!({
            "in_features": 64, "out_features": 4, "weights": "int4-grouped", "group": 32,
            "activations": "per-token", "bias": true, "smooth": false
        })
    );
    Ok(())
}

/// A small model written once against `quant_linear`.
struct Mlp {
    up: QuantLinear,
    down: QuantLinear,
}

impl Mlp {
    fn load(vb: &QuantLoader) -> Result<Self> {
        Ok(Self {
            up: quant_linear(96, 128, vb.pp("up"))?,
            down: quant_linear(128, 96, vb.pp("down"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.down.forward(&self.up.forward(x)?.relu()?)?)
    }
}

#[test]
fn quantized_model_reloads_with_bit_identical_outputs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("mlp.safetensors");
    let up_w = sample(&[128, 96], DType::F32, 0.1)?;
    let down_w = sample(&[96, 128], DType::F32, 0.2)?;
    let up = QuantLinear::new(
        &up_w,
        Some(&sample(&[128], DType::F32, 0.3)?),
        &QuantConfig::w8a8(),
    )?;
    let smooth: Vec<f32> = (0..128).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
    let cfg = QuantConfig::w4a8(64)?.with_activations(ActivationQuant::Static { scale: 0.05 })?;
    let down = QuantLinear::new_smoothed(&down_w, None, &smooth, &cfg)?;
    let original = Mlp { up, down };

    let mut w = CompressedWriter::new();
    w.add_quant_linear("model.mlp.up", &original.up)?;
    w.add_quant_linear("model.mlp.down", &original.down)?;
    w.add_plain("model.norm", &sample(&[96], DType::F32, 0.4)?)?;
    w.write(&path)?;

    let vb = QuantLoader::from_compressed(&path)?;
    let reloaded = Mlp::load(&vb.pp("model").pp("mlp"))?;
    assert_eq!(reloaded.up.to_parts(), original.up.to_parts());
    assert_eq!(reloaded.down.to_parts(), original.down.to_parts());
    let x = sample(&[5, 96], DType::F32, 0.9)?;
    let a = original.forward(&x)?.to_vec2::<f32>()?;
    let b = reloaded.forward(&x)?.to_vec2::<f32>()?;
    let bits =
        |v: &Vec<Vec<f32>>| -> Vec<u32> { v.iter().flatten().map(|f| f.to_bits()).collect() };
    assert_eq!(bits(&a), bits(&b));
    assert_eq!(vb.pp("model").get(&[96], "norm")?.dims(), &[96]);
    assert!(matches!(
        quant_linear(96, 64, vb.pp("model.mlp.up")),
        Err(Error::ShapeMismatch { .. })
    ));
    Ok(())
}

#[test]
fn quantize_on_load_matches_quantizing_in_memory() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("f.safetensors");
    let w = sample(&[32, 64], DType::BF16, 0.7)?;
    let b = sample(&[32], DType::F16, 0.8)?;
    candle_core::safetensors::save(
        &HashMap::from([
            ("fc.weight".to_string(), w.clone()),
            ("fc.bias".to_string(), b.clone()),
        ]),
        &path,
    )?;
    for cfg in [QuantConfig::w8a8(), QuantConfig::w4a8(32)?] {
        let vb = QuantLoader::quantize_on_load(&path, cfg)?;
        let loaded = quant_linear(64, 32, vb.pp("fc"))?;
        let direct = QuantLinear::new(&w, Some(&b), &cfg)?;
        assert_eq!(loaded.to_parts(), direct.to_parts());
    }
    Ok(())
}

#[test]
fn inspect_items_report_stored_bytes() -> Result<()> {
    let w = sample(&[8, 64], DType::F32, 0.)?;
    let c = "int8:64".parse::<Scheme>()?.compress(&w)?;
    let mut writer = CompressedWriter::new();
    writer.add_compressed("w", &c)?;
    let file = CompressedFile::from_bytes(writer.to_bytes()?)?;
    let items = file.items();
    assert_eq!(items.len(), 1);
    assert!(matches!(items[0].kind, ItemKind::Compressed(_)));
    assert_eq!(items[0].stored_bytes, 8 * 64 + 8 * 2);
    Ok(())
}

// ----------------------------------------------------------------------- corrupt files

/// A valid file with one `int8:32` tensor `w` [2, 32], as bytes.
fn valid_file() -> Result<Vec<u8>> {
    let c = "int8:32"
        .parse::<Scheme>()?
        .compress(&sample(&[2, 32], DType::F32, 0.)?)?;
    let mut writer = CompressedWriter::new();
    writer.add_compressed("w", &c)?;
    writer.to_bytes()
}

#[test]
fn corrupt_truncated_file() -> Result<()> {
    let bytes = valid_file()?;
    for cut in [0, 4, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        let err = CompressedFile::from_bytes(bytes[..cut].to_vec()).unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "cut {cut}: {err}");
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("t.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() - 3])?;
    assert!(matches!(
        CompressedFile::open(&path),
        Err(Error::Truncated { .. })
    ));
    Ok(())
}

#[test]
fn corrupt_header_length_past_the_end() -> Result<()> {
    let mut bytes = valid_file()?;
    let past = bytes.len() as u64;
    bytes[..8].copy_from_slice(&past.to_le_bytes());
    let err = CompressedFile::from_bytes(bytes.clone()).unwrap_err();
    assert!(matches!(err, Error::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("past the end"), "{err}");
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        CompressedFile::from_bytes(bytes),
        Err(Error::Corrupt { .. })
    ));
    Ok(())
}

#[test]
fn corrupt_payload_size_not_matching_shape_and_scheme() -> Result<()> {
    let (mut tensors, meta) = parts_of(&valid_file()?);
    // Drop one code: the I8 part now holds 63 values for a [2, 32] int8 tensor.
    for t in &mut tensors {
        if t.0 == "w.q" {
            t.2 = vec![63];
            t.3.pop();
        }
    }
    let err = CompressedFile::from_bytes(rebuild(&tensors, meta.clone())).unwrap_err();
    assert!(matches!(err, Error::MetadataMismatch { .. }), "{err}");
    assert!(err.to_string().contains("w.q"), "{err}");

    // The manifest claims a larger shape than the parts hold.
    let mut meta2 = meta.clone();
    meta2.insert(
        KEY_TENSORS.into(),
        r#"{"w":{"scheme":"int8:32","shape":[3,32],"dtype":"F32"}}"#.into(),
    );
    let (tensors, _) = parts_of(&valid_file()?);
    let err = CompressedFile::from_bytes(rebuild(&tensors, meta2)).unwrap_err();
    assert!(matches!(err, Error::MetadataMismatch { .. }), "{err}");

    // A part stored with the wrong dtype.
    let mut tensors3 = tensors.clone();
    for t in &mut tensors3 {
        if t.0 == "w.scales" {
            t.1 = Dtype::I16;
        }
    }
    let err = CompressedFile::from_bytes(rebuild(&tensors3, meta)).unwrap_err();
    assert!(matches!(err, Error::MetadataMismatch { .. }), "{err}");
    Ok(())
}

#[test]
fn corrupt_unknown_scheme() -> Result<()> {
    let (tensors, mut meta) = parts_of(&valid_file()?);
    meta.insert(
        KEY_TENSORS.into(),
        r#"{"w":{"scheme":"int3:32","shape":[2,32],"dtype":"F32"}}"#.into(),
    );
    let err = CompressedFile::from_bytes(rebuild(&tensors, meta)).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("int3"), "{err}");
    Ok(())
}

#[test]
fn corrupt_unknown_version() -> Result<()> {
    let (tensors, mut meta) = parts_of(&valid_file()?);
    meta.insert("format_version".into(), "2".into());
    let err = CompressedFile::from_bytes(rebuild(&tensors, meta)).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("version"), "{err}");
    Ok(())
}

#[test]
fn corrupt_missing_scale_tensor() -> Result<()> {
    let (tensors, meta) = parts_of(&valid_file()?);
    let without: Vec<_> = tensors.into_iter().filter(|t| t.0 != "w.scales").collect();
    let err = CompressedFile::from_bytes(rebuild(&without, meta)).unwrap_err();
    assert!(matches!(err, Error::Missing { .. }), "{err}");
    assert!(err.to_string().contains("w.scales"), "{err}");
    Ok(())
}

#[test]
fn corrupt_manifest_and_contents() -> Result<()> {
    let (tensors, meta) = parts_of(&valid_file()?);
    for bad in [
        "not json",
        "[1, 2]",
        r#"{"w":{"scheme":"int8:32","shape":[2,-32],"dtype":"F32"}}"#,
        r#"{"w":{"scheme":"int8:32","shape":[2,32],"dtype":"I8"}}"#,
        r#"{"w":{"shape":[2,32],"dtype":"F32"}}"#,
        r#"{"w":{"scheme":"int8:0","shape":[2,32],"dtype":"F32"}}"#,
        r#"{"w":{"scheme":"int8:32","shape":[4294967296,4294967296,4294967296],"dtype":"F32"}}"#,
    ] {
        let mut m = meta.clone();
        m.insert(KEY_TENSORS.into(), bad.into());
        assert!(
            CompressedFile::from_bytes(rebuild(&tensors, m)).is_err(),
            "{bad}"
        );
    }
    // A negative scale passes the header checks and is refused by from_parts on load.
    let mut tensors2 = tensors.clone();
    for t in &mut tensors2 {
        if t.0 == "w.scales" {
            t.3[..2].copy_from_slice(&half::f16::from_f32(-1.0).to_le_bytes());
        }
    }
    let file = CompressedFile::from_bytes(rebuild(&tensors2, meta))?;
    assert!(file.load_tensor("w", &Device::Cpu).is_err());
    Ok(())
}

#[test]
fn streaming_writer_matches_the_in_memory_writer() -> Result<()> {
    use candle_compress::io::safetensors::{LayerEntry, PlannedItem, StreamingWriter, TensorEntry};
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("stream.safetensors");
    let scheme: Scheme = "affine4:32".parse()?;
    let t = sample(&[6, 50], DType::BF16, 0.3)?;
    let c = scheme.compress(&t)?;
    let w = sample(&[8, 64], DType::F32, 0.6)?;
    let layer = QuantLinear::new(
        &w,
        Some(&sample(&[8], DType::F32, 0.1)?),
        &QuantConfig::w4a8(32)?,
    )?;
    let plan = vec![
        (
            "t".to_string(),
            PlannedItem::Compressed(TensorEntry {
                scheme,
                shape: vec![6, 50],
                dtype: DType::BF16,
            }),
        ),
        (
            "fc".to_string(),
            PlannedItem::QuantLinear(LayerEntry {
                in_features: 64,
                out_features: 8,
                config: QuantConfig::w4a8(32)?,
                bias: true,
                smooth: false,
            }),
        ),
        (
            "raw".to_string(),
            PlannedItem::Raw {
                dtype: Dtype::I8,
                shape: vec![3],
            },
        ),
    ];
    let mut sw = StreamingWriter::create(&path, plan.clone(), HashMap::new())?;
    // Out of order, or not what was declared: refused, nothing written.
    assert!(sw.write_quant_linear("fc", &layer).is_err());
    let other = "int8:32".parse::<Scheme>()?.compress(&t)?;
    assert!(sw.write_compressed("t", &other).is_err());
    sw.write_compressed("t", &c)?;
    sw.write_quant_linear("fc", &layer)?;
    sw.write_raw("raw", Dtype::I8, &[3], &[1, 0xff, 7])?;
    sw.finish()?;

    let file = CompressedFile::open(&path)?;
    assert_eq!(file.load_compressed("t")?, c);
    assert_eq!(file.load_quant_linear("fc")?.to_parts(), layer.to_parts());
    let st_bytes = std::fs::read(&path)?;
    let st = SafeTensors::deserialize(&st_bytes)?;
    assert_eq!(st.tensor("raw")?.data(), &[1, 0xff, 7]);

    // The same items through the in-memory writer load to the same values.
    let mut mw = CompressedWriter::new();
    mw.add_compressed("t", &c)?;
    mw.add_quant_linear("fc", &layer)?;
    let mem = CompressedFile::from_bytes(mw.to_bytes()?)?;
    assert_eq!(mem.load_compressed("t")?, file.load_compressed("t")?);

    // An unfinished writer leaves nothing behind.
    let path2 = dir.path().join("unfinished.safetensors");
    let mut sw = StreamingWriter::create(&path2, plan, HashMap::new())?;
    sw.write_compressed("t", &c)?;
    assert!(sw.finish().is_err());
    let names: Vec<_> = std::fs::read_dir(dir.path())?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    assert_eq!(names, vec!["stream.safetensors".to_string()]);
    Ok(())
}
