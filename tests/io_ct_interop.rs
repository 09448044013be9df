//! compressed-tensors interop, issue 15 points 1–4 and 6 (and 16's pack-quantized item):
//! each test fails on the code before its fix. Checkpoints are built by hand from the
//! compressed-tensors layout (names, dtypes, shapes, packing) and read with the
//! `safetensors` crate directly, independently of our reader.

use candle_compress::io::compressed_tensors::{CtCheckpoint, CtWriter, SHARD_INDEX_NAME};
use candle_compress::io::loader::QuantLoader;
use candle_compress::io::reader::SafetensorsReader;
use candle_compress::nn::{ActivationQuant, QuantConfig, QuantLinear, WeightQuant};
use candle_compress::{Error, Result};
use candle_core::{Device, Module, Tensor};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde_json::{json, Value};

mod common;

use common::oracle::linear_f64;
use common::safetensors_raw::serialize;
use common::tensors::sine_matrix;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Pack by the spec: per row, `q + 8` at bits `4·(i mod 8)` of int32 `i / 8`.
fn pack_rows(q: &[i8], inp: usize) -> Vec<u8> {
    let mut packed = Vec::new();
    for row in q.chunks(inp) {
        for word in row.chunks(8) {
            let mut v = 0u32;
            for (i, &c) in word.iter().enumerate() {
                v |= ((c + 8) as u32) << (4 * i);
            }
            packed.extend_from_slice(&(v as i32).to_le_bytes());
        }
    }
    packed
}

fn act_token() -> Value {
    json!({"num_bits": 8, "type": "int", "symmetric": true, "strategy": "token", "dynamic": true})
}

fn config(format: &str, weights: Value, acts: Value) -> Value {
    json!({"quantization_config": {
        "quant_method": "compressed-tensors", "format": format,
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                      "input_activations": acts}},
        "ignore": []}})
}

fn max_rel_err(want: &[f32], got: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    want.iter()
        .zip(got)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

// Point 1 --------------------------------------------------------------------------------

#[test]
fn ct_writer_refuses_int4_groups_that_do_not_divide_in_features() -> Result<()> {
    // in = 80 with groups of 32: QuantLinear keeps a shorter last group; the format has
    // no such layout (0.12.2 would infer the group as 80 / 3 = 26 and misdecode).
    let layer = QuantLinear::new(&sine_matrix(8, 80, 0.)?, None, &QuantConfig::w4a8(32)?)?;
    let err = CtWriter::new()
        .add_quant_linear("fc", &layer)
        .expect_err("a layout compressed-tensors misreads must be refused");
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("in_features 80"), "{err}");
    // 96 = 3 × 32 divides: written and read back bit-identical.
    let ok = QuantLinear::new(&sine_matrix(8, 96, 0.)?, None, &QuantConfig::w4a8(32)?)?;
    let dir = tempfile::tempdir()?;
    let mut w = CtWriter::new();
    w.add_quant_linear("fc", &ok)?;
    w.write(
        dir.path().join("model.safetensors"),
        dir.path().join("config.json"),
        None,
    )?;
    let back = CtCheckpoint::open_dir(dir.path())?.load_quant_linear("fc")?;
    assert_eq!(back.to_parts(), ok.to_parts());
    Ok(())
}

// Point 2 --------------------------------------------------------------------------------

