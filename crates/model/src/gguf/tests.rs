//! Unit tests of the reader, the getters and every decoder.

use super::test_writer::{i32_array, str_array, GgufWriter};
use super::*;
use half::f16;

fn open(bytes: Vec<u8>) -> Result<GgufFile> {
    GgufFile::from_bytes(bytes, "test.gguf")
}

fn f16b(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_bits().to_le_bytes()
}

fn every_type_metadata() -> Vec<(&'static str, GgufValue)> {
    let nested = GgufValue::Array(GgufArray {
        elem_type: GgufValueType::Array,
        values: vec![
            i32_array(&[1, -2, 3]),
            i32_array(&[]),
            GgufValue::Array(GgufArray {
                elem_type: GgufValueType::I32,
                values: vec![GgufValue::I32(i32::MIN)],
            }),
        ],
    });
    vec![
        ("t.u8", GgufValue::U8(250)),
        ("t.i8", GgufValue::I8(-100)),
        ("t.u16", GgufValue::U16(65000)),
        ("t.i16", GgufValue::I16(-32000)),
        ("t.u32", GgufValue::U32(4_000_000_000)),
        ("t.i32", GgufValue::I32(-2_000_000_000)),
        ("t.f32", GgufValue::F32(1.5e-5)),
        ("t.bool_true", GgufValue::Bool(true)),
        ("t.bool_false", GgufValue::Bool(false)),
        ("t.string", GgufValue::String("héllo ✓ <|im_start|>".into())),
        ("t.empty_string", GgufValue::String(String::new())),
        ("t.u64", GgufValue::U64(u64::MAX)),
        ("t.i64", GgufValue::I64(i64::MIN)),
        ("t.f64", GgufValue::F64(-1.0e300)),
        ("t.str_array", str_array(&["a", "Ġb", ""])),
        ("t.nested", nested),
        (
            "t.f32_array",
            GgufValue::Array(GgufArray {
                elem_type: GgufValueType::F32,
                values: vec![GgufValue::F32(0.25), GgufValue::F32(-8.0)],
            }),
        ),
        (
            "t.empty_u8_array",
            GgufValue::Array(GgufArray {
                elem_type: GgufValueType::U8,
                values: vec![],
            }),
        ),
    ]
}

#[test]
fn metadata_of_every_type_round_trips() {
    for version in [2, 3] {
        let mut w = GgufWriter::new();
        w.version = version;
        for (k, v) in every_type_metadata() {
            w = w.kv(k, v);
        }
        let f = open(w.build()).unwrap();
        assert_eq!(f.version(), version);
        assert_eq!(f.tensors().len(), 0);
        for (k, v) in every_type_metadata() {
            assert_eq!(f.metadata(k), Some(&v), "key {k}");
        }
        let order: Vec<&str> = f.metadata_iter().map(|(k, _)| k).collect();
        let expected: Vec<&str> = every_type_metadata().iter().map(|(k, _)| *k).collect();
        assert_eq!(order, expected);
    }
}

