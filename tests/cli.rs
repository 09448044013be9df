//! The `candle-compress` binary on a small generated checkpoint.
#![cfg(feature = "cli")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_compress::io::safetensors::CompressedFile;
use candle_core::{DType, Device, Tensor};

mod common;

use common::cli::{json_of, run, stderr};
use common::tensors::sine_values;

/// A small model: two linear layers with biases, an embedding and a norm.
fn checkpoint(dir: &Path) -> PathBuf {
    let dev = Device::Cpu;
    let t = |dims: &[usize], seed: u64| {
        Tensor::from_vec(sine_values(dims.iter().product(), seed), dims, &dev).unwrap()
    };
    let tensors = HashMap::from([
        ("model.embed.weight".to_string(), t(&[50, 64], 1)),
        ("model.layers.0.fc1.weight".to_string(), t(&[128, 64], 2)),
        ("model.layers.0.fc1.bias".to_string(), t(&[128], 3)),
        (
            "model.layers.0.fc2.weight".to_string(),
            t(&[64, 128], 4).to_dtype(DType::BF16).unwrap(),
        ),
        ("model.norm.weight".to_string(), t(&[64], 5)),
    ]);
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

#[test]
fn quantize_inspect_eval_round() {
    let dir = tempfile::tempdir().unwrap();
    let input = checkpoint(dir.path());
    let out = dir.path().join("model.int8.safetensors");
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());

    let q = run(&[
        "quantize", i, "-o", o, "--scheme", "int8:32", "--skip", "*embed*",
    ]);
    assert!(q.status.success(), "{}", stderr(&q));
    let table = String::from_utf8_lossy(&q.stdout);
    assert!(table.contains("model.layers.0.fc1.weight"), "{table}");
    assert!(table.contains("total:"), "{table}");

    let file = CompressedFile::open(&out).unwrap();
    assert!(file.tensor_entry("model.layers.0.fc1.weight").is_some());
    assert!(file.tensor_entry("model.layers.0.fc2.weight").is_some());
    assert!(
        file.is_plain("model.embed.weight"),
        "--skip keeps it in float"
    );
    assert!(
        file.is_plain("model.norm.weight"),
        "1-D tensors stay in float"
    );

    let inspect = run(&["inspect", o]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("int8:32") && text.contains("compressed") && text.contains("plain"));

    let j = json_of(&run(&["inspect", o, "--json"]));
    assert_eq!(j["format"], "candle-compress");
    let rows = j["tensors"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    let fc1 = rows
        .iter()
        .find(|r| r["name"] == "model.layers.0.fc1.weight")
        .unwrap();
    assert_eq!(fc1["scheme"], "int8:32");
    assert_eq!(fc1["stored_bytes"], 128 * 64 + 128 * 64 / 32 * 2);
    assert!(j["ratio"].as_f64().unwrap() > 1.5);

    let e = json_of(&run(&["--json", "eval", i, o]));
    let rows = e["tensors"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    for r in rows {
        assert!(r["cosine"].as_f64().unwrap() > 0.999, "{r}");
    }
    let embed = rows
        .iter()
        .find(|r| r["name"] == "model.embed.weight")
        .unwrap();
    assert_eq!(embed["mae"], 0.0);
    assert_eq!(embed["sqnr_db"], "inf");
    let text = String::from_utf8_lossy(&run(&["eval", i, o]).stdout).into_owned();
    assert!(
        text.contains("SQNR") && text.contains("worst SQNR"),
        "{text}"
    );
}

#[test]
fn layer_schemes_and_gguf_export() {
    let dir = tempfile::tempdir().unwrap();
    let input = checkpoint(dir.path());
    let i = input.to_str().unwrap();
    let out = dir.path().join("w4.safetensors");
    let j = json_of(&run(&[
        "quantize",
        i,
        "-o",
        out.to_str().unwrap(),
        "--scheme",
        "w4a8:32",
        "--json",
    ]));
    assert_eq!(j["scheme"], "w4a8:32");
    let file = CompressedFile::open(&out).unwrap();
    let fc1 = file
        .layer_entry("model.layers.0.fc1")
        .expect("fc1 is a QuantLinear");
    assert!(fc1.bias, "the bias was folded into the layer");
    assert!(!file.is_plain("model.layers.0.fc1.bias"));

    let gguf = dir.path().join("m.gguf");
    let j = json_of(&run(&[
        "export-gguf",
        i,
        "-o",
        gguf.to_str().unwrap(),
        "--type",
        "q4_0",
        "--json",
    ]));
    assert_eq!(j["tensors"].as_array().unwrap().len(), 5);
    let mut f = std::fs::File::open(&gguf).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let qt = content
        .tensor(&mut f, "model.layers.0.fc1.weight", &Device::Cpu)
        .unwrap();
    assert_eq!(qt.dtype(), candle_core::quantized::GgmlDType::Q4_0);
}

#[test]
fn overwrite_needs_force_and_leaves_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let input = checkpoint(dir.path());
    let out = dir.path().join("out.safetensors");
    std::fs::write(&out, b"precious").unwrap();
    let args = [
        "quantize",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--scheme",
        "nf4",
    ];
    let o = run(&args);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("--force") && err.lines().count() == 1, "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");

    let mut forced = args.to_vec();
    forced.push("--force");
    let o = run(&forced);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(CompressedFile::open(&out).is_ok());
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn bad_arguments_are_usage_errors_with_exit_code_2() {
    for args in [
        vec!["frobnicate"],
        vec!["quantize", "in.safetensors"],
        vec!["quantize", "in.safetensors", "-o", "out", "--scheme"],
        vec!["inspect"],
        vec!["export-gguf", "a", "-o", "b", "--type", "q5_k"],
        vec!["--no-such-flag"],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn runtime_errors_are_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let input = checkpoint(dir.path());
    let i = input.to_str().unwrap();
    let missing = dir.path().join("missing.safetensors");
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(
        &garbage,
        b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a safetensors file",
    )
    .unwrap();
    let out = dir.path().join("o.safetensors");
    let o_str = out.to_str().unwrap();
    for args in [
        vec!["inspect", missing.to_str().unwrap()],
        vec!["inspect", garbage.to_str().unwrap()],
        vec!["quantize", i, "-o", o_str, "--scheme", "int7"],
        vec!["quantize", i, "-o", o_str, "--scheme", "int8:0"],
        vec!["quantize", i, "-o", o_str, "--scheme", "w4a8:48"],
        vec!["eval", i, garbage.to_str().unwrap()],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let o = run(&["inspect", missing.to_str().unwrap()]);
    assert!(stderr(&o).contains("missing.safetensors"));
    assert!(!out.exists());
}

#[test]
fn prune_writes_a_loadable_pruned_and_quantized_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = checkpoint(dir.path());
    let out = dir.path().join("pruned.safetensors");
    let j = json_of(&run(&[
        "prune",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--nm",
        "2:4",
        "--scheme",
        "int8:32",
        "--skip",
        "*embed*",
        "--json",
    ]));
    assert_eq!(j["stages"].as_array().unwrap().len(), 2);
    let file = CompressedFile::open(&out).unwrap();
    assert!(file.is_plain("model.embed.weight"));
    let fc1 = file
        .load_tensor("model.layers.0.fc1.weight", &Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    // 2:4: at most two non-zeros in every group of four along the last dim.
    for group in fc1.chunks(4) {
        assert!(group.iter().filter(|v| **v != 0.0).count() <= 2);
    }
    let o = run(&[
        "prune",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(o.status.code(), Some(1), "no stage given");
}
