//! The bytes our writers put in a file do not change when the code behind them is
//! reorganised (issue 11 point 3): a fixed set of files — every compressed scheme, every
//! QuantLinear weight and activation mode, plain and raw tensors, through the in-memory
//! writer (`to_bytes` and `write`), `save`, the streaming writer, a pruning pipeline's
//! output, and compressed-tensors checkpoints — is written from deterministic values and
//! each file's hash compared with a pinned one, then the file is loaded back.
//!
//! The pinned hashes were computed with the code *before* the split of
//! `io/safetensors.rs` into format, writers and reader, so they prove the split wrote
//! the same bytes. The hash is FNV-1a (64 bits) of the file with one normalisation: the
//! `safetensors` crate serialises the `__metadata__` string map in `HashMap` order, which
//! differs from run to run, so its entries are re-serialised sorted by key (the same
//! bytes, permuted; the file length and every other byte are untouched).
//!
//! With `CANDLE_COMPRESS_BYTES_DIR` set, the files are written into that directory (to
//! keep them); with `CANDLE_COMPRESS_BYTES_CHECK_DIR` set, the files already in that
//! directory — written by another build — are hashed and loaded instead of new ones.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_compress::io::compressed_tensors::{CtCheckpoint, CtWriter};
use candle_compress::io::safetensors::{
    save, CompressedFile, CompressedWriter, LayerEntry, PlannedItem, StreamingWriter, TensorEntry,
};
use candle_compress::nn::{ActivationQuant, QuantConfig, QuantLinear};
use candle_compress::prune::{Pipeline, StoredTensor};
use candle_compress::scheme::{CompressedTensor, Scheme};
use candle_compress::{Compressed, Compressor, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::Dtype;

const CPU: Device = Device::Cpu;

/// Deterministic values (no RNG): a scaled sine.
fn sample(dims: &[usize], dtype: DType, seed: f64) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as f64 * 0.6180339 + seed).sin() * 2.5) as f32)
        .collect();
    Ok(Tensor::from_vec(v, dims, &CPU)?.to_dtype(dtype)?)
}

/// Compressed tensors of every scheme, tails included, in several original dtypes.
fn compressed() -> Result<Vec<(String, CompressedTensor)>> {
    let cases: [(&str, &[usize], DType); 9] = [
        ("int8:32", &[5, 40], DType::F32),
        ("int8:64", &[3, 70], DType::BF16),
        ("int4:32", &[4, 33], DType::F32),
        ("int4:64", &[129], DType::F16),
        ("affine8:32", &[6, 20], DType::F32),
        ("affine4:64", &[2, 3, 31], DType::F16),
        ("nf4:64", &[8, 64], DType::F64),
        ("nf4:7", &[51], DType::F32),
        ("int8:32", &[0, 4], DType::F32),
    ];
    cases
        .iter()
        .enumerate()
        .map(|(i, (scheme, dims, dtype))| {
            let scheme: Scheme = scheme.parse()?;
            let t = sample(dims, *dtype, i as f64)?;
            Ok((format!("t{i}.{}", scheme.kind()), scheme.compress(&t)?))
        })
        .collect()
}

