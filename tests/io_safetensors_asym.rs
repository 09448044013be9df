//! Asymmetric int4 layers (`WeightQuant::Int4GroupedAsym`) in our safetensors layout: the
//! extra `weight_offset` part as documented, round trips through both writers and the
//! loader, and corrupt offsets (missing, wrong shape, non-finite, truncated) refused.

use std::collections::HashMap;

use candle_compress::io::loader::{quant_linear, QuantLoader};
use candle_compress::io::safetensors::{
    CompressedFile, CompressedWriter, LayerEntry, PlannedItem, StreamingWriter, KEY_LAYERS,
};
use candle_compress::nn::{QuantConfig, QuantLinear};
use candle_compress::{Error, Result};
use candle_core::{Device, Module, Tensor};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

mod common;

use common::safetensors_raw::{parts_of, rebuild, RawPart};

fn sample(dims: &[usize], seed: f64) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as f64 * 0.7311 + seed).sin() * 3.0 + (i % 7) as f64) as f32)
        .collect();
    Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
}

/// An asymmetric layer `[8, 70]` (group 32: 3 groups, the last short) with bias and
/// smoothing.
fn layer() -> Result<QuantLinear> {
    let smooth: Vec<f32> = (0..70).map(|k| 1.0 + k as f32 / 70.0).collect();
    QuantLinear::new_smoothed(
        &sample(&[8, 70], 0.5)?,
        Some(&sample(&[8], 0.1)?),
        &smooth,
        &QuantConfig::w4a8_asym(32)?,
    )
}

fn file_bytes(l: &QuantLinear) -> Result<Vec<u8>> {
    let mut w = CompressedWriter::new();
    w.add_quant_linear("fc", l)?;
    w.to_bytes()
}

#[test]
fn asym_layer_is_stored_as_documented_and_round_trips() -> Result<()> {
    let l = layer()?;
    let bytes = file_bytes(&l)?;
    let st = SafeTensors::deserialize(&bytes)?;
    let off = st.tensor("fc.weight_offset")?;
    assert_eq!((off.dtype(), off.shape()), (Dtype::F32, &[8usize, 3][..]));
    let stored: Vec<f32> = off
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(Some(&stored[..]), l.offsets());
    assert_eq!(st.tensor("fc.weight")?.shape(), &[8, 35]);
    assert_eq!(st.tensor("fc.weight_scale")?.shape(), &[8, 3]);
    let (_, meta) = SafeTensors::read_metadata(&bytes)?;
    let layers = &meta.metadata().as_ref().unwrap()[KEY_LAYERS];
    assert!(
        layers.contains(r#""weights":"int4-grouped-asym""#),
        "{layers}"
    );
    assert!(layers.contains(r#""group":32"#), "{layers}");

    let file = CompressedFile::from_bytes(bytes.clone())?;
    let back = file.load_quant_linear("fc")?;
    assert_eq!(back.to_parts(), l.to_parts());
    let x = sample(&[3, 70], 2.0)?;
    assert_eq!(
        back.forward(&x)?.to_vec2::<f32>()?,
        l.forward(&x)?.to_vec2::<f32>()?
    );
    // Through the loader, from a file on disk.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("asym.safetensors");
    std::fs::write(&path, &bytes)?;
    let vb = QuantLoader::from_compressed(&path)?;
    assert_eq!(quant_linear(70, 8, vb.pp("fc"))?.to_parts(), l.to_parts());
    // Symmetric layers gain no part.
    let sym = QuantLinear::new(&sample(&[8, 70], 0.5)?, None, &QuantConfig::w4a8(32)?)?;
    let sym_bytes = file_bytes(&sym)?;
    let mut names: Vec<String> = SafeTensors::deserialize(&sym_bytes)?
        .names()
        .into_iter()
        .map(str::to_string)
        .collect();
    names.sort();
    assert_eq!(names, ["fc.weight", "fc.weight_scale"]);
    Ok(())
}

#[test]
fn streaming_writer_stores_asym_layers() -> Result<()> {
    let l = layer()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("stream.safetensors");
    let plan = vec![(
        "fc".to_string(),
        PlannedItem::QuantLinear(LayerEntry {
            in_features: 70,
            out_features: 8,
            config: QuantConfig::w4a8_asym(32)?,
            bias: true,
            smooth: true,
        }),
    )];
    let mut sw = StreamingWriter::create(&path, plan, HashMap::new())?;
    sw.write_quant_linear("fc", &l)?;
    sw.finish()?;
    let file = CompressedFile::open(&path)?;
    assert_eq!(file.load_quant_linear("fc")?.to_parts(), l.to_parts());
    assert_eq!(
        CompressedFile::from_bytes(file_bytes(&l)?)?
            .load_quant_linear("fc")?
            .to_parts(),
        l.to_parts()
    );
    Ok(())
}

#[test]
fn corrupt_offsets_are_refused() -> Result<()> {
    let bytes = file_bytes(&layer()?)?;
    let (tensors, meta) = parts_of(&bytes);
    // Missing part.
    let without: Vec<RawPart> = tensors
        .iter()
        .filter(|t| t.0 != "fc.weight_offset")
        .cloned()
        .collect();
    assert!(CompressedFile::from_bytes(rebuild(&without, meta.clone())).is_err());
    // Same element count, wrong shape; wrong dtype.
    for (shape, dtype) in [
        (vec![3, 8], Dtype::F32),
        (vec![24], Dtype::F32),
        (vec![8, 3], Dtype::I32),
    ] {
        let mut t = tensors.clone();
        for p in &mut t {
            if p.0 == "fc.weight_offset" {
                (p.1, p.2) = (dtype, shape.clone());
            }
        }
        assert!(
            CompressedFile::from_bytes(rebuild(&t, meta.clone())).is_err(),
            "{shape:?} {dtype:?}"
        );
    }
    // A non-finite offset passes the header checks and is refused on load.
    for bad in [f32::NAN, f32::INFINITY] {
        let mut t = tensors.clone();
        for p in &mut t {
            if p.0 == "fc.weight_offset" {
                p.3[4..8].copy_from_slice(&bad.to_le_bytes());
            }
        }
        let file = CompressedFile::from_bytes(rebuild(&t, meta.clone()))?;
        let e = file.load_quant_linear("fc").unwrap_err();
        assert!(matches!(e, Error::NonFinite { index: 1, .. }), "{e}");
    }
    // A symmetric manifest with an offset part: the extra tensor is not a layer part, and
    // the layer loads without offsets.
    let mut sym_meta = meta.clone();
    let layers = sym_meta[KEY_LAYERS].replace("int4-grouped-asym", "int4-grouped");
    sym_meta.insert(KEY_LAYERS.into(), layers);
    if let Ok(file) = CompressedFile::from_bytes(rebuild(&tensors, sym_meta)) {
        assert_eq!(file.load_quant_linear("fc")?.offsets(), None);
    }
    // Truncated anywhere: a named error.
    for cut in [bytes.len() / 2, bytes.len() - 1] {
        let e = CompressedFile::from_bytes(bytes[..cut].to_vec()).unwrap_err();
        assert!(matches!(e, Error::Truncated { .. }), "cut {cut}: {e}");
    }
    Ok(())
}