/// llm-compressor's W4A8 preset: `int-quantized`, 4-bit codes in I8 `[out, in]`, group
/// scales `[out, in / 128]`.
#[test]
fn int_quantized_w4a8_group_checkpoint_loads_with_exact_scales() -> Result<()> {
    let (out, inp, group, rows) = (16, 256, 128, 3);
    let q: Vec<i8> = (0..out * inp)
        .map(|i| ((i * 5 + i / 7) % 16) as i8 - 8)
        .collect();
    let groups = inp / group;
    let scales: Vec<half::bf16> = (0..out * groups)
        .map(|i| half::bf16::from_f32(0.01 + 0.003 * i as f32))
        .collect();
    let bytes = serialize(&[
        (
            "m.fc.weight",
            Dtype::I8,
            vec![out, inp],
            q.iter().map(|&v| v as u8).collect(),
        ),
        (
            "m.fc.weight_scale",
            Dtype::BF16,
            vec![out, groups],
            scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
        ),
    ]);
    let cfg = config(
        "int-quantized",
        json!({"num_bits": 4, "type": "int", "symmetric": true, "strategy": "group",
               "group_size": 128, "dynamic": false, "actorder": null}),
        act_token(),
    );
    let ckpt = CtCheckpoint::from_parts(SafetensorsReader::from_bytes(bytes)?, &cfg)?;
    let layer = ckpt.load_quant_linear("m.fc")?;
    assert_eq!(
        layer.config().weights(),
        WeightQuant::Int4Grouped { group: 128 }
    );
    assert_eq!(layer.config().activations(), ActivationQuant::PerToken);
    assert_eq!(layer.weights_i8(), q);
    let want_scales: Vec<f32> = scales.iter().map(|s| s.to_f32()).collect();
    assert_eq!(layer.weight_scales(), &want_scales[..]);

    let w: Vec<f32> = (0..out * inp)
        .map(|i| q[i] as f32 * want_scales[(i / inp) * groups + (i % inp) / group])
        .collect();
    let x: Vec<f32> = (0..rows * inp).map(|i| ((i as f32) * 0.23).sin()).collect();
    let want = linear_f64(&x, rows, &w, out, inp, None);
    let got = layer
        .forward(&Tensor::from_vec(x, (rows, inp), &Device::Cpu)?)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert!(
        max_rel_err(&want, &got) < 0.02,
        "{}",
        max_rel_err(&want, &got)
    );
    Ok(())
}

#[test]
fn refusals_name_the_layout_found() -> Result<()> {
    // 4-bit channel-wise codes in I8: QuantLinear has no 4-bit per-channel mode.
    let bytes = serialize(&[
        ("fc.weight", Dtype::I8, vec![2, 64], vec![1; 128]),
        (
            "fc.weight_scale",
            Dtype::F32,
            vec![2, 1],
            f32_bytes(&[0.5, 0.25]),
        ),
    ]);
    let cfg = config(
        "int-quantized",
        json!({"num_bits": 4, "type": "int", "symmetric": true, "strategy": "channel"}),
        act_token(),
    );
    let ckpt = CtCheckpoint::from_parts(SafetensorsReader::from_bytes(bytes)?, &cfg)?;
    let err = ckpt.load_quant_linear("fc").unwrap_err().to_string();
    assert!(err.contains("weight I8 [2, 64]"), "{err}");
    assert!(err.contains("weight_scale F32 [2, 1]"), "{err}");
    assert!(err.contains("4-bit channel"), "{err}");

    // Group scales whose column count disagrees with the config's group size.
    let bytes = serialize(&[
        ("fc.weight", Dtype::I8, vec![2, 256], vec![1; 512]),
        (
            "fc.weight_scale",
            Dtype::F32,
            vec![2, 4],
            f32_bytes(&[0.5; 8]),
        ),
    ]);
    let cfg = config(
        "int-quantized",
        json!({"num_bits": 4, "type": "int", "symmetric": true, "strategy": "group", "group_size": 128}),
        act_token(),
    );
    let ckpt = CtCheckpoint::from_parts(SafetensorsReader::from_bytes(bytes)?, &cfg)?;
    let err = ckpt.load_quant_linear("fc").unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("weight_scale F32 [2, 4]") && msg.contains("group_size 128"),
        "{msg}"
    );
    assert!(!msg.contains("missing config group"), "{msg}");
    Ok(())
}

// Point 3 --------------------------------------------------------------------------------