#[test]
fn typed_getters_convert_and_name_the_key() {
    let mut w = GgufWriter::new();
    for (k, v) in every_type_metadata() {
        w = w.kv(k, v);
    }
    let f = open(w.build()).unwrap();
    assert_eq!(f.get_u32("t.u8").unwrap(), 250);
    assert_eq!(f.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_i32("t.i16").unwrap(), -32000);
    assert_eq!(f.get_u64("t.u64").unwrap(), u64::MAX);
    assert_eq!(f.get_i64("t.i64").unwrap(), i64::MIN);
    assert_eq!(f.get_f32("t.f32").unwrap(), 1.5e-5);
    assert_eq!(f.get_f64("t.f64").unwrap(), -1.0e300);
    assert!(f.get_bool("t.bool_true").unwrap());
    assert_eq!(f.get_str("t.string").unwrap(), "héllo ✓ <|im_start|>");
    assert_eq!(f.get_str_array("t.str_array").unwrap(), vec!["a", "Ġb", ""]);
    assert!(f.get_int_array("t.nested").is_err());
    assert_eq!(f.get_f32_array("t.f32_array").unwrap(), vec![0.25, -8.0]);
    assert_eq!(f.get_array("t.nested").unwrap().values.len(), 3);

    let e = f.get_u32("t.i8").unwrap_err();
    assert!(matches!(e, GgufError::WrongType { .. }));
    let msg = e.to_string();
    assert!(msg.contains("t.i8") && msg.contains("test.gguf"), "{msg}");
    let msg = f.get_str("t.u32").unwrap_err().to_string();
    assert!(msg.contains("`t.u32`") && msg.contains("string"), "{msg}");
    let msg = f.get_u32("t.u64").unwrap_err().to_string();
    assert!(msg.contains("t.u64"), "{msg}");
    let e = f.get_u32("no.such.key").unwrap_err();
    assert!(e.is_missing_key());
    assert!(e.to_string().contains("`no.such.key`"));
    let msg = f.get_str_array("t.nested").unwrap_err().to_string();
    assert!(msg.contains("array of 3 array"), "{msg}");
}

#[test]
fn f32_f16_bf16_and_integer_tensors() {
    let f32_data: Vec<u8> = [1.0f32, -2.5, 3.25, 0.0, 1e-3, -7.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    // f16 bit patterns: 1.0 = 0x3c00, -2.0 = 0xc000, 0.5 = 0x3800, 65504 = 0x7bff.
    let f16_data: Vec<u8> = [0x3c00u16, 0xc000, 0x3800, 0x7bff]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    // bf16 is the top half of an f32: 1.0 = 0x3f80, -3.0 = 0xc040.
    let bf16_data: Vec<u8> = [0x3f80u16, 0xc040]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let i8_data = vec![0x80u8, 0x7f];
    let f = open(
        GgufWriter::new()
            .tensor("a", &[3, 2], GgmlType::F32, f32_data)
            .tensor("h", &[4], GgmlType::F16, f16_data)
            .tensor("b", &[2], GgmlType::Bf16, bf16_data)
            .tensor("i", &[2], GgmlType::I8, i8_data)
            .build(),
    )
    .unwrap();
    let (v, shape) = f.tensor_f32("a").unwrap();
    assert_eq!(shape, vec![2, 3]);
    assert_eq!(v, vec![1.0, -2.5, 3.25, 0.0, 1e-3, -7.0]);
    assert_eq!(f.tensor_info("a").unwrap().dims, vec![3, 2]);
    assert_eq!(
        f.tensor_f32("h").unwrap(),
        (vec![1.0, -2.0, 0.5, 65504.0], vec![4])
    );
    assert_eq!(f.tensor_f32("b").unwrap().0, vec![1.0, -3.0]);
    assert_eq!(f.tensor_f32("i").unwrap().0, vec![-128.0, 127.0]);
    for t in f.tensors() {
        assert_eq!(t.offset % 32, 0);
    }
    let e = f.tensor_f32("nope").unwrap_err();
    assert!(e.to_string().contains("`nope`"));
}

/// Q8_0: d = 0.5, qs[i] = i - 16, so x[i] = (i - 16) / 2.
#[test]
fn q8_0_block() {
    let mut block = f16b(0.5).to_vec();
    block.extend((0..32).map(|i| (i as i8 - 16) as u8));
    let f = open(
        GgufWriter::new()
            .tensor("q", &[32], GgmlType::Q8_0, block)
            .build(),
    )
    .unwrap();
    let (v, shape) = f.tensor_f32("q").unwrap();
    assert_eq!(shape, vec![32]);
    let expected: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.5).collect();
    assert_eq!(v, expected);
}

