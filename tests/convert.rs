//! The file-to-file conversions (`candle_compress::convert`) as a program calls them:
//! every layer kind survives quantize → compare, skip rules hold, progress counts every
//! step, and bad inputs fail naming the file without touching the output.

use std::collections::HashMap;
use std::path::Path;

use candle_compress::convert::{
    compare_files, export_gguf_file, inspect_file, prune_file, quantize_file, Action, FileScheme,
};
use candle_compress::prune::{Pipeline, SkipRules};
use candle_compress::Error;
use candle_core::{DType, Device, Tensor};

type R = Result<(), Box<dyn std::error::Error>>;

/// A checkpoint with two linears (one with bias), an embedding and a norm.
fn write_model(path: &Path) -> R {
    let dev = Device::Cpu;
    let t = |shape: (usize, usize), seed: f64| -> candle_core::Result<Tensor> {
        // Deterministic, well-spread values with a per-row offset (asymmetric groups).
        let n = shape.0 * shape.1;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i as f64 * 0.618 + seed).sin() * 0.5 + (i / shape.1) as f64 * 0.01) as f32)
            .collect();
        Tensor::from_vec(v, shape, &dev)
    };
    let tensors: HashMap<String, Tensor> = [
        ("model.fc1.weight".to_string(), t((64, 128), 0.1)?),
        (
            "model.fc1.bias".to_string(),
            Tensor::full(0.25f32, 64, &dev)?,
        ),
        (
            "model.fc2.weight".to_string(),
            t((32, 64), 0.7)?.to_dtype(DType::BF16)?,
        ),
        ("model.embed.weight".to_string(), t((16, 64), 0.3)?),
        (
            "model.norm.weight".to_string(),
            Tensor::ones(64, DType::F32, &dev)?,
        ),
    ]
    .into_iter()
    .collect();
    candle_core::safetensors::save(&tensors, path)?;
    Ok(())
}

#[test]
fn every_layer_config_survives_quantize_then_compare() -> R {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("model.safetensors");
    write_model(&input)?;
    for scheme in ["w8a8", "w4a8:32", "w4a8-asym:32", "int8:32", "nf4:64"] {
        let output = dir
            .path()
            .join(format!("{}.safetensors", scheme.replace(':', "_")));
        let plan: FileScheme = scheme.parse()?;
        let mut steps = Vec::new();
        let report = quantize_file(
            &input,
            &output,
            &plan,
            &SkipRules::names(["embed"]),
            |d, t| steps.push((d, t)),
        )?;
        assert_eq!(steps.last(), Some(&(5, 5)), "{scheme}");
        // A bias folded into its layer is one step but no row.
        let rows = if matches!(plan, FileScheme::Layers(_)) {
            4
        } else {
            5
        };
        assert_eq!(report.tensors.len(), rows, "{scheme}");
        let action = |name: &str| {
            report
                .tensors
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.action)
        };
        assert_eq!(action("model.embed.weight"), Some(Action::Skipped));
        assert_eq!(action("model.norm.weight"), Some(Action::Kept));
        let want = match plan {
            FileScheme::Layers(_) => Action::Layer,
            FileScheme::Tensors(_) => Action::Compressed,
        };
        assert_eq!(action("model.fc1.weight"), Some(want), "{scheme}");
        assert!(report.ratio() > 1.5, "{scheme}: {}", report.ratio());
        assert_eq!(report.output_file_bytes, std::fs::metadata(&output)?.len());

        let eval = compare_files(&input, &output, |_, _| {})?;
        for t in &eval.tensors {
            let floor = if scheme.starts_with("w8") || scheme.starts_with("int8") {
                0.999
            } else {
                0.98
            };
            assert!(
                t.stats.cosine_similarity > floor,
                "{scheme} {}: {:?}",
                t.name,
                t.stats
            );
        }
        let summary = inspect_file(&output)?;
        assert_eq!(summary.format, "candle-compress");
        let fc2 = summary
            .tensors
            .iter()
            .find(|t| t.name.starts_with("model.fc2"))
            .unwrap();
        // The layer's source dtype is recorded, so its original bytes are BF16's.
        assert_eq!(fc2.original_bytes, 32 * 64 * 2, "{scheme}");
        assert_eq!(fc2.dtype, "BF16");
    }
    Ok(())
}