#[test]
fn w4a16_checkpoint_runs_weight_only() -> Result<()> {
    let (out, inp, group, rows) = (16, 256, 64, 4);
    let q: Vec<i8> = (0..out * inp)
        .map(|i| ((i * 7 + i / 5) % 16) as i8 - 8)
        .collect();
    let groups = inp / group;
    let scales: Vec<f32> = (0..out * groups).map(|i| 0.01 + 0.002 * i as f32).collect();
    let bytes = serialize(&[
        (
            "p.weight_packed",
            Dtype::I32,
            vec![out, inp / 8],
            pack_rows(&q, inp),
        ),
        (
            "p.weight_scale",
            Dtype::F32,
            vec![out, groups],
            f32_bytes(&scales),
        ),
        (
            "p.weight_shape",
            Dtype::I64,
            vec![2],
            [out as i64, inp as i64]
                .iter()
                .flat_map(|d| d.to_le_bytes())
                .collect(),
        ),
    ]);
    let cfg = config(
        "pack-quantized",
        json!({"num_bits": 4, "type": "int", "symmetric": true, "strategy": "group", "group_size": 64}),
        Value::Null,
    );
    let ckpt = CtCheckpoint::from_parts(SafetensorsReader::from_bytes(bytes)?, &cfg)?;
    let (layer, report) = ckpt.load_quant_linear_with_report("p")?;
    assert_eq!(report.activations, ActivationQuant::Float);
    assert_eq!(layer.config().activations(), ActivationQuant::Float);
    let w: Vec<f32> = (0..out * inp)
        .map(|i| q[i] as f32 * scales[(i / inp) * groups + (i % inp) / group])
        .collect();
    // Inputs with an outlier channel: int8 activations would lose the small ones.
    let x: Vec<f32> = (0..rows * inp)
        .map(|i| {
            if i % inp == 3 {
                400.0
            } else {
                ((i as f32) * 0.23).sin()
            }
        })
        .collect();
    let want = linear_f64(&x, rows, &w, out, inp, None);
    let got = layer
        .forward(&Tensor::from_vec(x.clone(), (rows, inp), &Device::Cpu)?)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let err = max_rel_err(&want, &got);
    assert!(
        err < 1e-5,
        "weight-only output is the float layer of the stored weights: {err}"
    );
    // The same layer with int8 activations is measurably further off.
    let a8 = layer.with_activations(ActivationQuant::PerToken)?;
    let got8 = a8
        .forward(&Tensor::from_vec(x, (rows, inp), &Device::Cpu)?)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert!(max_rel_err(&want, &got8) > 10.0 * err.max(1e-7));
    assert!(layer
        .quantize_activations(&Tensor::zeros(
            (1, inp),
            candle_core::DType::F32,
            &Device::Cpu
        )?)
        .is_err());
    Ok(())
}

#[test]
fn weight_only_layers_are_written_with_null_input_activations() -> Result<()> {
    let cfg = QuantConfig::w4a8(32)?.with_activations(ActivationQuant::Float)?;
    let layer = QuantLinear::new(&sine_matrix(8, 64, 1.)?, None, &cfg)?;
    let dir = tempfile::tempdir()?;
    let mut w = CtWriter::new();
    w.add_quant_linear("fc", &layer)?;
    w.write(
        dir.path().join("model.safetensors"),
        dir.path().join("config.json"),
        None,
    )?;
    let written: Value = serde_json::from_slice(&std::fs::read(dir.path().join("config.json"))?)?;
    assert!(
        written["quantization_config"]["config_groups"]["group_0"]["input_activations"].is_null()
    );
    let back = CtCheckpoint::open_dir(dir.path())?.load_quant_linear("fc")?;
    assert_eq!(back.to_parts(), layer.to_parts());
    // Static per-tensor activations round-trip through `input_scale`.
    let st = QuantConfig::w8a8().with_activations(ActivationQuant::Static { scale: 0.02 })?;
    let layer = QuantLinear::new(&sine_matrix(8, 64, 2.)?, None, &st)?;
    let dir = tempfile::tempdir()?;
    let mut w = CtWriter::new();
    w.add_quant_linear("fc", &layer)?;
    w.write(
        dir.path().join("model.safetensors"),
        dir.path().join("config.json"),
        None,
    )?;
    let bytes = std::fs::read(dir.path().join("model.safetensors"))?;
    let st_file = SafeTensors::deserialize(&bytes)?;
    assert_eq!(st_file.tensor("fc.input_scale")?.shape(), &[1]);
    let back = CtCheckpoint::open_dir(dir.path())?.load_quant_linear("fc")?;
    assert_eq!(back.to_parts(), layer.to_parts());
    Ok(())
}

// Point 4 --------------------------------------------------------------------------------