/// QuantLinears of every weight and activation mode, with and without bias and smoothing.
fn layers() -> Result<Vec<(String, QuantLinear)>> {
    let w = |o: usize, i: usize, seed: f64| sample(&[o, i], DType::F32, seed);
    let b = |o: usize| sample(&[o], DType::F32, 9.0);
    let smooth: Vec<f32> = (0..40).map(|i| 0.5 + i as f32 / 40.0).collect();
    Ok(vec![
        (
            "w8a8".into(),
            QuantLinear::new(&w(6, 40, 1.0)?, Some(&b(6)?), &QuantConfig::w8a8())?,
        ),
        (
            "w8a8_smooth_static".into(),
            QuantLinear::new_smoothed(
                &w(4, 40, 2.0)?,
                None,
                &smooth,
                &QuantConfig::w8a8().with_activations(ActivationQuant::Static { scale: 0.1 })?,
            )?,
        ),
        (
            "w8_per_tensor".into(),
            QuantLinear::new(
                &w(3, 16, 3.0)?,
                None,
                &QuantConfig::w8a8().with_activations(ActivationQuant::PerTensor)?,
            )?,
        ),
        (
            "w4a8_g32".into(),
            QuantLinear::new(&w(5, 70, 4.0)?, Some(&b(5)?), &QuantConfig::w4a8(32)?)?,
        ),
        (
            "w4a8_g64_weight_only".into(),
            QuantLinear::new(
                &w(4, 129, 5.0)?,
                None,
                &QuantConfig::w4a8(64)?.with_activations(ActivationQuant::Float)?,
            )?,
        ),
        (
            "w4a8_asym_g32".into(),
            QuantLinear::new(&w(3, 65, 6.0)?, Some(&b(3)?), &QuantConfig::w4a8_asym(32)?)?,
        ),
        (
            "w4a8_asym_g128_smooth".into(),
            QuantLinear::new_smoothed(
                &w(2, 40, 7.0)?,
                None,
                &smooth,
                &QuantConfig::w4a8_asym(128)?,
            )?,
        ),
    ])
}

/// Plain tensors of every dtype the writers take.
fn plain() -> Result<Vec<(String, Tensor)>> {
    Ok(vec![
        ("p.f32".into(), sample(&[7], DType::F32, 1.5)?),
        ("p.f16".into(), sample(&[2, 5], DType::F16, 2.5)?),
        ("p.bf16".into(), sample(&[3], DType::BF16, 3.5)?),
        ("p.f64".into(), sample(&[2, 2], DType::F64, 4.5)?),
        ("p.u8".into(), Tensor::new(&[1u8, 2, 250], &CPU)?),
        ("p.u32".into(), Tensor::new(&[7u32, 70_000], &CPU)?),
        ("p.i64".into(), Tensor::new(&[-3i64, 1 << 40], &CPU)?),
        // A strided (transposed) view: written row-major.
        ("p.t".into(), sample(&[3, 4], DType::F32, 5.5)?.t()?),
    ])
}

/// Everything through the in-memory writer.
fn in_memory_writer() -> Result<CompressedWriter> {
    let mut w = CompressedWriter::new();
    for (name, c) in compressed()? {
        w.add_compressed(&name, &c)?;
    }
    for (name, l) in layers()? {
        w.add_quant_linear(&name, &l)?;
    }
    for (name, t) in plain()? {
        w.add_plain(&name, &t)?;
    }
    w.add_raw("raw.i8", Dtype::I8, &[4], vec![0x80, 0xff, 0, 0x7f])?;
    w.add_raw("raw.i16", Dtype::I16, &[2], vec![1, 2, 3, 4])?;
    w.add_metadata("source", "io_bytes_stable")?;
    w.add_metadata("note", "a \"quoted\" value\n")?;
    Ok(w)
}

