//! Bad files get errors that say what is wrong and where: issue 15 point 9 (a corrupt file
//! names the file and says it is not a safetensors file) and point 16 (a stored part whose
//! shape disagrees with the manifest is refused).

use candle_compress::io::reader::SafetensorsReader;
use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
use candle_compress::nn::{QuantConfig, QuantLinear};
use candle_compress::{Compressor, Error, Result};
use candle_core::{Device, Tensor};
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;

#[test]
fn corrupt_file_error_names_the_file_and_says_it_is_not_safetensors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("notes.safetensors");
    std::fs::write(&path, "hello, this is a text file and not a tensor file\n")?;
    for err in [
        SafetensorsReader::open(&path).unwrap_err(),
        CompressedFile::open(&path).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("not a safetensors file"), "{msg}");
        assert!(!msg.contains("header length 80"), "{msg}");
    }
    // Too short, and a header that is not JSON: the same two facts.
    std::fs::write(&path, b"abc")?;
    let msg = SafetensorsReader::open(&path).unwrap_err().to_string();
    assert!(
        msg.contains("notes.safetensors") && msg.contains("not a safetensors file"),
        "{msg}"
    );
    let mut bytes = 8u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"not json");
    std::fs::write(&path, bytes)?;
    let msg = SafetensorsReader::open(&path).unwrap_err().to_string();
    assert!(
        msg.contains("notes.safetensors") && msg.contains("not a safetensors file"),
        "{msg}"
    );
    // A missing file names it too.
    let missing = dir.path().join("absent.safetensors");
    let msg = SafetensorsReader::open(&missing).unwrap_err().to_string();
    assert!(msg.contains("absent.safetensors"), "{msg}");
    Ok(())
}

/// Rewrites the file with tensor `name`'s shape replaced (same bytes, same metadata).
fn with_shape(bytes: &[u8], name: &str, shape: Vec<usize>) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let views: Vec<(String, TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let s = if n == name {
                shape.clone()
            } else {
                v.shape().to_vec()
            };
            (n.clone(), TensorView::new(v.dtype(), s, v.data()).unwrap())
        })
        .collect();
    safetensors::serialize(views, meta.metadata().clone()).unwrap()
}

#[test]
fn stored_part_whose_shape_disagrees_with_the_manifest_is_refused() -> Result<()> {
    let t = Tensor::randn(0f32, 1., (8, 64), &Device::Cpu)?;
    let w = Tensor::randn(0f32, 1., (4, 32), &Device::Cpu)?;
    let mut writer = CompressedWriter::new();
    writer.add_compressed(
        "t",
        &"int8:32"
            .parse::<candle_compress::scheme::Scheme>()?
            .compress(&t)?,
    )?;
    writer.add_quant_linear("fc", &QuantLinear::new(&w, None, &QuantConfig::w4a8(32)?)?)?;
    let bytes = writer.to_bytes()?;
    assert!(CompressedFile::from_bytes(bytes.clone()).is_ok());
    for (name, shape) in [
        ("t.q", vec![64, 8]),       // codes transposed: same count
        ("t.scales", vec![4, 4]),   // flat part given two dims
        ("fc.weight", vec![16, 4]), // packed int4 rows [4, 16] re-cut
        ("fc.weight_scale", vec![1, 4]),
    ] {
        let err = CompressedFile::from_bytes(with_shape(&bytes, name, shape)).unwrap_err();
        assert!(
            matches!(err, Error::MetadataMismatch { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(name), "{err}");
    }
    Ok(())
}

#[test]
fn a_config_field_of_the_wrong_type_says_wrong_type_not_missing() {
    use candle_compress::io::compressed_tensors::CtCheckpoint;
    use candle_compress::io::reader::SafetensorsReader;
    let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    let bytes = safetensors::serialize(none, None).unwrap();
    let config = |weights: &str| {
        format!(
            r#"{{"quantization_config": {{"quant_method": "compressed-tensors",
                "format": "int-quantized", "config_groups": {{"g": {{"targets": ["Linear"],
                "weights": {weights}}}}}}}}}"#
        )
    };
    for (weights, field) in [
        (
            r#"{"num_bits": "8", "type": "int", "strategy": "channel"}"#,
            "num_bits",
        ),
        (
            r#"{"num_bits": 8, "type": 1, "strategy": "channel"}"#,
            "type",
        ),
        (
            r#"{"num_bits": 8, "symmetric": "yes", "strategy": "channel"}"#,
            "symmetric",
        ),
        (r#"{"num_bits": 8, "strategy": ["channel"]}"#, "strategy"),
    ] {
        let reader = SafetensorsReader::from_bytes(bytes.clone()).unwrap();
        let err = CtCheckpoint::from_config_bytes(reader, config(weights).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("wrong type") && err.contains(field),
            "{field}: {err}"
        );
    }
    let reader = SafetensorsReader::from_bytes(bytes.clone()).unwrap();
    let err = CtCheckpoint::from_config_bytes(
        reader,
        config(r#"{"type": "int", "strategy": "channel"}"#).as_bytes(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("missing") && !err.contains("wrong type"),
        "{err}"
    );
    let reader = SafetensorsReader::from_bytes(bytes).unwrap();
    let bad_format =
        r#"{"quantization_config": {"quant_method": "compressed-tensors", "format": 3}}"#;
    let err = CtCheckpoint::from_config_bytes(reader, bad_format.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("wrong type"), "{err}");
}