#[test]
fn sharded_checkpoint_written_by_us_reads_with_an_independent_reader() -> Result<()> {
    let cfg = QuantConfig::w4a8(32)?;
    let mut writer = CtWriter::new();
    let mut layers = Vec::new();
    for i in 0..4 {
        let name = format!("model.layers.{i}.mlp.down_proj");
        let layer = QuantLinear::new(&sine_matrix(16, 64, i as f32)?, None, &cfg)?;
        writer.add_quant_linear(&name, &layer)?;
        layers.push((name, layer));
    }
    writer.add_float("model.norm.weight", &sine_matrix(1, 64, 5.)?.flatten_all()?)?;
    let dir = tempfile::tempdir()?;
    writer.write_sharded(dir.path(), 1200, Some(json!({"model_type": "llama"})))?;

    // Independent reader: the index by the transformers layout, each shard with the
    // safetensors crate, the packed codes decoded by the spec.
    let index: Value = serde_json::from_slice(&std::fs::read(dir.path().join(SHARD_INDEX_NAME))?)?;
    let map = index["weight_map"].as_object().expect("weight_map");
    let mut files: Vec<&str> = map.values().filter_map(Value::as_str).collect();
    files.sort();
    files.dedup();
    assert!(files.len() >= 3, "{files:?}");
    let mut total = 0usize;
    for (i, f) in files.iter().enumerate() {
        assert_eq!(
            *f,
            format!("model-{:05}-of-{:05}.safetensors", i + 1, files.len())
        );
        let bytes = std::fs::read(dir.path().join(f))?;
        let st = SafeTensors::deserialize(&bytes)?;
        for (name, view) in st.tensors() {
            assert_eq!(map[&name], *f, "{name}");
            total += view.data().len();
        }
    }
    assert_eq!(index["metadata"]["total_size"], total);
    for (name, layer) in &layers {
        let file = map[&format!("{name}.weight_packed")].as_str().unwrap();
        let bytes = std::fs::read(dir.path().join(file))?;
        let st = SafeTensors::deserialize(&bytes)?;
        let packed = st.tensor(&format!("{name}.weight_packed"))?;
        assert_eq!(packed.shape(), &[16, 8]);
        let codes: Vec<i8> = packed
            .data()
            .chunks_exact(4)
            .flat_map(|c| {
                let w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                (0..8).map(move |i| ((w >> (4 * i)) & 0xF) as i8 - 8)
            })
            .collect();
        assert_eq!(codes, layer.weights_i8(), "{name}");
    }

    // And ours: every layer bit-identical, through the checkpoint and QuantLoader.
    let ckpt = CtCheckpoint::open_dir(dir.path())?;
    assert_eq!(ckpt.shard_count(), files.len());
    for (name, layer) in &layers {
        assert_eq!(ckpt.load_quant_linear(name)?.to_parts(), layer.to_parts());
    }
    let vb = QuantLoader::from_compressed_tensors_dir(dir.path())?;
    assert_eq!(vb.pp("model.norm").get(&[64], "weight")?.dims(), &[64]);
    assert_eq!(
        vb.pp("model.layers.3.mlp.down_proj")
            .quant_linear(64, 16, "")?
            .to_parts(),
        layers[3].1.to_parts()
    );
    Ok(())
}

#[test]
fn hand_built_sharded_checkpoint_loads() -> Result<()> {
    // Two shards split inside one layer (weight in one, scale in the other), written with
    // the safetensors crate and an index by hand.
    let dir = tempfile::tempdir()?;
    let q: Vec<i8> = (0..4 * 32)
        .map(|i| (i % 255) as i8)
        .map(|v| v.max(-127))
        .collect();
    let a = serialize(&[(
        "fc.weight",
        Dtype::I8,
        vec![4, 32],
        q.iter().map(|&v| v as u8).collect(),
    )]);
    let b = serialize(&[
        (
            "fc.weight_scale",
            Dtype::F32,
            vec![4, 1],
            f32_bytes(&[0.1, 0.2, 0.3, 0.4]),
        ),
        ("norm.weight", Dtype::F32, vec![2], f32_bytes(&[1.0, 2.0])),
    ]);
    std::fs::write(dir.path().join("model-00001-of-00002.safetensors"), a)?;
    std::fs::write(dir.path().join("model-00002-of-00002.safetensors"), b)?;
    let index = json!({"metadata": {"total_size": 128 + 16 + 8}, "weight_map": {
        "fc.weight": "model-00001-of-00002.safetensors",
        "fc.weight_scale": "model-00002-of-00002.safetensors",
        "norm.weight": "model-00002-of-00002.safetensors"}});
    std::fs::write(dir.path().join(SHARD_INDEX_NAME), index.to_string())?;
    let cfg = config(
        "int-quantized",
        json!({"num_bits": 8, "type": "int", "symmetric": true, "strategy": "channel"}),
        act_token(),
    );
    std::fs::write(dir.path().join("config.json"), cfg.to_string())?;
    let ckpt = CtCheckpoint::open_dir(dir.path())?;
    let layer = ckpt.load_quant_linear("fc")?;
    assert_eq!(layer.weights_i8(), q);
    assert_eq!(layer.weight_scales(), &[0.1, 0.2, 0.3, 0.4]);
    assert_eq!(
        ckpt.load_float("norm.weight", &Device::Cpu)?
            .to_vec1::<f32>()?,
        vec![1., 2.]
    );

    // An index that points a tensor at the wrong shard, or a path, is refused.
    let bad = json!({"weight_map": {"fc.weight": "model-00002-of-00002.safetensors"}});
    std::fs::write(dir.path().join(SHARD_INDEX_NAME), bad.to_string())?;
    assert!(matches!(
        CtCheckpoint::open_dir(dir.path()),
        Err(Error::Corrupt { .. })
    ));
    let bad = json!({"weight_map": {"fc.weight": "../x.safetensors"}});
    std::fs::write(dir.path().join(SHARD_INDEX_NAME), bad.to_string())?;
    assert!(matches!(
        CtCheckpoint::open_dir(dir.path()),
        Err(Error::Corrupt { .. })
    ));
    Ok(())
}