/// Everything through the streaming writer, items in a deliberate (unsorted) order.
fn write_streaming(path: &Path) -> Result<()> {
    let mut plan = Vec::new();
    let layers = layers()?;
    let compressed = compressed()?;
    let plain = plain()?;
    for (name, l) in layers.iter().rev() {
        let p = l.to_parts();
        plan.push((
            name.clone(),
            PlannedItem::QuantLinear(LayerEntry {
                in_features: p.in_features,
                out_features: p.out_features,
                config: p.config,
                bias: p.bias.is_some(),
                smooth: p.smooth.is_some(),
            }),
        ));
    }
    for (name, c) in &compressed {
        plan.push((
            name.clone(),
            PlannedItem::Compressed(TensorEntry {
                scheme: c.scheme(),
                shape: c.shape().dims().to_vec(),
                dtype: c.original_dtype(),
            }),
        ));
    }
    let st_dtype = |d: DType| match d {
        DType::U8 => Dtype::U8,
        DType::U32 => Dtype::U32,
        DType::I64 => Dtype::I64,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F64 => Dtype::F64,
        _ => Dtype::F32,
    };
    for (name, t) in &plain {
        plan.push((
            name.clone(),
            PlannedItem::Raw {
                dtype: st_dtype(t.dtype()),
                shape: t.dims().to_vec(),
            },
        ));
    }
    plan.push((
        "raw.i8".into(),
        PlannedItem::Raw {
            dtype: Dtype::I8,
            shape: vec![4],
        },
    ));
    let extra = HashMap::from([
        ("source".to_string(), "io_bytes_stable".to_string()),
        ("z".to_string(), "last".to_string()),
    ]);
    let mut w = StreamingWriter::create(path, plan, extra)?;
    for (name, l) in layers.iter().rev() {
        w.write_quant_linear(name, l)?;
    }
    for (name, c) in &compressed {
        w.write_compressed(name, c)?;
    }
    for (name, t) in &plain {
        w.write_plain(name, t)?;
    }
    w.write_raw("raw.i8", Dtype::I8, &[4], &[0x80, 0xff, 0, 0x7f])?;
    w.finish()
}

/// A pruning pipeline's output written as the CLI writes it: quantized tensors
/// compressed, sparse layouts densified, skipped tensors as they were.
fn write_pipeline_output(path: &Path) -> Result<()> {
    let model: HashMap<String, Tensor> = HashMap::from([
        ("l0.weight".to_string(), sample(&[8, 64], DType::F32, 0.25)?),
        (
            "l1.weight".to_string(),
            sample(&[16, 32], DType::F16, 0.75)?,
        ),
        ("l1.bias".to_string(), sample(&[16], DType::F32, 1.25)?),
    ]);
    let sparse = Pipeline::new()
        .prune_nm(2, 4)
        .sparse_storage(true)
        .run(&model)?;
    let quant = Pipeline::new()
        .prune_magnitude(0.5)
        .quantize("int8:32".parse()?)
        .run(&model)?;
    let mut items: Vec<(String, StoredTensor)> = Vec::new();
    for (name, t) in sparse.tensors {
        items.push((format!("sparse.{name}"), t));
    }
    for (name, t) in quant.tensors {
        items.push((format!("quant.{name}"), t));
    }
    let mut plan = Vec::new();
    for (name, t) in &items {
        let item = match t {
            StoredTensor::Quantized(c) => PlannedItem::Compressed(TensorEntry {
                scheme: c.scheme(),
                shape: c.shape().dims().to_vec(),
                dtype: c.original_dtype(),
            }),
            other => {
                let dense = other.to_dense(&CPU)?;
                PlannedItem::Raw {
                    dtype: if dense.dtype() == DType::F16 {
                        Dtype::F16
                    } else {
                        Dtype::F32
                    },
                    shape: dense.dims().to_vec(),
                }
            }
        };
        plan.push((name.clone(), item));
    }
    let mut w = StreamingWriter::create(path, plan, HashMap::new())?;
    for (name, t) in items {
        match t {
            StoredTensor::Quantized(c) => w.write_compressed(&name, &c)?,
            other => w.write_plain(&name, &other.to_dense(&CPU)?)?,
        }
    }
    w.finish()
}