#[test]
fn asymmetric_layers_compare_through_their_offsets() -> R {
    // A weight with all-positive groups: without its offsets the dequantized weight would
    // be far off (the CLI's eval once ignored them).
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("pos.safetensors");
    let w = (Tensor::rand(0f32, 1., (8, 64), &Device::Cpu)? + 4.0)?;
    candle_core::safetensors::save(&[("fc.weight", w)].into_iter().collect(), &input)?;
    let output = dir.path().join("q.safetensors");
    quantize_file(
        &input,
        &output,
        &"w4a8-asym:32".parse()?,
        &SkipRules::default(),
        |_, _| {},
    )?;
    let worst = compare_files(&input, &output, |_, _| {})?
        .worst()
        .cloned()
        .unwrap();
    assert!(worst.stats.max_abs_error < 0.04, "{:?}", worst.stats);
    Ok(())
}

#[test]
fn bad_inputs_name_the_file_and_leave_no_output() -> R {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("model.safetensors");
    write_model(&input)?;
    let bytes = std::fs::read(&input)?;
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 100])?;
    let output = dir.path().join("out.safetensors");
    let plan: FileScheme = "int8:32".parse()?;
    let e = quantize_file(&cut, &output, &plan, &SkipRules::default(), |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("cut.safetensors"), "{e}");
    assert!(!matches!(e.root(), Error::Within { .. }));
    assert!(!output.exists());
    let e = prune_file(
        &cut,
        &output,
        &Pipeline::new().prune_magnitude(0.5),
        |_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("cut.safetensors"), "{e}");
    assert!(!output.exists());
    assert!(inspect_file(&cut)
        .unwrap_err()
        .to_string()
        .contains("cut.safetensors"));

    // Already compressed: refused, naming the command.
    let q = dir.path().join("q.safetensors");
    quantize_file(&input, &q, &plan, &SkipRules::default(), |_, _| {})?;
    let e = quantize_file(&q, &output, &plan, &SkipRules::default(), |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("already compressed"), "{e}");
    assert!(matches!(e.root(), Error::InvalidArgument { .. }));

    // A quantized layer has no GGUF form.
    let layers = dir.path().join("layers.safetensors");
    quantize_file(
        &input,
        &layers,
        &"w8a8".parse()?,
        &SkipRules::default(),
        |_, _| {},
    )?;
    let gguf = dir.path().join("m.gguf");
    let e = export_gguf_file(&layers, &gguf, None, |_, _| {}).unwrap_err();
    assert!(matches!(e.root(), Error::Unsupported { .. }), "{e}");
    assert!(!gguf.exists());
    Ok(())
}

#[test]
fn prune_then_export_counts_every_load() -> R {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("model.safetensors");
    write_model(&input)?;
    let pruned = dir.path().join("pruned.safetensors");
    let pipeline = Pipeline::new()
        .prune_global(0.5)
        .quantize("int8:32".parse()?);
    let mut last = (0, 0);
    let report = prune_file(&input, &pruned, &pipeline, |d, t| last = (d, t))?;
    // Five tensors, each loaded once plus twice for the global threshold.
    assert_eq!(last, (15, 15));
    assert!(report.tensors_processed >= 3, "{report}");
    let gguf = dir.path().join("pruned.gguf");
    let exported = export_gguf_file(&pruned, &gguf, None, |_, _| {})?;
    assert_eq!(exported.tensors.len(), 5);
    assert!(exported.tensors.iter().any(|t| t.ty == "Q8_0"));
    assert_eq!(exported.output_file_bytes, std::fs::metadata(&gguf)?.len());
    Ok(())
}