// Point 6 --------------------------------------------------------------------------------

#[test]
fn clamped_minus_128_codes_are_reported_in_the_load_result() -> Result<()> {
    let bytes = serialize(&[
        (
            "fc.weight",
            Dtype::I8,
            vec![1, 4],
            vec![0x80, 5, 0x80, 0x81],
        ),
        ("fc.weight_scale", Dtype::F32, vec![1, 1], f32_bytes(&[0.5])),
    ]);
    let cfg = config(
        "int-quantized",
        json!({"num_bits": 8, "type": "int", "symmetric": true, "strategy": "channel"}),
        act_token(),
    );
    let ckpt = CtCheckpoint::from_parts(SafetensorsReader::from_bytes(bytes.clone())?, &cfg)?;
    let (layer, report) = ckpt.load_quant_linear_with_report("fc")?;
    assert_eq!(layer.weights_i8(), vec![-127, 5, -127, -127]);
    assert_eq!(report.clamped_codes, 2);
    assert_eq!(ckpt.clamped_codes(), 2);
    let ckpt = CtCheckpoint::from_parts(SafetensorsReader::from_bytes(bytes)?, &cfg)?;
    let vb = QuantLoader::from_ct_checkpoint(ckpt);
    vb.quant_linear(4, 1, "fc")?;
    assert_eq!(vb.clamped_codes(), 2);
    Ok(())
}

// Point 16 (pack-quantized) ------------------------------------------------------------------

#[test]
fn weight_shape_smaller_than_stored_codes_with_nonzero_padding_is_refused() -> Result<()> {
    // 2 rows of 64 codes stored (8 words each); weight_shape claims 60 columns, and the
    // last 4 nibbles of each row hold codes, not zero padding.
    let q: Vec<i8> = (0..128).map(|i| (i % 15) as i8 - 7).collect();
    let packed = pack_rows(&q, 64);
    let make = |shape_in: i32, packed: Vec<u8>| {
        serialize(&[
            ("p.weight_packed", Dtype::I32, vec![2, 8], packed),
            (
                "p.weight_scale",
                Dtype::F32,
                vec![2, 1],
                f32_bytes(&[0.1, 0.2]),
            ),
            (
                "p.weight_shape",
                Dtype::I32,
                vec![2],
                [2, shape_in].iter().flat_map(|d| d.to_le_bytes()).collect(),
            ),
        ])
    };
    // Channel-wise 4-bit has no QuantLinear mode; the padding check comes first.
    let cfg = config(
        "pack-quantized",
        json!({"num_bits": 4, "type": "int", "symmetric": true, "strategy": "group", "group_size": 32}),
        act_token(),
    );
    let ckpt = CtCheckpoint::from_parts(SafetensorsReader::from_bytes(make(60, packed))?, &cfg)?;
    let err = ckpt.load_quant_linear("p").unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. } | Error::Unsupported { .. }),
        "{err}"
    );
    // Make the layout otherwise loadable (in = 64 → groups of 32 → 2 scale columns) but
    // the claimed shape 60: the error must be the padding one.
    let bytes = serialize(&[
        ("p.weight_packed", Dtype::I32, vec![2, 8], pack_rows(&q, 64)),
        (
            "p.weight_scale",
            Dtype::F32,
            vec![2, 2],
            f32_bytes(&[0.1, 0.2, 0.3, 0.4]),
        ),
        (
            "p.weight_shape",
            Dtype::I32,
            vec![2],
            [2i32, 60].iter().flat_map(|d| d.to_le_bytes()).collect(),
        ),
    ]);
    let ckpt = CtCheckpoint::from_parts(SafetensorsReader::from_bytes(bytes)?, &cfg)?;
    let err = ckpt.load_quant_linear("p").unwrap_err();
    assert!(
        err.to_string().contains("non-zero codes past weight_shape"),
        "{err}"
    );
    Ok(())
}