/// compressed-tensors checkpoints: int-quantized (W8A8) and pack-quantized (W4), one
/// file each, and a sharded one.
fn write_compressed_tensors(dir: &Path) -> Result<()> {
    let mut w8 = CtWriter::new();
    w8.add_quant_linear(
        "model.fc1",
        &QuantLinear::new(
            &sample(&[6, 40], DType::F32, 1.0)?,
            Some(&sample(&[6], DType::F32, 2.0)?),
            &QuantConfig::w8a8(),
        )?,
    )?;
    w8.add_quant_linear(
        "model.fc2",
        &QuantLinear::new(
            &sample(&[4, 16], DType::F32, 3.0)?,
            None,
            &QuantConfig::w8a8(),
        )?,
    )?;
    w8.add_float("model.norm.weight", &sample(&[6], DType::F32, 4.0)?)?;
    w8.add_float("model.embed.weight", &sample(&[3, 6], DType::BF16, 5.0)?)?;
    w8.write(dir.join("ct_w8.safetensors"), dir.join("ct_w8.json"), None)?;
    std::fs::create_dir_all(dir.join("ct_w8_sharded"))?;
    w8.write_sharded(dir.join("ct_w8_sharded"), 200, None)?;

    let mut w4 = CtWriter::new();
    w4.add_quant_linear(
        "model.fc1",
        &QuantLinear::new(
            &sample(&[4, 64], DType::F32, 6.0)?,
            None,
            &QuantConfig::w4a8(32)?,
        )?,
    )?;
    w4.add_float("model.norm.weight", &sample(&[4], DType::F16, 7.0)?)?;
    w4.write(dir.join("ct_w4.safetensors"), dir.join("ct_w4.json"), None)?;
    Ok(())
}

/// Writes every file of the set into `dir`.
fn write_all(dir: &Path) -> Result<()> {
    let mem = in_memory_writer()?;
    std::fs::write(dir.join("mem_to_bytes.safetensors"), mem.to_bytes()?)?;
    mem.write(dir.join("mem_write.safetensors"))?;
    let compressed: HashMap<String, CompressedTensor> = compressed()?.into_iter().collect();
    let plain: HashMap<String, Tensor> = plain()?.into_iter().collect();
    save(dir.join("save.safetensors"), &compressed, &plain)?;
    write_streaming(&dir.join("stream.safetensors"))?;
    write_pipeline_output(&dir.join("pipeline_stream.safetensors"))?;
    write_compressed_tensors(dir)
}