/// Q4_0: d = 2, byte j = (15 - j) << 4 | j, so x[j] = (j - 8) * 2 and
/// x[j + 16] = (15 - j - 8) * 2. Two blocks across two rows (second with d = -1).
#[test]
fn q4_0_blocks() {
    let mut data = Vec::new();
    for d in [2.0f32, -1.0] {
        data.extend(f16b(d));
        data.extend((0..16u8).map(|j| ((15 - j) << 4) | j));
    }
    let f = open(
        GgufWriter::new()
            .tensor("q", &[32, 2], GgmlType::Q4_0, data)
            .build(),
    )
    .unwrap();
    let (v, shape) = f.tensor_f32("q").unwrap();
    assert_eq!(shape, vec![2, 32]);
    for (row, d) in [2.0f32, -1.0].into_iter().enumerate() {
        for j in 0..16 {
            assert_eq!(v[row * 32 + j], (j as f32 - 8.0) * d);
            assert_eq!(v[row * 32 + j + 16], (7.0 - j as f32) * d);
        }
    }
    // Hand-picked spot values: row 0, x[0] = -16, x[31] = (15-15-8)*2 = -16, x[16] = 14.
    assert_eq!((v[0], v[16], v[31]), (-16.0, 14.0, -16.0));
}

/// Q4_1: d = 0.25, m = -1, byte j = (15 - j) << 4 | j, so x[j] = j/4 - 1 and
/// x[j + 16] = (15 - j)/4 - 1.
#[test]
fn q4_1_block() {
    let mut block = f16b(0.25).to_vec();
    block.extend(f16b(-1.0));
    block.extend((0..16u8).map(|j| ((15 - j) << 4) | j));
    let f = open(
        GgufWriter::new()
            .tensor("q", &[32], GgmlType::Q4_1, block)
            .build(),
    )
    .unwrap();
    let v = f.tensor_f32("q").unwrap().0;
    for j in 0..16 {
        assert_eq!(v[j], j as f32 * 0.25 - 1.0);
        assert_eq!(v[j + 16], (15 - j) as f32 * 0.25 - 1.0);
    }
    assert_eq!((v[0], v[15], v[16], v[31]), (-1.0, 2.75, 2.75, -1.0));
}

/// Q5_0 / Q5_1: qs all 0x21 (low nibble 1, high nibble 2); qh has bits 0 and 16 set, so
/// element 0 gets +16 (q = 17) and element 16 gets +16 (q = 18); others are 1 / 2.
#[test]
fn q5_blocks() {
    let qh = (1u32 | (1 << 16)).to_le_bytes();
    let mut b0 = f16b(1.0).to_vec();
    b0.extend(qh);
    b0.extend([0x21u8; 16]);
    let mut b1 = f16b(0.5).to_vec();
    b1.extend(f16b(10.0));
    b1.extend(qh);
    b1.extend([0x21u8; 16]);
    let f = open(
        GgufWriter::new()
            .tensor("q5_0", &[32], GgmlType::Q5_0, b0)
            .tensor("q5_1", &[32], GgmlType::Q5_1, b1)
            .build(),
    )
    .unwrap();
    let v = f.tensor_f32("q5_0").unwrap().0;
    assert_eq!((v[0], v[1], v[16], v[17]), (1.0, -15.0, 2.0, -14.0));
    let v = f.tensor_f32("q5_1").unwrap().0;
    assert_eq!((v[0], v[1], v[16], v[17]), (18.5, 10.5, 19.0, 11.0));
}

/// Every supported block type against the Python `gguf` package (0.19.0)'s numpy
/// dequantizers, on a deterministic block: byte `i` = `(i * 37 + 11) % 256`, with the f16
/// scale fields overwritten (`d` = 0.0625, `dmin` = 0.125, Q4_1/Q5_1 `m` = -0.5), repeated
/// to 256 values. The expected sums and values were printed by
/// `gguf.quants.dequantize(np.frombuffer(block * (256 // block_size), np.uint8)
/// .reshape(1, -1), qtype)` at the indices below; all are exact binary fractions, so they
/// compare exactly.
#[test]
fn blocks_match_python_gguf_reference() {
    let idx = [0usize, 1, 17, 31, 32, 63, 64, 100, 127, 128, 200, 255];
    #[rustfmt::skip]
    let cases: [(GgmlType, f64, [f32; 12]); 10] = [
        (GgmlType::Q4_0, -10.5, [-0.1875, 0.125, -0.0625, 0.0, -0.1875, 0.0, -0.1875, 0.0625, 0.0, -0.1875, 0.3125, 0.0]),
        (GgmlType::Q4_1, -5.5, [0.4375, -0.25, 0.25, 0.25, 0.4375, 0.25, 0.4375, -0.3125, 0.25, 0.4375, -0.0625, 0.25]),
        (GgmlType::Q5_0, 7.5, [0.5625, -0.125, 0.0, 0.0625, 0.5625, 0.0625, 0.5625, 0.8125, 0.0625, 0.5625, -0.9375, 0.0625]),
        (GgmlType::Q5_1, 124.5, [0.6875, 1.0, -0.1875, -0.1875, 0.6875, -0.1875, 0.6875, 0.9375, -0.1875, 0.6875, 0.1875, -0.1875]),
        (GgmlType::Q8_0, -88.0, [5.3125, 7.625, -3.375, -3.0, 5.3125, -3.0, 5.3125, -1.4375, -3.0, 5.3125, 7.8125, -3.0]),
        (GgmlType::Q2K, -28.8125, [2.0625, 0.0, -0.375, -0.375, 0.0, -0.25, -0.1875, -0.0625, 2.625, 0.1875, -0.625, 0.0]),
        (GgmlType::Q3K, 59.875, [5.0625, -6.75, 8.0, 4.0, -1.375, 0.625, 2.125, 0.0, 4.5, 0.125, 1.5625, 2.625]),
        (GgmlType::Q4K, 2610.5, [14.9375, -6.375, -6.375, 5.25, -1.75, 0.25, 20.5625, 2.75, 1.875, 25.3125, 7.0625, -0.25]),
        (GgmlType::Q5K, 6471.5, [45.9375, -6.375, -6.375, 5.25, 4.75, 2.75, 20.5625, 11.5, -3.375, 64.3125, 7.0625, 3.5]),
        (GgmlType::Q6K, 288.25, [-89.4375, 106.0, 32.0, -6.0, 14.4375, -36.25, -190.0, 157.6875, 93.75, -21.9375, 68.0625, -3.75]),
    ];
    for (dtype, sum, values) in cases {
        let ts = dtype.type_size();
        let mut block: Vec<u8> = (0..ts).map(|i| ((i * 37 + 11) % 256) as u8).collect();
        let scales: &[(usize, f32)] = match dtype {
            GgmlType::Q4K | GgmlType::Q5K => &[(0, 0.0625), (2, 0.125)],
            GgmlType::Q2K => &[(80, 0.0625), (82, 0.125)],
            GgmlType::Q3K => &[(108, 0.0625)],
            GgmlType::Q6K => &[(208, 0.0625)],
            GgmlType::Q4_1 | GgmlType::Q5_1 => &[(0, 0.0625), (2, -0.5)],
            _ => &[(0, 0.0625)],
        };
        for &(at, x) in scales {
            block[at..at + 2].copy_from_slice(&f16b(x));
        }
        let data = block.repeat(256 / dtype.block_size());
        let mut out = vec![0f32; 256];
        dequantize(dtype, &data, &mut out).unwrap();
        let got_sum: f64 = out.iter().map(|&x| x as f64).sum();
        assert_eq!(got_sum, sum, "{dtype} sum");
        for (&i, &want) in idx.iter().zip(&values) {
            assert_eq!(out[i], want, "{dtype} value {i}");
        }
    }
}