fn walk(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

/// The file with its `__metadata__` entries in key order (a permutation of the same
/// bytes); other files unchanged.
fn normalized(bytes: &[u8]) -> Vec<u8> {
    const OPEN: &[u8] = b"{\"__metadata__\":";
    let Some(len) = bytes.get(..8).map(|b| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_le_bytes(a) as usize
    }) else {
        return bytes.to_vec();
    };
    let Some(header) = bytes.get(8..8 + len) else {
        return bytes.to_vec();
    };
    if !header.starts_with(OPEN) {
        return bytes.to_vec();
    }
    let rest = &header[OPEN.len()..];
    let mut stream =
        serde_json::Deserializer::from_slice(rest).into_iter::<BTreeMap<String, String>>();
    let Some(Ok(map)) = stream.next() else {
        return bytes.to_vec();
    };
    let end = stream.byte_offset();
    let sorted = serde_json::to_vec(&map).expect("a string map serialises");
    assert_eq!(sorted.len(), end, "the sorted map is a permutation");
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(OPEN);
    out.extend_from_slice(&sorted);
    out.extend_from_slice(&rest[end..]);
    out.extend_from_slice(&bytes[8 + len..]);
    out
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Hashes of the files, computed with the code before the `io/safetensors.rs` split.
const PINNED: &[(&str, u64)] = &[
    ("ct_w4.json", 0x6be821c52bd1f0ce),
    ("ct_w4.safetensors", 0x31dfcff5d12b12ef),
    ("ct_w8.json", 0x35832be4390e8c9e),
    ("ct_w8.safetensors", 0x4c5078a084da9ced),
    ("ct_w8_sharded/config.json", 0x35832be4390e8c9e),
    (
        "ct_w8_sharded/model-00001-of-00003.safetensors",
        0xcaec997130c9570a,
    ),
    (
        "ct_w8_sharded/model-00002-of-00003.safetensors",
        0xd28d25926f07a4e6,
    ),
    (
        "ct_w8_sharded/model-00003-of-00003.safetensors",
        0x9915f13bd556422c,
    ),
    (
        "ct_w8_sharded/model.safetensors.index.json",
        0xa469264fe635bb37,
    ),
    ("mem_to_bytes.safetensors", 0xc0cdb13d668d3bdd),
    ("mem_write.safetensors", 0xc0cdb13d668d3bdd),
    ("pipeline_stream.safetensors", 0xa5c30d248b301937),
    ("save.safetensors", 0xf555e98d408f88d0),
    ("stream.safetensors", 0xab2bef36c97b31b5),
];

/// The files of `dir` (written by [`write_all`]) hash to [`PINNED`] and load to the
/// values written.
fn check_dir(dir: &Path) -> Result<()> {
    let mut names: Vec<String> = walk(dir)?
        .iter()
        .map(|p| {
            p.strip_prefix(dir)
                .expect("walk lists paths under dir")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    let mut got = Vec::new();
    for name in &names {
        let bytes = std::fs::read(dir.join(name))?;
        got.push((name.clone(), fnv1a(&normalized(&bytes))));
    }
    for (name, hash) in &got {
        println!("    (\"{name}\", 0x{hash:016x}),");
    }
    let pinned: Vec<(String, u64)> = PINNED.iter().map(|(n, h)| (n.to_string(), *h)).collect();
    assert_eq!(got, pinned);

    // The in-memory writer's two outputs are the same file.
    assert_eq!(
        normalized(&std::fs::read(dir.join("mem_to_bytes.safetensors"))?),
        normalized(&std::fs::read(dir.join("mem_write.safetensors"))?)
    );
    // Every file of our format loads, to the values written.
    let want_c: BTreeMap<String, CompressedTensor> = compressed()?.into_iter().collect();
    let want_l: BTreeMap<String, QuantLinear> = layers()?.into_iter().collect();
    for name in ["mem_to_bytes", "mem_write", "save", "stream"] {
        let file = CompressedFile::open(dir.join(format!("{name}.safetensors")))?;
        for (n, c) in &want_c {
            assert_eq!(&file.load_compressed(n)?, c, "{name}: {n}");
        }
        if name != "save" {
            for (n, l) in &want_l {
                assert_eq!(
                    file.load_quant_linear(n)?.to_parts(),
                    l.to_parts(),
                    "{name}: {n}"
                );
            }
        }
        for (n, t) in plain()? {
            let back = file.load_plain(&n, &CPU)?;
            let (a, b) = (back.to_dtype(DType::F64)?, t.to_dtype(DType::F64)?);
            assert_eq!(
                a.flatten_all()?.to_vec1::<f64>()?,
                b.flatten_all()?.to_vec1::<f64>()?
            );
        }
    }
    let piped = CompressedFile::open(dir.join("pipeline_stream.safetensors"))?;
    assert_eq!(piped.items().len(), 6);
    for (json, st) in [
        ("ct_w8.json", "ct_w8.safetensors"),
        ("ct_w4.json", "ct_w4.safetensors"),
    ] {
        let ckpt = CtCheckpoint::open(dir.join(st), dir.join(json))?;
        assert!(ckpt.load_quant_linear("model.fc1")?.out_features() > 0);
    }
    assert!(CtCheckpoint::open_dir(dir.join("ct_w8_sharded"))?.shard_count() > 1);
    Ok(())
}

#[test]
fn written_bytes_match_the_pinned_hashes_and_load() -> Result<()> {
    // Files another build wrote: check them instead of writing.
    if let Some(d) = std::env::var_os("CANDLE_COMPRESS_BYTES_CHECK_DIR") {
        return check_dir(Path::new(&d));
    }
    let tmp = tempfile::tempdir()?;
    let dir = match std::env::var_os("CANDLE_COMPRESS_BYTES_DIR") {
        Some(d) => {
            let d = std::path::PathBuf::from(d);
            std::fs::create_dir_all(&d)?;
            d
        }
        None => tmp.path().to_path_buf(),
    };
    write_all(&dir)?;
    check_dir(&dir)
}