#[test]
fn custom_alignment_is_honoured() {
    let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let f = open(
        GgufWriter::new()
            .kv("general.alignment", GgufValue::U32(64))
            .tensor("x", &[1], GgmlType::F32, data[..4].to_vec())
            .tensor("y", &[1], GgmlType::F32, data[4..].to_vec())
            .build(),
    )
    .unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensor_info("y").unwrap().offset, 64);
    assert_eq!(f.tensor_f32("y").unwrap().0, vec![2.0]);
    let bad = GgufWriter::new()
        .kv("general.alignment", GgufValue::U32(48))
        .build();
    assert!(open(bad).unwrap_err().to_string().contains("alignment"));
}

fn sample_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in every_type_metadata() {
        w = w.kv(k, v);
    }
    let mut block = f16b(0.5).to_vec();
    block.extend(0..32u8);
    w.tensor("q", &[32], GgmlType::Q8_0, block)
        .tensor("f", &[2], GgmlType::F32, vec![0; 8])
        .build()
}

#[test]
fn every_truncation_is_an_error_naming_the_file() {
    let full = sample_file();
    assert!(open(full.clone()).is_ok());
    // The last tensor's data ends the file, so every strict prefix is invalid.
    for len in 0..full.len() {
        let e = open(full[..len].to_vec()).unwrap_err();
        assert!(e.to_string().contains("test.gguf"), "len {len}: {e}");
    }
}

#[test]
fn open_reports_missing_file_with_path() {
    let e = GgufFile::open("/nonexistent/dir/model.gguf").unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/dir/model.gguf"));
}

#[test]
fn corrupt_headers_are_rejected() {
    let good = sample_file();
    // Bad magic.
    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(open(b).unwrap_err(), GgufError::BadMagic { .. }));
    // Version 1 and a big-endian version field.
    let mut b = good.clone();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(open(b).unwrap_err().to_string().contains("version 1"));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(open(b).unwrap_err().to_string().contains("big-endian"));
    // Absurd tensor and metadata counts fail fast without allocating.
    let mut b = good.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(open(b).unwrap_err().to_string().contains("tensor count"));
    let mut b = good.clone();
    b[16..24].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(open(b).unwrap_err().to_string().contains("metadata count"));
    // A huge key length.
    let mut b = good.clone();
    b[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(open(b).unwrap_err().to_string().contains("exceeds"));
}

#[test]
fn huge_array_count_fails_without_allocating() {
    let mut b = GgufWriter::new().kv("k", str_array(&["x"])).build();
    // header 24 bytes, key "k" 9 bytes, value type 4, elem type 4, then the count.
    let count_at = 24 + 9 + 4 + 4;
    assert_eq!(&b[count_at..count_at + 8], &1u64.to_le_bytes());
    b[count_at..count_at + 8].copy_from_slice(&(u64::MAX / 3).to_le_bytes());
    let msg = open(b).unwrap_err().to_string();
    assert!(
        msg.contains("metadata value `k`") && msg.contains("elements"),
        "{msg}"
    );
}

#[test]
fn deeply_nested_arrays_are_rejected() {
    let mut v = GgufValue::U8(1);
    for _ in 0..40 {
        v = GgufValue::Array(GgufArray {
            elem_type: v.value_type(),
            values: vec![v],
        });
    }
    let msg = open(GgufWriter::new().kv("deep", v).build())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("nests arrays"), "{msg}");
}

#[test]
fn invalid_bool_and_utf8_are_corrupt() {
    // Header 24 bytes, then key length 8 + key, then the type tag 4, then the value.
    let mut b = GgufWriter::new().kv("flag", GgufValue::Bool(true)).build();
    let at = 24 + 8 + 4 + 4;
    assert_eq!(b[at], 1);
    b[at] = 7;
    assert!(open(b).unwrap_err().to_string().contains("bool"));
    let mut b = GgufWriter::new()
        .kv("s", GgufValue::String("ab".into()))
        .build();
    let at = 24 + 8 + 1 + 4 + 8 + 1;
    assert_eq!(b[at], b'b');
    b[at] = 0xff;
    let msg = open(b).unwrap_err().to_string();
    assert!(msg.contains("UTF-8") && msg.contains("`s`"), "{msg}");
}

#[test]
fn tensor_directory_is_validated() {
    // Data cut short: the tensor extends past the end of the file.
    let mut b = GgufWriter::new()
        .tensor("w", &[4], GgmlType::F32, vec![0; 16])
        .build();
    b.truncate(b.len() - 1);
    let msg = open(b).unwrap_err().to_string();
    assert!(msg.contains("`w`") && msg.contains("past the end"), "{msg}");
    // ne0 not a multiple of the block size.
    let b = GgufWriter::new()
        .tensor("w", &[16], GgmlType::Q4_0, vec![0; 18])
        .build();
    assert!(open(b).unwrap_err().to_string().contains("block size"));
    // Unknown type id and too many dims.
    let mut b = GgufWriter::new()
        .tensor("w", &[1], GgmlType::F32, vec![0; 4])
        .build();
    let type_at = 24 + 8 + 1 + 4 + 8;
    b[type_at..type_at + 4].copy_from_slice(&999u32.to_le_bytes());
    assert!(open(b)
        .unwrap_err()
        .to_string()
        .contains("unknown ggml type id 999"));
    let b = GgufWriter::new()
        .tensor("w", &[1, 1, 1, 1, 1], GgmlType::F32, vec![0; 4])
        .build();
    assert!(open(b).unwrap_err().to_string().contains("5 dimensions"));
    // Overflowing dims.
    let b = GgufWriter::new()
        .tensor("w", &[1 << 40, 1 << 40], GgmlType::F32, vec![])
        .build();
    assert!(open(b).unwrap_err().to_string().contains("overflow"));
    // Misaligned offset.
    let mut b = GgufWriter::new()
        .tensor("w", &[1], GgmlType::F32, vec![0; 4])
        .build();
    let off_at = type_at + 4;
    b[off_at..off_at + 8].copy_from_slice(&4u64.to_le_bytes());
    assert!(open(b).unwrap_err().to_string().contains("alignment"));
    // Duplicate names.
    let b = GgufWriter::new()
        .tensor("w", &[1], GgmlType::F32, vec![0; 4])
        .tensor("w", &[1], GgmlType::F32, vec![0; 4])
        .build();
    assert!(open(b)
        .unwrap_err()
        .to_string()
        .contains("duplicate tensor name `w`"));
}

#[test]
fn unsupported_type_names_tensor_and_type() {
    let f = open(
        GgufWriter::new()
            .tensor("blk.0.ffn_up.weight", &[256], GgmlType::Iq2Xxs, vec![0; 66])
            .build(),
    )
    .unwrap();
    assert_eq!(f.tensor_bytes("blk.0.ffn_up.weight").unwrap().len(), 66);
    let e = f.tensor_f32("blk.0.ffn_up.weight").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, GgufError::UnsupportedType { .. }));
    assert!(
        msg.contains("blk.0.ffn_up.weight") && msg.contains("IQ2_XXS"),
        "{msg}"
    );
}

#[test]
fn dequantize_checks_sizes() {
    let mut out = [0f32; 32];
    assert!(matches!(
        dequantize(GgmlType::Q8_0, &[0; 33], &mut out),
        Err(DequantizeError::SizeMismatch { .. })
    ));
    assert_eq!(
        dequantize(GgmlType::Mxfp4, &[0; 17], &mut out),
        Err(DequantizeError::Unsupported(GgmlType::Mxfp4))
    );
}

#[test]
fn type_ids_round_trip() {
    for id in 0..64 {
        if let Some(t) = GgmlType::from_u32(id) {
            assert_eq!(t.id(), id);
            assert!(t.type_size() > 0 && t.block_size() > 0);
        }
    }
    for tag in 0..13 {
        assert_eq!(GgufValueType::from_u32(tag).unwrap() as u32, tag);
    }
    assert_eq!(GgufValueType::from_u32(13), None);
}
